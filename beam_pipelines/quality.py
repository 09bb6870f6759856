"""Quality flags of one translated record (the translate pipeline's `FlagTranslations` step).

A translated record is compared with its source record; each check that fails adds its name to the record's
`flags` (in the order of `FLAGS`; empty = clean). "Text" below is the record's instruction, context and
response joined by newlines; "words" are the runs of letters and digits after NFKC + casefolding
(`normalise`).

* `wrong_lang`: fastText (evalsuite.langid, lid.176) labels the text as a language other than the target.
  Checked only when the text has at least `MIN_LID_LETTERS` (20) letters: fastText is unreliable below.
* `length_ratio`: non-whitespace characters of the translation / of the source, outside the band
  (default `LENGTH_BAND` = [0.5, 2.0]). Checked only when the source has at least `MIN_RATIO_CHARS` (40)
  non-whitespace characters. Band chosen from the shipped parallel evaluation data (AlpacaEval subset +
  modifiers, en → fr/pt/ru, 343 pairs per language with ≥ 40 characters): human translations lie in
  [0.67, 1.64] (1st–99th percentiles 0.78–1.53); the band leaves a margin of about 25% on each side, so it
  catches truncated/dropped or run-on translations, not normal variation. Scripts much denser than the
  source (zh, ja) need their own band (`--length_band`).
* `copy`: the translation's words equal the source's, or difflib's similarity of the two word sequences is at
  least `COPY_SIMILARITY` (0.9): an untranslated or barely touched record. Checked when the source has at
  least 3 words.
* `repeat`: some field of the translation repeats itself where its source does not. Precisely, a field is
  repeated when either
    - a sentence (split after . ! ? 。！？ or at line breaks; compared as words) occurs at least
      `REPEAT_SENTENCES` (3) times, more often than the most repeated sentence of the source field; or
    - the word 3-gram occurring most (at least 3 times, in a field of at least 9 words) covers at least
      `REPEAT_SHARE` (0.5) of the field's words with its occurrences, and that share exceeds the source
      field's by at least 0.25 (a source list that repeats a phrase is not flagged in its translation).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

FLAGS = ("wrong_lang", "length_ratio", "copy", "repeat")
FIELDS = ("instruction", "context", "response")
LENGTH_BAND = (0.5, 2.0)
MIN_RATIO_CHARS = 40
MIN_LID_LETTERS = 20
COPY_SIMILARITY = 0.9
REPEAT_SENTENCES = 3
REPEAT_N = 3
REPEAT_SHARE = 0.5
REPEAT_MARGIN = 0.25

_WORD = re.compile(r"\w+")
_SENT = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def normalise(text: str) -> list[str]:
    """Words of `text` after NFKC and casefolding (punctuation, underscores and whitespace dropped)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold().replace("_", " "))


def record_text(rec: dict) -> str:
    return "\n".join(rec.get(f) or "" for f in FIELDS)


def _nonspace(text: str) -> int:
    return sum(1 for c in text if not c.isspace())


def length_ratio(src: str, out: str) -> float | None:
    """Non-whitespace characters of `out` / of `src`; None when `src` is under MIN_RATIO_CHARS."""
    n = _nonspace(src)
    return _nonspace(out) / n if n >= MIN_RATIO_CHARS else None


def is_copy(src: str, out: str) -> bool:
    a, b = normalise(src), normalise(out)
    if len(a) < 3:
        return False
    if a == b:
        return True
    m = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return m.quick_ratio() >= COPY_SIMILARITY and m.ratio() >= COPY_SIMILARITY


def max_sentence_repeats(text: str) -> int:
    """How often the most frequent sentence of `text` (compared as words) occurs; 0 if none."""
    sents = [" ".join(normalise(s)) for s in _SENT.split(text)]
    counts = Counter(s for s in sents if s)
    return max(counts.values(), default=0)


def ngram_repeat_share(words: Sequence[str], n: int = REPEAT_N) -> float:
    """Share of `words` covered by the occurrences of the word n-gram that covers most (among n-grams
    occurring at least 3 times, in at least 3n words); 0.0 if none."""
    if len(words) < 3 * n:
        return 0.0
    where: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i in range(len(words) - n + 1):
        where[tuple(words[i : i + n])].append(i)
    best = 0
    for starts in where.values():
        if len(starts) >= 3:
            covered = {j for i in starts for j in range(i, i + n)}
            best = max(best, len(covered))
    return best / len(words)


def is_repeated(src: str, out: str) -> bool:
    reps = max_sentence_repeats(out)
    if reps >= REPEAT_SENTENCES and reps > max_sentence_repeats(src):
        return True
    share = ngram_repeat_share(normalise(out))
    return share >= REPEAT_SHARE and share >= ngram_repeat_share(normalise(src)) + REPEAT_MARGIN


def translation_flags(
    src: dict,
    out: dict,
    tgt: str,
    predict_lang: Callable[[str], str | None],
    band: tuple[float, float] = LENGTH_BAND,
) -> list[str]:
    """The FLAGS that `out` (a translation of `src` into `tgt`) raises, in FLAGS order; [] = clean.

    predict_lang: text → language code (e.g. `lambda t: get_langid().predict(t)[0]`)."""
    s, o = record_text(src), record_text(out)
    flags = []
    if sum(map(str.isalpha, o)) >= MIN_LID_LETTERS and predict_lang(o) != tgt:
        flags.append("wrong_lang")
    ratio = length_ratio(s, o)
    if ratio is not None and not band[0] <= ratio <= band[1]:
        flags.append("length_ratio")
    if is_copy(s, o):
        flags.append("copy")
    if any(is_repeated(src.get(f) or "", out.get(f) or "") for f in FIELDS):
        flags.append("repeat")
    return flags
