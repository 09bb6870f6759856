"""Aggregation of score rows into the paper's tables, with percentile-bootstrap 95% CIs.

Exclusion rule (paper Appendix B, "Main evaluation criteria"): every judge criterion except Correct
Language is averaged only over responses in the correct language; Correct Language over all judged
responses. "Correct language" is decided by (`rule`):
  * "judge" (default, as the paper's GPT evaluation): the judge's Language score is not 0 (1 star =
    "language different from the task language"; 2 stars, code-switching, still counts as correct);
  * "fasttext": lang_correct (fastText top label == expected language).
For lang_XX modifier rows the judge compares with the task language, not XX, so they always use fastText.
Rows whose judge call failed are left out of every judge criterion and counted in n_failed.

Tables: per group x criterion (`criteria_table`), English vs the mean of the fr/pt/ru means (Figure 2,
`en_vs_nonen`), per task (Figure 3 right, `task_table`), per modifier (Table 1, `modifier_table`), surface
metrics per model x LR x language (Figure 3 left, `surface_table`) and the LR choice (`choose_lr`, strict:
every metric it uses must be measured for every LR; `choose_run_lr` is the entry point of the report and of
the human-evaluation packet).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from records.errors import InputError
from records.schemas import JUDGE_CRITERIA

REFERENCE_LANG = "en"  # the tuning language; "non-English" is every other language the rows have
SURFACE_METRICS = ("lang_correct", "spell_ok_rate", "relevance")
Row = dict[str, Any]


def correct_language(row: Row, rule: str = "judge") -> bool | None:
    """Whether a response counts as being in the correct language (None: unknown)."""
    if rule not in ("judge", "fasttext"):
        raise ValueError(f"unknown correct-language rule {rule!r}; expected judge or fasttext")
    if rule == "fasttext" or row.get("modifier_type") == "lang":
        return row.get("lang_correct")
    lang_score = row.get("judge_language")
    return None if lang_score is None else lang_score >= 1


def criterion_values(
    rows: Sequence[Row], criterion: str, rule: str = "judge"
) -> tuple[np.ndarray, dict[str, int]]:
    """Per-row values of a judge criterion under the exclusion rule (NaN = left out) and counts."""
    column = criterion if criterion.startswith("judge_") else f"judge_{criterion}"
    vals = np.full(len(rows), np.nan)
    counts = {"n": 0, "n_failed": 0, "n_wrong_lang": 0}
    for i, r in enumerate(rows):
        if r.get("judge_status") == "failed":
            counts["n_failed"] += 1
            continue
        v = r.get(column)
        if v is None:
            continue
        if column != "judge_language" and correct_language(r, rule) is not True:
            counts["n_wrong_lang"] += 1
            continue
        vals[i] = float(v)
        counts["n"] += 1
    return vals, counts


def column_values(rows: Sequence[Row], column: str) -> np.ndarray:
    """A numeric/bool column as floats, NaN for null."""
    return np.array([np.nan if r.get(column) is None else float(r[column]) for r in rows], dtype=float)


def _boot_means(vals: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    n = len(vals)
    if n == 0:
        return np.full(n_boot, np.nan)
    idx = rng.integers(0, n, size=(n_boot, n))
    sample = vals[idx]
    valid = ~np.isnan(sample)
    den = valid.sum(axis=1)
    num = np.where(valid, sample, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _ci(boot: np.ndarray) -> tuple[float | None, float | None]:
    b = boot[~np.isnan(boot)]
    if len(b) == 0:
        return None, None
    return float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))


def _mean(vals: np.ndarray) -> float | None:
    v = vals[~np.isnan(vals)]
    return float(v.mean()) if len(v) else None


def mean_ci(vals: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, float | None]:
    """Mean over non-NaN values with a percentile-bootstrap 95% CI (rows resampled, NaNs kept as rows)."""
    lo, hi = _ci(_boot_means(vals, n_boot, np.random.default_rng(seed)))
    return {"mean": _mean(vals), "lo": lo, "hi": hi}


def mean_of_means_ci(
    strata: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0
) -> dict[str, float | None]:
    """Mean of per-stratum means (e.g. fr, pt, ru), CI by resampling within each stratum."""
    rng = np.random.default_rng(seed)
    means = [_mean(s) for s in strata]
    if not strata or any(m is None for m in means):
        return {"mean": None, "lo": None, "hi": None}
    boots = np.stack([_boot_means(s, n_boot, rng) for s in strata])
    lo, hi = _ci(boots.mean(axis=0))
    return {"mean": float(np.mean(means)), "lo": lo, "hi": hi}


def group_rows(rows: Iterable[Row], keys: Sequence[str]) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in keys)].append(r)
    return dict(sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])))


def criteria_table(
    rows: Sequence[Row], keys: Sequence[str] = ("model", "lang"), rule: str = "judge", n_boot: int = 1000
) -> list[Row]:
    """One row per group x criterion: mean, 95% CI, n, n_failed, n_wrong_lang."""
    out = []
    for gkey, grows in group_rows(rows, keys).items():
        for c in JUDGE_CRITERIA:
            vals, counts = criterion_values(grows, c, rule)
            out.append({**dict(zip(keys, gkey)), "criterion": c, **mean_ci(vals, n_boot), **counts})
    return out


def en_vs_nonen(
    rows: Sequence[Row],
    keys: Sequence[str] = ("model",),
    rule: str = "judge",
    n_boot: int = 1000,
    non_en: Sequence[str] | None = None,
) -> list[Row]:
    """Figure 2: per group x criterion, English and the mean over the other languages (`non_en`; default:
    every language of `rows` but English, e.g. fr/pt/ru) of the per-language means."""
    if non_en is None:
        non_en = sorted({r["lang"] for r in rows if r.get("lang") and r["lang"] != REFERENCE_LANG})
    out = []
    for gkey, grows in group_rows(rows, keys).items():
        by_lang = group_rows(grows, ("lang",))
        for c in JUDGE_CRITERIA:
            en = criterion_values(by_lang.get(("en",), []), c, rule)[0]
            strata = [criterion_values(by_lang.get((lang,), []), c, rule)[0] for lang in non_en]
            e, ne = mean_ci(en, n_boot), mean_of_means_ci(strata, n_boot)
            out.append(
                {
                    **dict(zip(keys, gkey)),
                    "criterion": c,
                    "en": e["mean"],
                    "en_lo": e["lo"],
                    "en_hi": e["hi"],
                    "non_en": ne["mean"],
                    "non_en_lo": ne["lo"],
                    "non_en_hi": ne["hi"],
                }
            )
    return out


def task_table(
    rows: Sequence[Row],
    criterion: str = "helpfulness",
    keys: Sequence[str] = ("model",),
    rule: str = "judge",
    n_boot: int = 1000,
) -> list[Row]:
    """Figure 3 right: a criterion per group x task x language."""
    out = []
    for gkey, grows in group_rows([r for r in rows if r.get("task")], (*keys, "task", "lang")).items():
        vals, counts = criterion_values(grows, criterion, rule)
        out.append(
            {
                **dict(zip((*keys, "task", "lang"), gkey)),
                "criterion": criterion,
                **mean_ci(vals, n_boot),
                **counts,
            }
        )
    return out


def modifier_table(
    rows: Sequence[Row], keys: Sequence[str] = ("model",), rule: str = "judge", n_boot: int = 1000
) -> list[Row]:
    """Table 1: per group x modifier type x language, fulfilment rate and modifier-aware helpfulness."""
    out = []
    mods = [r for r in rows if r.get("modifier_type")]
    for gkey, grows in group_rows(mods, (*keys, "modifier_type", "lang")).items():
        fulfil = column_values(grows, "modifier_ok")
        helpful, counts = criterion_values(grows, "judge_helpfulness_mod", rule)
        f, h = mean_ci(fulfil, n_boot), mean_ci(helpful, n_boot)
        out.append(
            {
                **dict(zip((*keys, "modifier_type", "lang"), gkey)),
                "fulfilled": f["mean"],
                "fulfilled_lo": f["lo"],
                "fulfilled_hi": f["hi"],
                "n_checked": int((~np.isnan(fulfil)).sum()),
                "helpfulness": h["mean"],
                "helpfulness_lo": h["lo"],
                "helpfulness_hi": h["hi"],
                "n_helpfulness": counts["n"],
            }
        )
    return out


def surface_table(
    rows: Sequence[Row], keys: Sequence[str] = ("model", "lr", "lang"), n_boot: int = 1000
) -> list[Row]:
    """Figure 3 left: language correctness, spelling, relevance, code-switching per group."""
    out = []
    for gkey, grows in group_rows(rows, keys).items():
        entry: Row = dict(zip(keys, gkey))
        entry["n"] = len(grows)
        for m in (*SURFACE_METRICS, "code_switch_rate"):
            s = mean_ci(column_values(grows, m), n_boot)
            entry.update({m: s["mean"], f"{m}_lo": s["lo"], f"{m}_hi": s["hi"]})
        out.append(entry)
    return out


# Paper Section 4: "We train all model configurations with three learning rates (LRs) and choose the best LR
# based on surface metrics", the three of Section 3: language correctness, spellcheck correctness, relevance.
LR_METRICS: tuple[str, ...] = SURFACE_METRICS
_METRIC_ALIASES = {"spell_ok": "spell_ok_rate", "spelling": "spell_ok_rate", "lang": "lang_correct"}


class LRChoiceError(InputError):
    """The LR cannot be chosen as asked (a metric missing for some LR, unknown metric, no rows)."""


@dataclass(frozen=True)
class LRChoice:
    """The LR picked for one configuration, with the metrics the rule used and whether they were the default."""

    lr: Any
    metrics: tuple[str, ...]
    explicit: bool  # the caller named the metrics (--lr_metrics); False: the paper's three
    worst: float  # the maximised minimum over (metric, language)
    mean: float

    def describe(self) -> str:
        return lr_rule_text(self.metrics, self.explicit)


def lr_rule_text(metrics: Sequence[str] | None = None, explicit: bool | None = None) -> str:
    """One line saying which metrics the LR choice uses, for reports and summaries."""
    used = tuple(metrics or LR_METRICS)
    explicit = (tuple(used) != LR_METRICS) if explicit is None else explicit
    how = "explicit --lr_metrics" if explicit else "paper default"
    left_out = [m for m in LR_METRICS if m not in used]
    tail = f"; not used: {', '.join(left_out)}" if left_out else ""
    return f"maximin over {', '.join(used)} ({how}{tail})"


def parse_lr_metrics(spec: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """--lr_metrics as a tuple of surface-metric columns (None: the paper's default); LRChoiceError if unknown.

    Accepts "a,b" or a list; `spell_ok` and `spelling` mean spell_ok_rate, `lang` means lang_correct.
    """
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [_METRIC_ALIASES.get(m.strip(), m.strip()) for m in items if m.strip()]
    if not names:
        return None
    unknown = [m for m in names if m not in SURFACE_METRICS]
    if unknown:
        raise LRChoiceError(
            f"--lr_metrics: unknown metric(s) {unknown}; expected some of {', '.join(SURFACE_METRICS)}"
        )
    return tuple(dict.fromkeys(names))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def choose_lr(
    surface: Sequence[Row],
    metrics: Sequence[str] | None = None,
    *,
    langs: Sequence[str] | None = None,
    lr_key: str = "lr",
    run_names: Mapping[Any, str] | None = None,
) -> LRChoice:
    """The LR of one model configuration chosen from surface metrics (paper Sections 4 and 5.3).

    The paper picks, among three LRs, the one with high values "for all metrics in all languages": too low
    an LR lowers relevance (under-training), too high an LR lowers language correctness and spelling
    (overfitting to the training language). As a rule: maximise the worst (metric, language) value;
    ties (within 1e-9) go to the higher mean over all (metric, language) pairs, then to the smaller LR.
    `surface` holds surface_table rows of ONE configuration (several LRs, one row per LR x language).

    Strict: every metric of `metrics` (default LR_METRICS, the paper's three) must have a value for every
    (LR, language) row, and every LR must cover the same languages; otherwise LRChoiceError names the metric
    and the runs (`run_names`: LR -> run name; else "lr=X"). Choosing without a metric (e.g. relevance when
    no relevance model was run) takes an explicit `metrics` list that leaves it out.
    """
    used = parse_lr_metrics(metrics)
    explicit = used is not None
    used = used or LR_METRICS
    by_lr = group_rows(
        surface if langs is None else [r for r in surface if r.get("lang") in langs], (lr_key,)
    )
    by_lr = {k: v for k, v in by_lr.items() if k[0] is not None}
    if not by_lr:
        raise LRChoiceError("LR choice: no surface rows with an LR")

    def name(lr: Any) -> str:
        named = (run_names or {}).get(lr)
        return named or (f"lr={lr:g}" if isinstance(lr, (int, float)) else f"lr={lr}")

    problems = []
    for m in used:
        missing = sorted(lr for (lr,), rs in by_lr.items() if any(_missing(r.get(m)) for r in rs))
        if missing:
            problems.append(
                f"LR choice needs {m} for every LR; missing for runs: {', '.join(name(lr) for lr in missing)}"
            )
    if problems:
        left = [m for m in used if not any(p.startswith(f"LR choice needs {m} ") for p in problems)]
        it = "it" if len(problems) == 1 else "them"
        hint = (
            f"score {it}, or choose without {it} by naming the metrics, e.g. --lr_metrics={','.join(left)}"
            if left
            else "score them first"
        )
        raise LRChoiceError("; ".join(problems) + f" ({hint})")
    lang_sets = {lr: frozenset(str(r.get("lang")) for r in rs) for (lr,), rs in by_lr.items()}
    if len(set(lang_sets.values())) > 1:
        every = frozenset.union(*lang_sets.values())
        short = [
            f"{name(lr)} lacks {','.join(sorted(every - s))}" for lr, s in lang_sets.items() if s != every
        ]
        raise LRChoiceError(f"LR choice needs the same languages for every LR: {'; '.join(short)}")

    def key(item: tuple[tuple, list[Row]]) -> tuple[float, float, float]:
        (lr,), rs = item
        values = [float(r[m]) for r in rs for m in used]
        return (round(min(values), 9), round(sum(values) / len(values), 9), -float(lr))

    best = max(by_lr.items(), key=key)
    worst, mean, _ = key(best)
    return LRChoice(best[0][0], tuple(used), explicit, worst, mean)


def select_lr(
    surface: Sequence[Row],
    metrics: Sequence[str] | None = None,
    langs: Sequence[str] | None = None,
    lr_key: str = "lr",
    run_names: Mapping[Any, str] | None = None,
) -> Any:
    """choose_lr(...).lr: the chosen LR alone (same strict rule, same errors)."""
    return choose_lr(surface, metrics, langs=langs, lr_key=lr_key, run_names=run_names).lr


def choose_run_lr(
    runs: Sequence[tuple[str, Any]],
    rows: Sequence[Row],
    metrics: Sequence[str] | None = None,
    *,
    n_boot: int = 10,
) -> LRChoice:
    """The LR choice of one configuration from its score rows: `runs` are its (run name, LR) pairs and `rows`
    their evaluation-set score rows, each with "lr" set to its run's LR. The one entry point of the report
    (report_data.choose_runs) and of the human-evaluation packet (human.select_runs)."""
    names = {lr: name for name, lr in runs}
    lrs = set(names)
    surface = surface_table([r for r in rows if r.get("lr") in lrs], ("lr", "lang"), n_boot)
    empty = [name for name, lr in runs if not any(s["lr"] == lr for s in surface)]
    if empty:
        raise LRChoiceError(
            f"LR choice needs scores for every LR; no evaluation-set rows for runs: {', '.join(empty)}"
        )
    return choose_lr(surface, metrics, run_names=names)


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_table(
    rows: Sequence[Row], columns: Sequence[str], formatters: dict[str, Callable[[Row], str]] | None = None
) -> str:
    """Plain-text table with aligned columns; `formatters[column](row)` renders a cell from its row."""
    formatters = formatters or {}

    def cell(r: Row, c: str) -> str:
        if c in formatters:
            return formatters[c](r)
        v = r.get(c)
        return fmt(v) if isinstance(v, float) else str(v)

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
