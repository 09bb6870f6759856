"""The sections of reporting.report (figures + tables), laid out from rows read by reporting.report_data.

Numbers come from evalsuite.aggregate / evalsuite.agreement only; this module selects rows, arranges them
as the paper's Figures 2-5 and Table 1, and formats cells as "mean [lo, hi] n=N" with † for failed items.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from evalsuite import aggregate as agg
from evalsuite.agreement import agreement_table, fasttext_ratings
from reporting import figures
from reporting.report_data import NO_PROTOCOL, Run
from reporting.report_html import FAILED_NOTE, Cell, Section, Table

Row = dict[str, Any]
CRITERIA = ("helpfulness", "language", "fluency", "factuality", "logic", "harmlessness")  # paper's order
SHORT = {
    "helpfulness": "Helpful.",
    "language": "Cor. lang",
    "fluency": "Fluency",
    "factuality": "Factual.",
    "logic": "Logical",
    "harmlessness": "Harmless",
}
# Languages are the ones the runs have (langs_of): English, the language the models are tuned in, first and
# compared with the mean over every other language ("non-en"), then the others in alphabetical order.
REFERENCE_LANG = "en"
SURFACE_TITLES = {
    "lang_correct": "language correctness",
    "spell_ok_rate": "spelling",
    "relevance": "relevance",
}


def _f(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.0f}%" if pct else f"{x:.2f}"


def ci_cell(
    mean: float | None,
    lo: float | None,
    hi: float | None,
    n: int | None = None,
    n_failed: int = 0,
    pct: bool = False,
) -> Cell:
    """ "mean [lo, hi] n=N", with † and a tooltip when judge items of the cell failed."""
    text = _f(mean, pct) if mean is None else f"{_f(mean, pct)} [{_f(lo, pct)}, {_f(hi, pct)}]"
    if n is not None:
        text += f" n={n}"
    if n_failed:
        return Cell(text + " †", f"n_failed={n_failed}: failed judge items left out")
    return Cell(text)


def lang_order(langs: Any) -> tuple[str, ...]:
    """English first, then the other languages alphabetically (the order of every language column)."""
    return tuple(sorted({x for x in langs if x}, key=lambda x: (x != REFERENCE_LANG, x)))


def langs_of(rows: list[Row]) -> tuple[str, ...]:
    """The languages present in `rows`, in lang_order."""
    return lang_order(r.get("lang") for r in rows)


def non_en_langs(rows: list[Row], every: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The languages other than English present in `rows` (the non-English mean is over these); `every`: the
    languages of all the runs, used when `rows` has none."""
    return tuple(x for x in langs_of(rows) if x != REFERENCE_LANG) or tuple(
        x for x in every or () if x != REFERENCE_LANG
    )


def non_en_text(langs: tuple[str, ...]) -> str:
    """ "fr/pt/ru": how the non-English mean is labelled."""
    return "/".join(langs) or "none"


def _partial_note(src: str, langs: tuple[str, ...], every: tuple[str, ...]) -> list[str]:
    if set(langs) >= {x for x in every if x != REFERENCE_LANG}:
        return []
    return [
        f"{src}: non-English is the mean over {non_en_text(langs)} only (no {src} rows in the other languages)."
    ]


def _mean_text(mean: float | None, n_failed: int) -> str:
    return _f(mean) + ("†" if n_failed else "")


def rule_text(rule: str) -> str:
    how = "judge Language score ≥ 1" if rule == "judge" else "fastText label == expected language"
    return (
        f"--rule={rule}: criteria other than Correct language are averaged over responses in the correct "
        f"language ({how}; lang_XX modifier rows use fastText); failed judge items are left out and counted"
    )


def runs_section(
    runs: list[Run], chosen: set[str], rows: list[Row], notes: list[str], labels: dict
) -> Section:
    counts: dict[str, Counter] = {}
    for r in rows:
        counts.setdefault(r["run"], Counter())[r.get("judge_status") or "null"] += 1
    header = [
        "run",
        "label",
        "group",
        "lr",
        "method",
        "anchor",
        "protocol (decode)",
        "status",
        "rows",
        "judge ok/failed/skipped",
        "relevance model",
        "shown",
    ]
    disp, raw = [], []
    for r in runs:
        c = counts.get(r.name, Counter())
        status = "scored" if r.scored else "not scored yet"
        jc = f"{c['ok']}/{c['failed']}/{c['skipped'] + c['null']}" if r.scored else "–"
        shown = "chosen LR" if r.name in chosen else ""
        disp.append(
            [
                r.name,
                r.label,
                r.group,
                _lr(r.lr),
                r.method or "",
                "yes" if r.anchor else "",
                r.protocol_text,
                status,
                sum(c.values()) if r.scored else "–",
                jc,
                r.relevance_model or "–",
                shown,
            ]
        )
        raw.append(
            {
                "run": r.name,
                "label": r.label,
                "group": r.group,
                "lr": r.lr,
                "method": r.method,
                "data": r.data,
                "anchor": r.anchor,
                "protocol": r.protocol or NO_PROTOCOL,
                "repetition_penalty": (r.decode or {}).get("repetition_penalty"),
                "max_new_tokens": (r.decode or {}).get("max_new_tokens"),
                "status": status,
                "rows": sum(c.values()),
                "judge_ok": c["ok"],
                "judge_failed": c["failed"],
                "relevance_model": r.relevance_model,
                "chosen": r.name in chosen,
            }
        )
    files, file_notes = data_files_table(runs)
    tables = [Table("runs", "run.json of every run", header, disp, raw), files]
    return Section("runs", "Runs", notes + file_notes, None, tables)


def data_files_table(runs: list[Run]) -> tuple[Table, list[str]]:
    """The sha256 of every run's data files (run.json "data_files": its training files, the evaluation files it
    generated on), and a note for each file whose hash differs between runs (they did not see the same data)."""
    header = ["run", "kind", "file", "sha256"]
    disp: list[list[Any]] = []
    raw: list[Row] = []
    seen: dict[str, dict[str | None, list[str]]] = {}
    for r in runs:
        if r.data_files is None:
            disp.append([r.name, "–", "not recorded (run.json predates data hashes)", "–"])
            raw.append({"run": r.name, "kind": None, "file": None, "sha256": None})
            continue
        for kind, files in (("train", r.data_files.train), ("eval", r.data_files.eval)):
            for path, digest in files.items():
                disp.append([r.name, kind, path, digest or "not hashed (missing or a hub dataset)"])
                raw.append({"run": r.name, "kind": kind, "file": path, "sha256": digest})
                seen.setdefault(path, {}).setdefault(digest, []).append(r.name)
    notes = [
        f"data file {path} differs between runs: "
        + "; ".join(f"{(d or 'none')[:12]}: {', '.join(names)}" for d, names in by_hash.items())
        for path, by_hash in seen.items()
        if len(by_hash) > 1
    ]
    title = "data files of every run (sha256; run.json data_files)"
    return Table("data_files", title, header, disp, raw, collapsed=True), notes


def _lr(lr: float | None) -> str:
    return "–" if lr is None else f"{lr:g}"


def fig2_fig4(
    sources: dict, models: list[str], labels: dict, rule: str, n_boot: int, judged: bool
) -> list[Section]:
    every = lang_order(r.get("lang") for srows in sources.values() for r in srows)
    all_ne = non_en_text(non_en_langs([], every))
    s2 = Section("fig2", f"Figure 2: judge criteria, English vs mean of {all_ne}")
    s4 = Section("fig4", "Figure 4: judge criteria per language")
    if not judged or not models:
        msg = "No judge scores in the shown runs (judge not run, or kind 'none'): Figures 2 and 4 are empty."
        return [Section(s2.anchor, s2.title, [msg]), Section(s4.anchor, s4.title, [msg])]
    p2, p4, d2, d4, c2, c4, notes = [], [], [], [], [], [], []
    for src, srows in sources.items():
        ne = non_en_langs(srows, every)
        notes += _partial_note(src, ne, every)
        per_lang = {
            (t["run"], t["lang"], t["criterion"]): t
            for t in agg.criteria_table(srows, ("run", "lang"), rule, n_boot)
        }
        env = {(t["run"], t["criterion"]): t for t in agg.en_vs_nonen(srows, ("run",), rule, n_boot, ne)}

        def counts(run: str, c: str, langs: tuple, per_lang: dict = per_lang) -> tuple[int, int, int]:
            ts = [per_lang.get((run, lang, c), {}) for lang in langs]
            return tuple(sum(t.get(k, 0) for t in ts) for k in ("n", "n_failed", "n_wrong_lang"))

        vals = np.full((len(models), 2 * len(CRITERIA)), np.nan)
        texts = [["–"] * (2 * len(CRITERIA)) for _ in models]
        for i, run in enumerate(models):
            for j, c in enumerate(CRITERIA):
                t = env.get((run, c), {})
                for k, (key, langs) in enumerate((("en", ("en",)), ("non_en", ne))):
                    n, nf, nw = counts(run, c, langs)
                    m = t.get(key)
                    vals[i, 2 * j + k] = np.nan if m is None else m
                    texts[i][2 * j + k] = _mean_text(m, nf)
                    c2.append(
                        {
                            "source": src,
                            "run": run,
                            "model": labels[run],
                            "criterion": c,
                            "langs": key,
                            "mean": m,
                            "lo": t.get(f"{key}_lo"),
                            "hi": t.get(f"{key}_hi"),
                            "n": n,
                            "n_failed": nf,
                            "n_wrong_lang": nw,
                        }
                    )
        cols = [f"{SHORT[c]} {lang}" for c in CRITERIA for lang in ("en", "non-en")]
        p2.append(figures.Panel(f"{src} evaluation", vals, texts, [labels[m] for m in models], cols))
        for lang in every:
            v4 = np.full((len(models), len(CRITERIA)), np.nan)
            t4 = [["–"] * len(CRITERIA) for _ in models]
            for i, run in enumerate(models):
                for j, c in enumerate(CRITERIA):
                    t = per_lang.get((run, lang, c))
                    if t is None:
                        continue
                    v4[i, j] = np.nan if t["mean"] is None else t["mean"]
                    t4[i][j] = _mean_text(t["mean"], t["n_failed"])
            p4.append(
                figures.Panel(
                    f"{src} evaluation, {lang}",
                    v4,
                    t4,
                    [labels[m] for m in models],
                    [SHORT[c] for c in CRITERIA],
                )
            )
        for run in models:
            for c in CRITERIA:
                cells = []
                for lang in every:
                    t = per_lang.get((run, lang, c))
                    cells.append(
                        ci_cell(t["mean"], t["lo"], t["hi"], t["n"], t["n_failed"]) if t else Cell("–")
                    )
                    if t:
                        c4.append(
                            {
                                "source": src,
                                "run": run,
                                "model": labels[run],
                                "lang": lang,
                                "criterion": c,
                                **{k: t[k] for k in ("mean", "lo", "hi", "n", "n_failed", "n_wrong_lang")},
                            }
                        )
                d4.append([src, labels[run], c, *cells])
    for src in sources:
        other = [r for r in c2 if r["source"] == src and r["criterion"] != "language"]
        if rule == "judge" and not any(r["n"] for r in other) and any(r["n_wrong_lang"] for r in other):
            notes.append(
                f"{src}: every rated response counts as being in the wrong language (Language score 0), so the "
                "other criteria have no value under --rule=judge; --rule=fasttext decides the language by "
                "fastText instead."
            )
    by = {(r["source"], r["run"], r["criterion"], r["langs"]): r for r in c2}
    for run in models:  # sources side by side, as in the figure
        for c in CRITERIA:
            rs = [by[(src, run, c, key)] for src in sources for key in ("en", "non_en")]
            d2.append(
                [labels[run], c, *[ci_cell(r["mean"], r["lo"], r["hi"], r["n"], r["n_failed"]) for r in rs]]
            )
    ncols = len(sources)
    s2.figure = ("fig2.png", figures.heatmaps_png(p2, ncols, "Scores 0–2 († = failed judge items left out)"))
    s2.text = [
        f"Rows: models (each group at its chosen LR). Columns: criterion × (English, mean of the {all_ne} means)."
        + (
            " Human (left) and judge (right)."
            if "human" in sources
            else " Judge only: no human ratings given."
        )
    ] + notes
    s2.tables = [
        Table(
            "fig2",
            "Figure 2 values (95% CI, n)",
            [
                "model",
                "criterion",
                *[f"{src} {k}" for src in sources for k in ("en", f"non-en (mean {all_ne})")],
            ],
            d2,
            c2,
            FAILED_NOTE,
        )
    ]
    p4 = [p for lang in every for p in p4 if p.title.endswith(f", {lang}")]  # language-major: human | judge
    s4.figure = ("fig4.png", figures.heatmaps_png(p4, ncols, "Per language, scores 0–2"))
    s4.tables = [
        Table(
            "fig4",
            "Figure 4 values (95% CI, n)",
            ["source", "model", "criterion", *every],
            d4,
            c4,
            FAILED_NOTE,
            collapsed=len(d4) > 24,
        )
    ]
    return [s2, s4]


def relevance_models_text(runs: list[Run], default: str) -> str:
    """The relevance model(s) of the scored runs: one name, or each name with its runs."""
    by_model: dict[str, list[str]] = {}
    for r in runs:
        if r.scored:
            by_model.setdefault(r.relevance_model or default, []).append(r.name)
    if not by_model:
        return default
    if len(by_model) == 1:
        return next(iter(by_model))
    return "; ".join(f"{m} (runs {', '.join(names)})" for m, names in by_model.items())


def protocols_text(runs: list[Run]) -> str:
    """Each protocol (with its decoding) and how many runs used it; a warning when runs differ."""
    counts = Counter(r.protocol_text for r in runs)
    text = "; ".join(f"{p}: {n} run{'s' if n > 1 else ''}" for p, n in counts.items())
    return text + (" — runs differ in protocol: compare them with care" if len(counts) > 1 else "")


def lang_vs_lr(surface: list[Row], runs: list[Run]) -> Section | None:
    """The paper's Sec. 5.3 question at the top: language correctness per language against LR, per group that
    was trained at two or more LRs (95% CIs); untuned runs (no LR) are shown as their own rows and as dashed
    lines. None when no group has two LRs."""
    lrs_of: dict[str, set[float]] = {}
    for r in surface:
        if r["lr"] is not None:
            lrs_of.setdefault(r["group"], set()).add(r["lr"])
    groups = [g for g, lrs in lrs_of.items() if len(lrs) >= 2]
    if not groups:
        return None
    untuned = sorted({r["group"] for r in surface if r["lr"] is None})
    s = Section("lang_vs_lr", "Language correctness vs learning rate (does tuning on English overfit to it?)")
    langs = langs_of(surface)
    disp, raw = [], []
    for g in [*untuned, *groups]:
        for lr in sorted({r["lr"] for r in surface if r["group"] == g}, key=lambda x: x or 0.0):
            cells = []
            for lang in langs:
                row = next((r for r in surface if (r["group"], r["lr"], r["lang"]) == (g, lr, lang)), None)
                cells.append(
                    "–"
                    if row is None
                    else ci_cell(row["lang_correct"], row["lang_correct_lo"], row["lang_correct_hi"])
                )
                if row is not None:
                    raw.append(
                        {"group": g, "lr": lr, "lang": lang, "n": row["n"]}
                        | {k: row[k] for k in ("lang_correct", "lang_correct_lo", "lang_correct_hi")}
                    )
            disp.append([g, _lr(lr), *cells])
    series = []
    for gi, g in enumerate(groups):
        for li, lang in enumerate(langs):
            pts = sorted((r for r in surface if r["group"] == g and r["lang"] == lang and r["lr"] is not None),
                         key=lambda r: r["lr"])  # fmt: skip
            series.append(figures.CISeries(f"{lang}" if len(groups) == 1 else f"{g} — {lang}",
                                           [r["lr"] for r in pts], [r["lang_correct"] for r in pts],
                                           [r["lang_correct_lo"] for r in pts], [r["lang_correct_hi"] for r in pts],
                                           li, gi))  # fmt: skip
    hlines = []
    for g in untuned:
        for li, lang in enumerate(langs):
            row = next((r for r in surface if r["group"] == g and r["lang"] == lang), None)
            if row is not None and row["lang_correct"] is not None:
                hlines.append((row["lang_correct"], li))
    s.figure = ("lang_vs_lr.png", figures.ci_lines_png(series, hlines, "language correctness (fastText)"))
    s.text = [
        "Share of answers fastText finds in the instruction's language, per language, against the training LR "
        "(bootstrap 95% CIs); dashed: untuned "
        + (", ".join(untuned) if untuned else "(none run)")
        + ". The paper (Sec. 5.3): too high an LR lowers language correctness outside English.",
    ]
    s.tables = [Table("lang_vs_lr", "Language correctness (95% CI)", ["group", "lr", *langs], disp, raw)]
    return s


def fig3_surface(surface: list[Row], runs: list[Run], chosen: dict[str, Run], lr_text: str = "") -> Section:
    s = Section("fig3_surface", "Figure 3 left: surface metrics vs LR")
    if not surface:
        s.text = ["No scored runs yet."]
        return s
    run_of = {(r.group, r.lr): r.name for r in runs}
    chosen_lr = {g: r.lr for g, r in chosen.items()}
    groups = list(dict.fromkeys(r.group for r in runs if r.group in chosen))
    disp, raw = [], []
    gorder = {g: i for i, g in enumerate(dict.fromkeys(r.group for r in runs))}
    every = langs_of(surface)
    ne = non_en_langs(surface)
    surface = sorted(
        surface, key=lambda r: (gorder.get(r["group"], 0), r["lr"] or 0.0, every.index(r["lang"]))
    )
    for row in surface:
        mark = row["lr"] is not None and chosen_lr.get(row["group"]) == row["lr"]
        raw.append(
            {
                "group": row["group"],
                "run": run_of.get((row["group"], row["lr"])),
                "lr": row["lr"],
                "chosen": mark,
                **{k: v for k, v in row.items() if k not in ("group", "lr")},
            }
        )
        metrics = (*agg.SURFACE_METRICS, "code_switch_rate")
        disp.append(
            [
                row["group"],
                _lr(row["lr"]) + (" ★" if mark else ""),
                row["lang"],
                row["n"],
                *[ci_cell(row[m], row[f"{m}_lo"], row[f"{m}_hi"]) for m in metrics],
            ]
        )
    rel = relevance_models_text([r for r in runs if r.scored], "unknown")
    titles = dict(SURFACE_TITLES)
    if ";" not in rel:
        titles["relevance"] = f"relevance ({rel})"
    lines: dict[str, list[figures.Line]] = {titles[m]: [] for m in agg.SURFACE_METRICS}
    for gi, g in enumerate(groups):
        grows = [r for r in surface if r["group"] == g and r["lr"] is not None]
        base = not grows  # e.g. the untuned base model (lr null): a horizontal line
        grows = grows or [r for r in surface if r["group"] == g]
        lrs = sorted({r["lr"] for r in grows}, key=lambda x: x or 0.0)
        for m in agg.SURFACE_METRICS:
            for dashed, langs in ((False, (REFERENCE_LANG,)), (True, ne)):
                ys = []
                for lr in lrs:
                    v = [r[m] for r in grows if r["lr"] == lr and r["lang"] in langs and r[m] is not None]
                    ys.append(float(np.mean(v)) if v else None)
                name = f"{g} — {REFERENCE_LANG if not dashed else non_en_text(ne)}"
                line = figures.Line(name, [] if base else lrs, ys, chosen_lr.get(g), gi, dashed)
                line.hline = ys[0] if base and ys else None
                lines[titles[m]].append(line)
    if any(ln.xs for ls in lines.values() for ln in ls):
        s.figure = ("fig3_surface.png", figures.surface_png(lines, non_en=non_en_text(ne)))
    no_lr = sorted({r["group"] for r in surface if r["lr"] is None})
    s.text = [
        f"One line per group: solid = English, dashed = mean of the {non_en_text(ne)} means; ★ = LR chosen by "
        "aggregate.choose_lr (maximise the worst (metric, language) value)"
        + (f": {lr_text}." if lr_text else "."),
        f"Relevance scored by: {rel}.",
    ]
    if no_lr:
        s.text.append(f"Without an LR (thin horizontal lines): {', '.join(no_lr)}.")
    unspelled = [x for x in every if all(r["spell_ok_rate"] is None for r in surface if r["lang"] == x)]
    if unspelled:
        s.text.append(
            f"Spelling not scored for {', '.join(unspelled)}: no Hunspell dictionary for the language when it was "
            "scored (scored with --spelling=skip), or no response with a word to check (docs/languages.md)."
        )
    rel_head = "relevance" if ";" in rel else f"relevance ({rel})"
    header = ["group", "lr", "lang", "n", "language correct", "spelling ok", rel_head, "code-switching"]
    s.tables = [
        Table("fig3_surface", "Figure 3 left values (95% CI)", header, disp, raw, collapsed=len(disp) > 24)
    ]
    return s


def fig3_tasks(sources: dict, anchor: Run | None, labels: dict, rule: str, n_boot: int) -> Section:
    s = Section("fig3_tasks", "Figure 3 right: helpfulness per task (anchor model)")
    if anchor is None:
        s.text = ["No scored runs yet."]
        return s
    disp, raw, plot, plot_src, notes = [], [], None, "", []
    every = lang_order(
        r.get("lang")
        for srows in sources.values()
        for r in srows
        if r["run"] == anchor.name and r.get("task")
    )
    all_ne = non_en_langs([], every)
    for src, srows in sources.items():
        arows = [r for r in srows if r["run"] == anchor.name and r.get("task")]
        if not arows or not any(r.get("judge_status") in ("ok", "failed") for r in arows):
            continue
        ne = non_en_langs(arows, every)
        notes += _partial_note(src, ne, every)
        per = {
            (t["task"], t["lang"]): t for t in agg.task_table(arows, "helpfulness", ("run",), rule, n_boot)
        }
        env = {
            t["task"]: t
            for t in agg.en_vs_nonen(arows, ("task",), rule, n_boot, ne)
            if t["criterion"] == "helpfulness"
        }
        tasks = sorted(env)
        for task in tasks:
            e = env[task]
            nf = {k: sum(per.get((task, lang), {}).get(k, 0) for lang in ne) for k in ("n", "n_failed")}
            en = per.get((task, "en"), {})
            raw.append(
                {
                    "source": src,
                    "run": anchor.name,
                    "task": task,
                    "lang": "non_en",
                    "mean": e["non_en"],
                    "lo": e["non_en_lo"],
                    "hi": e["non_en_hi"],
                    "n": nf["n"],
                    "n_failed": nf["n_failed"],
                }
            )
            cells = [
                ci_cell(e["en"], e["en_lo"], e["en_hi"], en.get("n", 0), en.get("n_failed", 0)),
                ci_cell(e["non_en"], e["non_en_lo"], e["non_en_hi"], nf["n"], nf["n_failed"]),
            ]
            for lang in every:
                t = per.get((task, lang))
                if t:
                    raw.append(
                        {
                            "source": src,
                            "run": anchor.name,
                            "task": task,
                            "lang": lang,
                            **{k: t[k] for k in ("mean", "lo", "hi", "n", "n_failed")},
                        }
                    )
                if lang != REFERENCE_LANG:
                    cells.append(
                        ci_cell(t["mean"], t["lo"], t["hi"], t["n"], t["n_failed"]) if t else Cell("–")
                    )
            disp.append([src, task, *cells])
        full = all(env[t]["en"] is not None for t in tasks) and any(
            env[t]["non_en"] is not None for t in tasks
        )
        if plot is None and (full or src == "judge"):  # human if it covers en and non-en, else judge
            series = {
                "en": (
                    [env[t]["en"] for t in tasks],
                    [env[t]["en_lo"] for t in tasks],
                    [env[t]["en_hi"] for t in tasks],
                ),
                f"non-en (mean {non_en_text(all_ne)})": (
                    [env[t]["non_en"] for t in tasks],
                    [env[t]["non_en_lo"] for t in tasks],
                    [env[t]["non_en_hi"] for t in tasks],
                ),
            }
            title = f"{src}-evaluated helpfulness of {labels.get(anchor.name, anchor.label)} (95% CI)"
            plot, plot_src = figures.tasks_png(tasks, series, title), src
    if plot is None:
        s.text = [f"No judged or rated rows with a task for the anchor run {anchor.name}."]
        return s
    s.figure = ("fig3_tasks.png", plot)
    s.text = [
        f"Anchor run: {anchor.name} ({labels.get(anchor.name, anchor.label)}); plotted: {plot_src} ratings."
    ] + notes
    header = ["source", "task", "en", f"non-en (mean {non_en_text(all_ne)})", *all_ne]
    s.tables = [
        Table(
            "fig3_tasks", "Figure 3 right values (95% CI, n)", header, disp, raw, FAILED_NOTE, len(disp) > 30
        )
    ]
    return s


def table1(mods: list[Row], models: list[str], labels: dict, rule: str, n_boot: int) -> Section:
    s = Section("table1", "Table 1: task modifiers — fulfilment and modifier-aware helpfulness")
    if not mods:
        s.text = ["No modifier rows in the shown runs."]
        return s
    failed = Counter(
        (r["run"], r["modifier_type"], r["lang"]) for r in mods if r.get("judge_status") == "failed"
    )
    mfailed = Counter(
        (r["run"], r["modifier_type"], r["lang"]) for r in mods if r.get("modifier_status") == "failed"
    )
    table = {
        (t["run"], t["modifier_type"], t["lang"]): t for t in agg.modifier_table(mods, ("run",), rule, n_boot)
    }
    types = list(dict.fromkeys(t[1] for t in table))
    langs = langs_of(mods)
    disp, raw = [], []
    for run in models:
        avg: dict[tuple, list[float]] = {}
        for mt in types:
            fcells, hcells = [], []
            for lang in langs:
                t = table.get((run, mt, lang))
                if t is None:
                    fcells.append(Cell("–"))
                    hcells.append(Cell("–"))
                    continue
                key = (run, mt, lang)
                raw.append(
                    {
                        "run": run,
                        "model": labels[run],
                        **{k: v for k, v in t.items() if k != "run"},
                        "n_failed": failed[key],
                        "n_modifier_failed": mfailed[key],
                    }
                )
                fcells.append(
                    ci_cell(
                        t["fulfilled"],
                        t["fulfilled_lo"],
                        t["fulfilled_hi"],
                        t["n_checked"],
                        mfailed[key],
                        pct=True,
                    )
                )
                hcells.append(
                    ci_cell(
                        t["helpfulness"],
                        t["helpfulness_lo"],
                        t["helpfulness_hi"],
                        t["n_helpfulness"],
                        failed[key],
                    )
                )
                for what in ("fulfilled", "helpfulness"):
                    if t[what] is not None:
                        avg.setdefault((what, lang), []).append(t[what])
            if any(c.text != "–" for c in fcells + hcells):
                disp.append([labels[run], mt, *fcells, *hcells])
        if avg:
            mean = {k: float(np.mean(v)) for k, v in avg.items()}
            disp.append(
                [
                    labels[run],
                    "average (of the rows)",
                    *[Cell(_f(mean.get(("fulfilled", lang)), pct=True)) for lang in langs],
                    *[Cell(_f(mean.get(("helpfulness", lang)))) for lang in langs],
                ]
            )
    header = [
        "model",
        "modifier",
        *[f"fulfilled {x}" for x in langs],
        *[f"helpfulness {x}" for x in langs],
    ]
    s.text = [
        "Fulfilment: share of checked responses that follow the modifier. Helpfulness (0–2) is capped at 1 "
        "when the modifier is not fulfilled (judge_helpfulness_mod), averaged under the exclusion rule."
    ]
    note = FAILED_NOTE + " On fulfilment, † counts failed modifier checks."
    s.tables = [Table("table1", "Table 1 (95% CI, n)", header, disp, raw, note)]
    return s


def fig5(human_raw: list[Row], rows: list[Row], paper: list[Row], runs_dir: Path) -> Section:
    """Human vs judge agreement per criterion (the paper's Figure 5) when ratings are given, and always the
    judge's language score vs fastText's reading of the same responses (a real automatic second rater)."""
    s = Section("fig5", "Figure 5: agreement of the judge with human ratings and, on language, with fastText")
    tables = [("human", t) for t in agreement_table(human_raw, rows)] if human_raw else []
    tables += [
        ("fastText", t) for t in agreement_table(fasttext_ratings(paper), paper, criteria=("language",))
    ]
    panels, disp, raw = [], [], []
    for ref, t in tables:
        m = np.array(t["matrix"], dtype=float)
        kappa = "–" if t["kappa"] is None else f"{t['kappa']:.2f}"
        panels.append(
            figures.Panel(
                f"{t['criterion']} · {t['langs']}{'' if ref == 'human' else ' · fastText'}\nκ={kappa}, n={t['n']}",
                m if t["n"] else np.full((3, 3), np.nan),
                [[f"{v:.0f}%" if t["n"] else "" for v in row] for row in m],
                ["0", "1", "2"],
                ["0", "1", "2"],
                vmin=0,
                vmax=100,
                cmap="Blues" if ref == "human" else "Greens",
                xlabel=ref,
                ylabel="judge",
            )
        )
        disp.append(
            [
                ref,
                t["criterion"],
                t["langs"],
                t["n"],
                _f(t["exact"], pct=True),
                kappa,
                *["/".join(f"{v:.0f}" for v in row) for row in m],
            ]
        )
        raw.append(
            {
                "reference": ref,
                "criterion": t["criterion"],
                "langs": t["langs"],
                "n": t["n"],
                "exact": t["exact"],
                "kappa": t["kappa"],
                **{f"pct_judge{j}_human{h}": m[j, h] for j in range(3) for h in range(3)},
            }
        )
    s.text = []
    if not human_raw:
        s.text.append(
            "No human ratings given (--human), so the human panels are absent. To produce them: "
            f"python -m reporting.annotate export --runs={runs_dir} --out=human/ ; have the human/annotate_<lang>.html "
            "pages rated; python -m reporting.annotate import --key=human/key.json --ratings=FILES "
            "--out=human/ratings.parquet ; then rerun this report with --human=human/ratings.parquet."
        )
    s.text.append(
        "Green panels: fastText as the second rater of the language criterion, on every scored response of the "
        "evaluation set (not a human): 0 = not in the expected language, 1 = in it with sentences in another "
        "language (code_switch_rate > 0), 2 = in it throughout, the judge prompt's three levels."
    )
    if not any(t["n"] for _, t in tables):
        s.text.append("No (judge, reference) pair yet: no judged response.")
        return s
    s.figure = (
        "fig5.png",
        figures.heatmaps_png(
            panels,
            min(4, len(panels)),
            "% of responses rated X by the judge (rows) and Y by the reference (columns)",
            colorbar=False,
        ),
    )
    s.text.append(
        "Pairs are (judge, reference) scores of one response joined on (run, id); several annotators of one "
        "response give one pair each; failed judge items and unrated criteria are left out. κ = Cohen's "
        "kappa with linear weights |i−j|/2."
    )
    header = [
        "reference",
        "criterion",
        "langs",
        "n",
        "exact",
        "weighted κ",
        "judge 0: ref 0/1/2 %",
        "judge 1: ref 0/1/2 %",
        "judge 2: ref 0/1/2 %",
    ]
    s.tables = [Table("fig5", "Figure 5 values", header, disp, raw)]
    return s


def summary_text(sections: list[Section], header: list[tuple[str, str]], banner: str) -> str:
    lines = [
        f"{k}: {v}" for k, v in header if k in ("runs", "judge", "relevance model", "protocol", "LR choice")
    ]
    if banner:
        lines.append(f"!! {banner}")
    tables = {t.name: t for s in sections for t in s.tables}
    if "fig2" in tables:
        hl = [r for r in tables["fig2"].csv_rows if r["criterion"] in ("helpfulness", "language")]
        wide: dict[tuple, Row] = {}
        for r in hl:
            w = wide.setdefault((r["source"], r["model"]), {"source": r["source"], "model": r["model"]})
            w[f"{r['criterion'][:4]}_{r['langs']}"] = _f(r["mean"])
        cols = ["source", "model", "help_en", "help_non_en", "lang_en", "lang_non_en"]
        lines += ["", "Figure 2 (means, 0-2):", agg.format_table(list(wide.values()), cols)]
    if "runs" in tables:
        chosen = [r for r in tables["runs"].csv_rows if r["chosen"]]
        lines += ["", "chosen LR per group:"] + [
            f"  {r['group']}: {_lr(r['lr'])} ({r['run']})" for r in chosen
        ]
        lines += [] if chosen else ["  (no scored run yet)"]
    return "\n".join(lines)


def validation_curves(val: list[Row]) -> Section | None:
    """Language correctness against the training step, per language, one line per run (its LR), from the
    validation lines the trainer logs every `train.validate_every` steps (report_data.load_validation). The CSV
    holds every (run, step, language) row; the table shows each run's last validation. None when no run has a
    validation line."""
    if not val:
        return None
    s = Section("validation_curves", "Language correctness vs training step (validation while training)")
    groups = list(dict.fromkeys(r["group"] for r in val))
    langs = langs_of(val)
    runs = list(dict.fromkeys(r["run"] for r in val))
    lr_of = {r["run"]: r["lr"] for r in val}
    group_of = {r["run"]: r["group"] for r in val}
    by_lr = sorted(runs, key=lambda n: (lr_of[n] is None, lr_of[n] or 0.0))
    name_of = {}  # one curve name (and colour) per LR; runs sharing a group and an LR get their run name too
    for n in by_lr:
        same = [m for m in runs if group_of[m] == group_of[n] and lr_of[m] == lr_of[n]]
        name_of[n] = f"lr {_lr(lr_of[n])}" + (f" [{n}]" if len(same) > 1 else "")
    names = list(dict.fromkeys(name_of[n] for n in by_lr))
    panels = []
    for g in groups:
        members = [n for n in by_lr if group_of[n] == g]
        for lang in langs:
            curves = []
            for n in members:
                pts = sorted((r for r in val if r["run"] == n and r["lang"] == lang), key=lambda r: r["step"])
                curves.append(figures.StepCurve(name_of[n], [r["step"] for r in pts],
                                                [r["lang_correct"] for r in pts], names.index(name_of[n])))  # fmt: skip
            panels.append((lang if len(groups) == 1 else f"{g} — {lang}", curves))
    s.figure = (
        "validation_curves.png",
        figures.step_curves_png(panels, len(langs), "language correctness (fastText)"),
    )
    s.text = [
        "Every train.validate_every steps the trainer answers a fixed validation set of instructions in each "
        "language (data/eval/validation.*.jsonl, greedy, the run's repetition penalty, a short token budget) and "
        "logs the share of answers fastText finds in the instruction's language (train/validate.py). A line "
        "falling outside English while English stays high is overfitting to English as it happens; compare LRs "
        "within a panel."
    ]
    header = ["run", "group", "lr", "step", "lang", "lang correct", "code-switch", "spelling", "answer tokens",
              "loss", "seconds"]  # fmt: skip
    disp = []
    for n in runs:
        last = max(r["step"] for r in val if r["run"] == n)
        for r in val:
            if r["run"] == n and r["step"] == last:
                disp.append([n, r["group"], _lr(r["lr"]), last, r["lang"], _f(r["lang_correct"], True),
                             _f(r["code_switch_rate"], True), _f(r["spell_ok_rate"], True),
                             _f(r["answer_tokens"]), _f(r["loss"]), _f(r["validation_s"])])  # fmt: skip
    s.tables = [
        Table(
            "validation_curves",
            "Last validation of each run",
            header,
            disp,
            [dict(r) for r in val],
            note="validation_curves.csv holds every validation step of every run (the curves' data).",
        )
    ]
    return s
