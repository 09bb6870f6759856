"""Surface metrics of one response (paper Section 3 / Appendix B) plus programmatic modifier checks.

The Beam score pipeline calls this per record:

    scorer = SurfaceScorer()                      # once per worker (loads fastText + dictionaries lazily)
    cols = scorer.score(lang="fr", response=text, modifier_type=None, modifier_arg=None)

`cols` holds expected_lang, lang_pred, lang_prob, lang_correct, code_switch_rate, spell_ok_rate and, for
programmatically checkable modifiers, modifier_ok / modifier_status / modifier_detail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalsuite.langid import get_langid
from evalsuite.modifiers import LLM_TYPES, PROGRAM_TYPES, check_programmatic
from evalsuite.spelling import DEFAULT_DICT_DIRS, get_checker


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
    ):
        self.langid = get_langid(str(lid_model) if lid_model else None)
        self.dict_dirs = tuple(dict_dirs)
        self.code_switch_min_chars = code_switch_min_chars

    def score(
        self,
        *,
        lang: str,
        response: str,
        modifier_type: str | None = None,
        modifier_arg: str | None = None,
    ) -> dict[str, Any]:
        expected = expected_language(lang, modifier_type, modifier_arg)
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
            ok, detail = check_programmatic(modifier_type, modifier_arg, response, lang, self.langid)
            cols.update(modifier_ok=ok, modifier_status="ok", modifier_detail=detail)
        elif modifier_type in LLM_TYPES:
            cols.update(modifier_status="skipped", modifier_detail="needs an LLM judge")
        elif modifier_type:
            raise ValueError(f"unknown modifier_type {modifier_type!r}")
        return cols
