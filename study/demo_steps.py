"""The demo's steps (`python -m study.demo` is the CLI): its grid options, the report and judge-calibration
stages it adds to the grid, and the tables it prints."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from evalsuite import aggregate as agg
from records.files import read_table
from study import grid_plan as gp
from study import replicate
from study.grid_run import Grid, GridOptions, StageResult

OPENAI_DEFAULT = "openai:gpt-3.5-turbo-0125"
# the demo scores no relevance without an OpenAI key: its LR choice uses the two other surface metrics
LR_METRICS = ("lang_correct", "spell_ok_rate")


def options(workdir: str, judge: str, cache_dir: str, max_cost_usd: float) -> GridOptions:
    """The demo grid: the replication's `demo` preset, with `judge` ("auto": OpenAI when $OPENAI_API_KEY is set)."""
    if judge == "auto":
        judge = OPENAI_DEFAULT if os.environ.get("OPENAI_API_KEY") else "none"
    opts = replicate.grid_options(replicate.PRESETS["demo"], workdir)
    return dataclasses.replace(
        opts,
        judge=judge,
        relevance="same",
        modifier_judge="same",
        cache_dir=cache_dir,
        max_cost_usd=max_cost_usd if judge.startswith("openai") else None,
        concurrency=16,
    )


def run_report(workdir: Path, rule: str = "judge") -> tuple[str, float]:
    """`python -m reporting.report` into <workdir>/report; (message, seconds).

    With the demo judge the correct-language decision of the exclusion rule is fastText's (`rule`
    "fasttext"): SmolLM2 as a judge rates nearly every answer as being in the wrong language, which under
    the paper's rule would leave every other criterion empty."""
    out = workdir / "report"
    t0 = time.time()
    cmd = [sys.executable, "-m", "reporting.report", f"--runs={workdir}", f"--out={out}", f"--rule={rule}"]
    cmd.append(f"--lr_metrics={','.join(LR_METRICS)}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    dt = time.time() - t0
    if proc.returncode != 0:
        return f"report FAILED (exit {proc.returncode}): {proc.stderr.strip()[-800:]}", dt
    pages = sorted(out.glob("*.html"))
    return f"report: {pages[0] if pages else out}", dt


def load_rows(grid: Grid) -> list[dict[str, Any]]:
    rows = []
    for run in grid.runs:
        path = gp.RunDir(grid.workdir, run.name).scores
        if path.exists():
            rows += read_table(path).to_pylist()
    return rows


def summary_table(rows: list[dict[str, Any]], rule: str = "judge", judge_trusted: bool = True) -> str:
    """Per run × language: n, surface metrics, judge helpfulness and the judge's parse-success rate
    (helpfulness only from a judge with a passing calibration card: `judge_trusted`; else "-")."""
    paper = [r for r in rows if r.get("eval_set") == "paper"]
    helpful = {
        (r["model"], r["lang"]): r
        for r in agg.criteria_table(paper, ("model", "lang"), rule=rule, n_boot=200)
        if r["criterion"] == "helpfulness"
    }
    head = f"{'run':<20}{'lang':<6}{'n':>3}{'lang_ok':>9}{'spell_ok':>10}{'relevant':>10}{'helpful':>9}{'judged':>8}"
    out = [head, "-" * len(head)]
    for s in agg.surface_table(paper, ("model", "lang"), n_boot=200):
        group = [r for r in paper if r["model"] == s["model"] and r["lang"] == s["lang"]]
        judged = sum(r["judge_status"] == "ok" for r in group)
        h = helpful.get((s["model"], s["lang"]), {}).get("mean") if judge_trusted else None
        out.append(
            f"{s['model']:<20}{s['lang']:<6}{s['n']:>3}{agg.fmt(s['lang_correct']):>9}"
            f"{agg.fmt(s['spell_ok_rate']):>10}{agg.fmt(s['relevance']):>10}{agg.fmt(h):>9}{judged:>5}/{len(group)}"
        )
    mods = [r for r in rows if r.get("modifier_type")]
    if mods:
        ok = [r["modifier_ok"] for r in mods if r.get("modifier_ok") is not None]
        out.append(f"modifiers: {len(mods)} responses, fulfilled {sum(ok)}/{len(ok)} checked")
    return "\n".join(out)


def judge_rates(rows: list[dict[str, Any]]) -> str:
    parts = []
    for col, name in (("judge_status", "judge"), ("relevance_status", "relevance")):
        st = [r[col] for r in rows if r.get(col) in ("ok", "failed")]
        if st:
            parts.append(
                f"{name} replies parsed {st.count('ok')}/{len(st)} ({100 * st.count('ok') / len(st):.0f}%)"
            )
    return "; ".join(parts) or "no judge"


def calibrate_judge(workdir: Path, judge_kind: str, judge_spec: str, cache_dir: str) -> StageResult:
    """`python -m study.calibrate` into <workdir>/calibration (where the report looks for the card): the
    grid's judge, or the demo judge (SmolLM2 behind infer.server) when the grid has none. Prints the verdict
    and the failed controls; reuses an up-to-date card without a call."""
    judge = "demo" if judge_kind in ("none", "demo") else judge_spec
    out = workdir / "calibration"
    cmd = [
        sys.executable,
        "-m",
        "study.calibrate",
        f"--judge={judge}",
        f"--out={out}",
        f"--cache_dir={cache_dir}",
    ]
    print(f"[calibration] {judge}: running (log {out / 'calibrate.log'})", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out / "calibrate.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    dt = time.time() - t0
    if rc not in (0, 3):  # 3: the judge failed its calibration (a result, not an error)
        print(f"[calibration] FAILED (exit {rc}); see {out / 'calibrate.log'}", file=sys.stderr, flush=True)
        return StageResult("(judge)", "calibrate", "failed", dt)
    return StageResult("(judge)", "calibrate", "ran", dt)
