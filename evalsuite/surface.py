"""Surface metrics of one response (paper Section 3 / Appendix B) plus programmatic modifier checks.

The Beam score pipeline calls this per record:

    scorer = SurfaceScorer()                      # once per worker (loads fastText + dictionaries lazily)
    cols = scorer.score(lang="fr", response=text, modifier_type=None, modifier_arg=None)

`cols` holds expected_lang, lang_pred, lang_prob, lang_correct, code_switch_rate, spell_ok_rate and, for
programmatically checkable modifiers, modifier_ok / modifier_status / modifier_detail.

Any language works (docs/languages.md): its fastText label must exist (else InputError), its Hunspell
dictionary must be installed (else MissingDictionaryError naming the Debian package) unless
`spelling="skip"`, which scores spelling as null for languages without a dictionary and records them in
`spelling_skipped` (the scorers print and store it); short/long thresholds come from the language's
evaluation set in `eval_dir` (evalsuite.modifiers.thresholds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalsuite.langid import get_langid
from evalsuite.modifiers import LLM_TYPES, PROGRAM_TYPES, check_programmatic
from evalsuite.spelling import DEFAULT_DICT_DIRS, get_checker, missing_message
from records.errors import InputError

SPELLING_MODES = ("require", "skip")
# Parquet metadata key of a scores file whose spelling was skipped for some language (spelling_note())
SPELLING_META_KEY = b"xlit.spelling_skipped"


def expected_language(lang: str, modifier_type: str | None = None, modifier_arg: str | None = None) -> str:
    """The language the response should be in: XX for a lang_XX modifier, else the instruction's."""
    if modifier_type == "lang":
        if not modifier_arg:
            raise ValueError("modifier_type 'lang' needs modifier_arg (the target language)")
        return modifier_arg
    return lang


class SurfaceScorer:
    """Language id, code-switching, spelling and programmatic modifier checks; no network."""

    def __init__(
        self,
        lid_model: str | Path | None = None,
        dict_dirs: tuple[str, ...] = DEFAULT_DICT_DIRS,
        code_switch_min_chars: int = 20,
        *,
        eval_dir: str | Path | None = None,
        spelling: str = "require",
    ):
        if spelling not in SPELLING_MODES:
            raise InputError(f"spelling={spelling!r}: expected one of {', '.join(SPELLING_MODES)}")
        self.langid = get_langid(str(lid_model) if lid_model else None)
        self.dict_dirs = tuple(dict_dirs)
        self.code_switch_min_chars = code_switch_min_chars
        self.eval_dir = str(eval_dir) if eval_dir else None
        self.spelling = spelling
        self.spelling_skipped: dict[str, str] = {}  # language -> why its spelling is null
        self._checked: set[str] = set()

    def check_language(self, lang: str) -> None:
        """A language can be scored: fastText has its label, and it has a Hunspell dictionary (or spelling is
        skipped, which is recorded in `spelling_skipped`). InputError / MissingDictionaryError otherwise."""
        if lang in self._checked:
            return
        self.langid.check_label(lang)
        checker = get_checker(lang, self.dict_dirs, required=self.spelling == "require")
        if checker is None:
            self.spelling_skipped[lang] = f"no Hunspell dictionary ({missing_message(lang, self.dict_dirs)})"
        self._checked.add(lang)

    def check_rows(self, rows: Any) -> None:
        """check_language for every language the rows' responses should be in (lang, or XX of lang_XX)."""
        for r in rows:
            self.check_language(expected_language(r["lang"], r.get("modifier_type"), r.get("modifier_arg")))

    def spelling_note(self) -> str | None:
        """What the scores say when spelling was skipped for some language (None when it was not)."""
        if not self.spelling_skipped:
            return None
        return (
            f"spelling not scored (spell_ok_rate null) for {', '.join(sorted(self.spelling_skipped))}: no Hunspell "
            "dictionary installed, scored with --spelling=skip"
        )

    def score(
        self,
        *,
        lang: str,
        response: str,
        modifier_type: str | None = None,
        modifier_arg: str | None = None,
    ) -> dict[str, Any]:
        expected = expected_language(lang, modifier_type, modifier_arg)
        self.check_language(expected)
        pred, prob = self.langid.predict(response)
        checker = get_checker(expected, self.dict_dirs)
        cols: dict[str, Any] = {
            "expected_lang": expected,
            "lang_pred": pred,
            "lang_prob": prob,
            "lang_correct": pred == expected,
            "code_switch_rate": self.langid.code_switch_rate(
                response, expected, self.code_switch_min_chars, known=(response, pred)
            ),
            "spell_ok_rate": checker.ok_rate(response) if checker else None,
            "modifier_ok": None,
            "modifier_status": None,
            "modifier_detail": None,
        }
        if modifier_type in PROGRAM_TYPES:
            ok, detail = check_programmatic(
                modifier_type, modifier_arg, response, lang, self.langid, self.eval_dir
            )
            cols.update(modifier_ok=ok, modifier_status="ok", modifier_detail=detail)
        elif modifier_type in LLM_TYPES:
            cols.update(modifier_status="skipped", modifier_detail="needs an LLM judge")
        elif modifier_type:
            raise ValueError(f"unknown modifier_type {modifier_type!r}")
        return cols
