"""Translation model handlers for RunInference: NLLB/M2M100 (transformers, PyTorch) and any OpenAI-compatible
chat model; plus the sentence splitting that keeps every segment under the model's input limit.

Elements are (key, {"text", "src", "tgt"}) pairs (KeyedModelHandler); the inference is the translated text,
or None when a chat translation failed after the runner's retries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

# Common languages; any other: Seq2SeqHandler(codes={lang: token}) / ChatTranslatorHandler(lang_names=...)
# (translate's --nllb_codes / --lang_names), or the tokenizer's own __xx__ / xx token (M2M100).
NLLB_CODES = {
    "en": "eng_Latn",
    "fr": "fra_Latn",
    "pt": "por_Latn",
    "ru": "rus_Cyrl",
    "de": "deu_Latn",
    "es": "spa_Latn",
    "it": "ita_Latn",
    "zh": "zho_Hans",
    "ja": "jpn_Jpan",
    "nl": "nld_Latn",
    "sw": "swh_Latn",
}
LANG_NAMES = {
    "en": "English",
    "fr": "French",
    "pt": "Portuguese",
    "ru": "Russian",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "zh": "Chinese",
    "ja": "Japanese",
    "nl": "Dutch",
    "sw": "Swahili",
}
_REFUSAL = re.compile(r"(I am sorry|I'm sorry|I cannot|I can't|As an AI)\b", re.I)
_SENT = re.compile(r"(?<=[.!?。！？])\s+")


def split_segments(text: str, count: Callable[[str], int], max_tokens: int) -> list[tuple[str, str]]:
    """(segment, separator) pairs: lines, then sentences grouped greedily, then word chunks, each segment
    at most `max_tokens` (by `count`); "".join(translated + sep) keeps the line structure."""
    out: list[tuple[str, str]] = []
    for line in text.strip().split("\n"):
        if not line.strip():
            if out:
                out[-1] = (out[-1][0], out[-1][1] + "\n")
            continue
        groups: list[str] = []
        for sent in _SENT.split(line.strip()):
            for piece in _word_chunks(sent, count, max_tokens):
                if groups and count(groups[-1] + " " + piece) <= max_tokens:
                    groups[-1] += " " + piece
                else:
                    groups.append(piece)
        out += [(g, " ") for g in groups[:-1]] + [(groups[-1], "\n")]
    if out:
        out[-1] = (out[-1][0], "")
    return out


def _word_chunks(sent: str, count: Callable[[str], int], max_tokens: int) -> list[str]:
    if count(sent) <= max_tokens:
        return [sent]
    chunks: list[str] = []
    for word in sent.split():
        if chunks and count(chunks[-1] + " " + word) <= max_tokens:
            chunks[-1] += " " + word
        else:
            chunks.append(word)
    return chunks


def lang_token(tokenizer: Any, lang: str, codes: dict[str, str] | None = None) -> str:
    """The language-code token of `lang` in this tokenizer: `codes[lang]`, NLLB (fra_Latn) or M2M100
    (__fr__)."""
    vocab = tokenizer.get_vocab()
    tried = list(dict.fromkeys(((codes or {}).get(lang) or NLLB_CODES.get(lang, lang), f"__{lang}__", lang)))
    for tok in tried:
        if tok in vocab:
            return tok
    raise ValueError(
        f"tokenizer has no language code for {lang!r} (tried {', '.join(tried)}); "
        f"name its token with --nllb_codes={lang}=CODE (NLLB: e.g. swh_Latn)"
    )


class Seq2SeqHandler(ModelHandler[dict, PredictionResult, Any]):
    """NLLB-200 / M2M100 with `forced_bos_token_id` = the target language code; one model per worker."""

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 16,
        num_beams: int = 4,
        max_input_tokens: int = 512,
        device: str = "cpu",
        max_new_tokens: int | None = None,
        codes: dict[str, str] | None = None,
    ):
        super().__init__()
        self.codes = dict(codes or {})
        self.model_path = model
        self.batch_size = batch_size
        self.num_beams = num_beams
        self.max_input_tokens = max_input_tokens
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.name = model.rstrip("/").split("/")[-1]

    def decoding(self) -> dict[str, Any]:
        """The model and decoding settings, kept with every translated record (`decoding` column)."""
        return {
            "model": self.model_path,
            "num_beams": self.num_beams,
            "do_sample": False,
            "max_input_tokens": self.max_input_tokens,
            "max_new_tokens": self.max_new_tokens,  # None: 2 × input tokens + 16, at most 1024
        }

    def load_model(self) -> Any:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        model = AutoModelForSeq2SeqLM.from_pretrained(self.model_path).to(self.device).eval()
        model.xlit_tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return model

    def run_inference(
        self, batch: Sequence[dict], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterator[PredictionResult]:
        import torch

        tok = model.xlit_tokenizer
        results: list[str | None] = [None] * len(batch)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, ex in enumerate(batch):
            groups.setdefault((ex["src"], ex["tgt"]), []).append(i)
        for (src, tgt), idx in groups.items():
            tok.src_lang = lang_token(tok, src, self.codes)
            enc = tok(
                [batch[i]["text"] for i in idx],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_input_tokens,
            ).to(self.device)
            limit = self.max_new_tokens or min(1024, int(enc["input_ids"].shape[1] * 2 + 16))
            with torch.inference_mode():
                gen = model.generate(
                    **enc,
                    forced_bos_token_id=tok.convert_tokens_to_ids(lang_token(tok, tgt, self.codes)),
                    num_beams=self.num_beams,
                    max_new_tokens=limit,
                )
            for i, text in zip(idx, tok.batch_decode(gen, skip_special_tokens=True), strict=True):
                results[i] = text.strip()
        for ex, text in zip(batch, results, strict=True):
            yield PredictionResult(ex, text)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}


def translation_prompt(text: str, src: str, tgt: str, names: dict[str, str] | None = None) -> str:
    names = {**LANG_NAMES, **(names or {})}
    s, t = names.get(src, src), names.get(tgt, tgt)
    return (
        f"Translate the following text from {s} to {t}. Reply with the {t} translation only, "
        f"without notes or quotes.\n\n{s}: {text}\n{t}:"
    )


def _parse_translation(reply: str) -> str:
    from chat.client import ParseError

    text = reply.strip()
    if not text:
        raise ParseError("empty translation")
    if _REFUSAL.match(text):
        raise ParseError(f"the model refused: {text[:80]!r}")
    return text


class ChatTranslatorHandler(ModelHandler[dict, PredictionResult, Any]):
    """Any OpenAI-compatible chat model (Tower-Instruct, GPT, infer.server) through evalsuite's ChatRunner:
    same cache, retries, concurrency and cost cap as the judge. Spec: openai:MODEL[@BASE_URL]."""

    def __init__(
        self,
        spec: str,
        *,
        batch_size: int = 32,
        cache_dir: str | None = None,
        lang_names: dict[str, str] | None = None,
        **runner_kwargs: Any,
    ):
        super().__init__()
        self.lang_names = dict(lang_names or {})
        self.spec = spec
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.runner_kwargs = runner_kwargs
        self.name = spec.split(":", 1)[-1].split("@")[0]

    def decoding(self) -> dict[str, Any]:
        """The model and decoding settings, kept with every translated record (`decoding` column)."""
        return {"model": self.spec, "temperature": 0, "prompt": "translation_prompt"}

    def load_model(self) -> Any:
        from chat.client import ChatCache, ChatRunner, parse_model_spec

        cache = ChatCache(self.cache_dir) if self.cache_dir else None
        return ChatRunner(parse_model_spec(self.spec), cache=cache, **self.runner_kwargs)

    def run_inference(
        self, batch: Sequence[dict], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterator[PredictionResult]:
        from chat.client import ChatRequest

        reqs = [
            ChatRequest(
                [
                    {
                        "role": "user",
                        "content": translation_prompt(ex["text"], ex["src"], ex["tgt"], self.lang_names),
                    }
                ],
                {"temperature": 0},
                _parse_translation,
                expected_completion_tokens=len(ex["text"]) // 3 + 16,
            )
            for ex in batch
        ]
        for ex, o in zip(batch, model.run(reqs, desc="translate"), strict=True):
            yield PredictionResult(ex, o.value if o.status == "ok" else None)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}
