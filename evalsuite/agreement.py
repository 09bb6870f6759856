"""Agreement between human and judge ratings (paper Figure 5): percentage matrices and weighted kappa.

A pair is (judge score, human score) for one response and one criterion, both on the 0/1/2 scale. The
judge score comes from a scores row (`judge_<criterion>`, only when `judge_status == "ok"`); human scores
from reporting.human's ratings (column `<criterion>`). A response rated by several annotators gives one pair
per annotator. `matrix[x, y]` is the percentage of pairs the judge rated x and the human rated y, as in
Figure 5. Cohen's kappa with linear weights w_ij = |i - j| / 2:
    kappa = 1 - sum(w * observed) / sum(w * expected),  expected = outer(judge marginal, human marginal).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from records.schemas import JUDGE_CRITERIA

LEVELS = 3  # scores 0, 1, 2
Row = dict[str, Any]


def pairs_for(
    human_rows: Iterable[Row], score_rows: Iterable[Row], criterion: str, key: Sequence[str] = ("run", "id")
) -> list[tuple[int, int]]:
    """(judge, human) pairs for one criterion, joined on `key`; unrated or failed items are left out."""
    judged: dict[tuple, int] = {}
    for r in score_rows:
        v = r.get(f"judge_{criterion}")
        if r.get("judge_status") == "ok" and v is not None:
            judged[tuple(r.get(k) for k in key)] = int(v)
    pairs = []
    for h in human_rows:
        v = h.get(criterion)
        j = judged.get(tuple(h.get(k) for k in key))
        if v is not None and j is not None:
            pairs.append((j, int(v)))
    return pairs


def confusion(pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Counts: rows = judge score, columns = human score."""
    m = np.zeros((LEVELS, LEVELS), dtype=np.int64)
    for j, h in pairs:
        if not (0 <= j < LEVELS and 0 <= h < LEVELS):
            raise ValueError(f"score out of range 0..{LEVELS - 1}: judge={j} human={h}")
        m[j, h] += 1
    return m


def agreement_matrix(pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Percentages (summing to 100) of pairs per (judge score, human score); all zeros if no pair."""
    m = confusion(pairs).astype(float)
    total = m.sum()
    return m * (100.0 / total) if total else m


def weighted_kappa(pairs: Sequence[tuple[int, int]]) -> float | None:
    """Linearly weighted Cohen's kappa; None without pairs or when both raters are constant and equal."""
    m = confusion(pairs).astype(float)
    n = m.sum()
    if n == 0:
        return None
    obs = m / n
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0))
    i, j = np.indices((LEVELS, LEVELS))
    w = np.abs(i - j) / (LEVELS - 1)
    den = float((w * exp).sum())
    if den == 0.0:
        return None
    return 1.0 - float((w * obs).sum()) / den


def exact_agreement(pairs: Sequence[tuple[int, int]]) -> float | None:
    """Share of pairs with the same score."""
    return None if not pairs else sum(j == h for j, h in pairs) / len(pairs)


def fasttext_language_score(row: Row) -> int | None:
    """fastText's reading of a response on the judge's language scale (the released judge prompt's 1-3 stars):
    0 = not in the expected language, 1 = in it but with sentences in another language (code_switch_rate > 0),
    2 = in it throughout. None when fastText had nothing to read (empty response)."""
    ok, rate = row.get("lang_correct"), row.get("code_switch_rate")
    if _missing(ok):
        return None
    if not ok:
        return 0
    return 1 if not _missing(rate) and rate > 0 else 2


def _missing(v: Any) -> bool:
    """None, or NaN (a null read back through pandas/CSV)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def fasttext_ratings(score_rows: Iterable[Row]) -> list[Row]:
    """fastText as a second rater of the judge's language criterion: rows shaped like human ratings
    ({run, id, lang, language}) for `agreement_table`, one per scored response it could read."""
    out = []
    for r in score_rows:
        score = fasttext_language_score(r)
        if score is not None:
            out.append({"run": r.get("run"), "id": r.get("id"), "lang": r.get("lang"), "language": score})
    return out


def agreement_table(
    human_rows: Sequence[Row],
    score_rows: Sequence[Row],
    criteria: Sequence[str] = JUDGE_CRITERIA,
    lang_groups: dict[str, Sequence[str]] | None = None,
) -> list[Row]:
    """Per criterion x language group: n, exact agreement, kappa, matrix. Default groups: "en" and
    "non_en" (every other language the human ratings have)."""
    others = tuple(sorted({h.get("lang") for h in human_rows} - {"en", None}))
    groups = lang_groups or {"en": ("en",), "non_en": others}
    out = []
    for c in criteria:
        for name, langs in groups.items():
            hs = [h for h in human_rows if h.get("lang") in langs]
            pairs = pairs_for(hs, score_rows, c)
            out.append(
                {
                    "criterion": c,
                    "langs": name,
                    "n": len(pairs),
                    "exact": exact_agreement(pairs),
                    "kappa": weighted_kappa(pairs),
                    "matrix": agreement_matrix(pairs).round(2).tolist(),
                }
            )
    return out
