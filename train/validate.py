"""Cross-lingual validation while training: greedy answers and a held-out loss per language, every N steps.

Every `train.validate_every` steps (0 = off) and at the last step, `Validator` takes the trainer's current
parameters, on the training mesh and without an export, and for each language of `train.validate_langs`:
  * answers the first `train.validate_items` (0 = all) instructions of data/eval/validation.{lang}.jsonl
    greedily with the inference engine (infer.engine.Engine over the merged model, weights cast to the compute
    dtype as an export would be decoded), with the run's repetition penalty (`decode.repetition_penalty`) and
    at most `train.validate_max_new_tokens` new tokens;
  * scores the answers as evalsuite.surface does: language correctness (fastText top label = the language),
    code-switch rate (share of sentences in another language), spelling (Hunspell), answer length in tokens;
  * computes the loss (response-only token-mean cross-entropy, as the training loss) of the same items' reference
    responses in the training format (chat template, [user: instruction, assistant: response]).
The validation set is xlit's own (data/eval/README.md): 24 everyday instructions with short reference answers,
parallel across en/fr/pt/ru, disjoint from the evaluation set and its modifiers (tests/test_train_validate.py).

Each validation is one line of metrics.jsonl:
  {"step": N, "time": unix, "validation": [{"lang", "lang_correct", "code_switch_rate", "spell_ok_rate",
   "answer_tokens", "loss", "n"}, ...], "validation_s": seconds}
and TensorBoard scalars `validation/<lang>/<metric>` and `validation/seconds` (train/metrics.py). Means are over
the items of a language; code_switch_rate and spell_ok_rate over the answers that have a sentence / a word to
check (None when none has). Cost: items × languages greedy answers of at most validate_max_new_tokens tokens
(the engine batches them; compiled once, then reused) plus one forward pass per language.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from infer.decode import DecodeParams
from infer.engine import Engine
from models.tokenizer import ChatTokenizer
from records.errors import InputError
from train.state import merged_model
from train.step import token_nll

ROOT = Path(__file__).resolve().parents[1]
VALIDATION_DIR = ROOT / "data" / "eval"
FIELDS = ("lang", "lang_correct", "code_switch_rate", "spell_ok_rate", "answer_tokens", "loss")
LOSS_ROW_MULTIPLE = 16  # loss batch lengths are rounded up to a multiple of this (fewer compiled shapes)


class ValidationError(InputError):
    """The validation set or settings cannot be used; the message names the file or key."""


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    instruction: str
    response: str

    def prompt(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.instruction.strip()}]

    def chat(self) -> list[dict[str, str]]:
        """The training format of data.format="dolly" (train/data.py): [user: instruction, assistant: response]."""
        return [*self.prompt(), {"role": "assistant", "content": self.response}]


def validation_path(lang: str, data_dir: Path = VALIDATION_DIR) -> Path:
    return Path(data_dir) / f"validation.{lang}.jsonl"


def load_validation_set(
    langs: Sequence[str], n_items: int = 0, data_dir: Path = VALIDATION_DIR
) -> dict[str, list[Item]]:
    """The first `n_items` (0 = all) items of each language's file; the files must be parallel (same ids)."""
    if not langs:
        raise ValidationError("train.validate_langs is empty: name at least one language")
    out: dict[str, list[Item]] = {}
    for lang in langs:
        path = validation_path(lang, data_dir)
        if not path.exists():
            raise ValidationError(
                f"train.validate_langs has {lang!r} but {path} does not exist (one JSONL line per item: "
                '{"id", "instruction", "response"}, parallel to validation.en.jsonl)'
            )
        items = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                items.append(Item(str(rec["id"]), rec["instruction"], rec["response"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValidationError(f"{path}:{i}: not a validation item ({e!r})") from None
        out[lang] = items[:n_items] if n_items > 0 else items
    ids = {lang: [it.id for it in items] for lang, items in out.items()}
    first = langs[0]
    for lang in langs[1:]:
        if ids[lang] != ids[first]:
            raise ValidationError(
                f"{validation_path(lang, data_dir)}: ids differ from {validation_path(first, data_dir)} "
                "(the validation files must be parallel)"
            )
    if not out[first]:
        raise ValidationError(f"{validation_path(first, data_dir)}: no validation item")
    return out


def should_validate(done: int, every: int, total: int) -> bool:
    """After step `done`: every `every` steps (0 = never) and at the last step."""
    return every > 0 and (done % every == 0 or done == total)


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(
    lang: str, answers: Sequence[tuple[str, int]], loss: float | None, scorer: Any
) -> dict[str, Any]:
    """One language's validation object from its answers [(text, new tokens)] and its loss.

    scorer: an evalsuite.surface.SurfaceScorer (or anything with its `score(lang=, response=)`)."""
    cols = [scorer.score(lang=lang, response=text) for text, _ in answers]
    return {
        "lang": lang,
        "lang_correct": _mean([float(bool(c["lang_correct"])) for c in cols]),
        "code_switch_rate": _mean([c["code_switch_rate"] for c in cols]),
        "spell_ok_rate": _mean([c["spell_ok_rate"] for c in cols]),
        "answer_tokens": _mean([n for _, n in answers]),
        "loss": loss,
        "n": len(answers),
    }


def loss_batch(tok: ChatTokenizer, items: Sequence[Item], seq_len: int, rows: int) -> dict[str, np.ndarray]:
    """[rows, T] arrays (train/data.py BATCH_KEYS) with one item per row; T = the longest item rounded up to a
    multiple of LOSS_ROW_MULTIPLE, at most seq_len (longer items are truncated); extra rows are padding."""
    exs = []
    for it in items:
        enc = tok.encode_chat(it.chat())
        ids = np.asarray(enc.ids, np.int32)
        mask = np.asarray(enc.loss_mask, np.float32)
        exs.append((ids[:-1][:seq_len], ids[1:][:seq_len], mask[1:][:seq_len]))
    longest = max(len(e[0]) for e in exs)
    t = min(seq_len, -(-longest // LOSS_ROW_MULTIPLE) * LOSS_ROW_MULTIPLE)
    out = {
        k: np.zeros((rows, t), np.float32 if k == "weights" else np.int32)
        for k in ("inputs", "targets", "weights", "segment_ids", "positions")
    }
    for r, (inp, tgt, w) in enumerate(exs):
        n = len(inp)
        out["inputs"][r, :n], out["targets"][r, :n], out["weights"][r, :n] = inp, tgt, w
        out["segment_ids"][r, :n] = 1
        out["positions"][r, :n] = np.arange(n)
    return out


class Validator:
    """Built once before the first step (validation set read, prompts tokenized, scorers loaded);
    `validator(state)` runs one validation and returns (per-language objects, seconds)."""

    def __init__(self, cfg: Any, built: Any, tok: ChatTokenizer, eos_ids: list[int], max_batch: int = 32):
        from evalsuite.surface import SurfaceScorer  # fastText and Hunspell: loaded only when validating

        t = cfg.train
        self.langs = tuple(t.validate_langs)
        self.sets = load_validation_set(self.langs, t.validate_items)
        self.built = built
        self.tok = tok
        self.eos_ids = list(eos_ids)
        self.max_batch = max_batch
        self.mesh = built.mesh
        self.dtype = jnp.dtype(cfg.model.dtype)
        self.params = DecodeParams(
            max_new_tokens=int(t.validate_max_new_tokens),
            repetition_penalty=float(cfg.decode.repetition_penalty),
        )
        self.prompt_ids = {
            lang: [tok.encode_prompt(it.prompt()) for it in items] for lang, items in self.sets.items()
        }
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        n = len(next(iter(self.sets.values())))
        rows = -(-n // shards) * shards
        self.loss_batches = {
            lang: loss_batch(tok, items, cfg.data.seq_len, rows) for lang, items in self.sets.items()
        }
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(("data", "fsdp"), None))
        graphdef = built.graphdef
        self._nll = jax.jit(lambda params, frozen, mb: token_nll(graphdef, params, frozen, mb))
        self.scorer = SurfaceScorer()

    def _losses(self, state: dict[str, Any]) -> dict[str, float | None]:
        out = {}
        for lang, batch in self.loss_batches.items():
            sh = self._batch_sharding
            mb = {
                k: jax.make_array_from_callback(v.shape, sh, lambda idx, v=v: v[idx])
                for k, v in batch.items()
            }
            ce, w = jax.device_get(self._nll(state["params"], state["frozen"], mb))
            out[lang] = float(ce) / float(w) if float(w) > 0 else None
        return out

    def _answers(self, state: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
        model = merged_model(self.built, state)  # LoRA adapters kept apart: the decoder applies them
        # the engine keeps its own per-layer copy of the weights, cast slice by slice to the compute dtype (what
        # decoding an export loads); it is dropped when the validation ends
        engine = Engine(
            model, self.tok, self.eos_ids, "validation", self.max_batch, mesh=self.mesh, dtype=self.dtype
        )
        del model
        flat = [(lang, ids) for lang in self.langs for ids in self.prompt_ids[lang]]
        results = engine.generate_ids([ids for _, ids in flat], self.params)
        del engine
        out: dict[str, list[tuple[str, int]]] = {lang: [] for lang in self.langs}
        for (lang, _), res in zip(flat, results, strict=True):
            out[lang].append((res.text, res.response_tokens))
        return out

    def __call__(self, state: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
        t0 = time.perf_counter()
        answers = self._answers(state)
        losses = self._losses(state)
        rows = [summarize(lang, answers[lang], losses[lang], self.scorer) for lang in self.langs]
        return rows, time.perf_counter() - t0
