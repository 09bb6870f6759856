r"""The paper's LR finding at small scale (Sec. 5.3), on the embedded SmolLM2: train, generate, score, tabulate.

    python -m study.replicate [--preset=cpu|gpu|demo] [--workdir=runs/replicate] [--publish=DIR]

What it runs (one `study.grid`, so every stage resumes after an interruption):
  * the untuned SmolLM2-135M-Instruct (`smollm2-ft-base`);
  * full fine-tuning on the shipped English Dolly subset at three LRs (preset `lrs`: under-training →
    overfitting), released protocol (clip 1.0, linear decay to lr/10, length-sorted padded batches,
    repetition penalty 1.2 when generating);
  * full fine-tuning on the shipped LIMA at the middle LR;
then greedy answers to the same evaluation prompts in en/fr/pt/ru (`subset`: task-balanced, every one of the
25 tasks) and the surface metrics (fastText language and code-switching, Hunspell spelling). No LLM is called.
The table (per run × language: language correctness, code-switch rate, spelling, each with a bootstrap 95% CI)
and the figure (those metrics against LR, one line per language, untuned model dashed, LIMA as a star) are
written to `<workdir>/replication/`; `--publish=DIR` also copies the generations and scores there (Parquet), so
the table can be recomputed from them (`python -m study.replicate --table_from=DIR`).

Presets (docs/replication.md says why these sizes): `cpu` is the committed run (2-core machine, about an
hour); `gpu` the same experiment with more steps and the whole evaluation set for one lent GPU (< 10 min);
`demo` the reduced version `make demo` shows (base + a moderate and a high LR, fewer steps and prompts).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from evalsuite import aggregate as agg
from records.files import atomic_write_bytes, atomic_write_parquet, atomic_write_text, read_table
from study import grid_plan as gp
from study.grid_run import Grid, GridOptions

CONFIG = "configs/smollm2.py:ft"
LIMA_CONFIG = "configs/smollm2.py:ft,lima"
METRICS = ("lang_correct", "code_switch_rate", "spell_ok_rate")
METRIC_NAMES = {
    "lang_correct": "language correctness",
    "code_switch_rate": "code-switching (share of sentences)",
    "spell_ok_rate": "spelling correctness",
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of one replication run. `subset` is study.grid's --subset (per language)."""

    lrs: tuple[float, ...]
    lima_lr: float | None
    steps: int
    seq_len: int
    batch_tokens: int
    subset: str
    max_new_tokens: int
    batch_size: int
    langs: tuple[str, ...] = ()  # evaluation languages; (): every language of the shipped data/eval
    validate_every: int = 0  # train.validate_every (language correctness vs step); 0: off

    def overrides(self) -> list[str]:
        # one micro-batch per update; save twice per run (a resume point) without writing every few steps
        return [
            f"train.steps={self.steps}",
            "train.grad_accum=1",
            f"checkpoint.save_every={max(1, self.steps // 2)}",
            f"data.seq_len={self.seq_len}",
            f"data.batch_tokens={self.batch_tokens}",
            f"train.validate_every={self.validate_every}",
        ]


PRESETS = {
    # 3 LRs a decade apart, the paper's 1e-5 / 1e-4 plus 1e-3: our runs see ~0.3% of the paper's tokens
    "cpu": Preset(
        lrs=(1e-5, 1e-4, 1e-3),
        lima_lr=1e-4,
        steps=24,
        seq_len=1024,
        batch_tokens=2048,
        subset="tasks=25,per_task=2",  # 50 prompts per language covering all 25 tasks
        max_new_tokens=64,
        batch_size=50,
    ),
    "gpu": Preset(
        lrs=(1e-5, 1e-4, 1e-3),
        lima_lr=1e-4,
        steps=200,
        seq_len=2048,
        batch_tokens=8192,
        subset="all",
        max_new_tokens=256,
        batch_size=113,
        validate_every=25,
    ),
    # one row per micro-batch (no layout cut), 8 tasks × 4 languages in one generation batch: make demo
    # < 10 min from a fresh clone (measured 11m11s with 6 steps and 12 tasks; with 4 steps the LR effect
    # did not show: 6 steps at 1e-3 are needed)
    "demo": Preset(
        lrs=(1e-4, 1e-3),
        lima_lr=None,
        steps=6,
        seq_len=1024,
        batch_tokens=1024,
        subset="tasks=8,per_task=1",
        max_new_tokens=32,
        batch_size=32,
    ),
}


def grid_options(preset: Preset, workdir: str | Path, include_base: bool = True) -> GridOptions:
    """The grid of one replication: Dolly at every preset LR (+ base), LIMA at `lima_lr`."""
    lr_spec = "+".join(repr(x) for x in preset.lrs)
    configs = [f"{CONFIG}@{lr_spec}"]
    if preset.lima_lr is not None:
        configs.append(f"{LIMA_CONFIG}@{preset.lima_lr!r}")
    return GridOptions(
        configs=configs,
        lrs=None,
        workdir=str(workdir),
        judge="none",
        relevance="none",
        modifier_judge="none",
        eval_sets=("paper",),
        langs=preset.langs,
        subset=preset.subset,
        max_new_tokens=preset.max_new_tokens,
        batch_size=preset.batch_size,
        include_base=include_base,
        overrides=preset.overrides(),
    )


# ------------------------------------------------------------------------------------------- table


def run_kind(run: dict[str, Any]) -> str:
    """untuned | dolly | lima, from a run.json."""
    if run.get("lr") is None:
        return "untuned"
    return "lima" if run.get("data") == "lima_en" else "dolly"


def load_scores(workdir: Path, runs: Sequence[gp.RunSpec]) -> list[dict[str, Any]]:
    """Score rows of every run, each tagged with its run's LR and kind (untuned / dolly / lima)."""
    rows = []
    for run in runs:
        path = gp.RunDir(workdir, run.name).scores
        if not path.exists():
            raise FileNotFoundError(f"{path}: run {run.name} has no scores (did the grid finish?)")
        for r in read_table(path).to_pylist():
            rows.append({**r, "run": run.name, "lr": run.lr, "kind": run_kind(run.meta)})
    return rows


def table(rows: Sequence[dict[str, Any]], n_boot: int = 1000) -> list[dict[str, Any]]:
    """Per run × language: n and each metric's mean with a percentile-bootstrap 95% CI (aggregate.mean_ci)."""
    out = []
    for (run, lang), grp in agg.group_rows(rows, ("run", "lang")).items():
        entry: dict[str, Any] = {"run": run, "kind": grp[0]["kind"], "lr": grp[0]["lr"], "lang": lang}
        entry["n"] = len(grp)
        for m in METRICS:
            s = agg.mean_ci(agg.column_values(grp, m), n_boot)
            entry.update({m: s["mean"], f"{m}_lo": s["lo"], f"{m}_hi": s["hi"]})
            entry[f"{m}_n"] = int(np.sum(~np.isnan(agg.column_values(grp, m))))
        out.append(entry)
    order = {"untuned": 0, "dolly": 1, "lima": 2}
    out.sort(key=lambda e: (order[e["kind"]], e["lr"] or 0.0, e["lang"]))
    return out


def _cell(e: dict[str, Any], m: str) -> str:
    if e[m] is None:
        return "–"
    return f"{e[m]:.2f} [{e[f'{m}_lo']:.2f}, {e[f'{m}_hi']:.2f}]"


def table_markdown(entries: Sequence[dict[str, Any]]) -> str:
    head = "| run | LR | lang | n | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (4 + len(METRICS))]
    for e in entries:
        lr = "–" if e["lr"] is None else f"{e['lr']:g}"
        name = {"untuned": "untuned SmolLM2", "dolly": "Dolly FT", "lima": "LIMA FT"}[e["kind"]]
        cells = " | ".join(_cell(e, m) for m in METRICS)
        lines.append(f"| {name} | {lr} | {e['lang']} | {e['n']} | {cells} |")
    return "\n".join(lines) + "\n"


def table_csv(entries: Sequence[dict[str, Any]]) -> str:
    cols = ["run", "kind", "lr", "lang", "n"] + [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi", "_n")]
    lines = [",".join(cols)]
    for e in entries:
        lines.append(
            ",".join(
                "" if e[c] is None else (f"{e[c]:.6g}" if isinstance(e[c], float) else str(e[c]))
                for c in cols
            )
        )
    return "\n".join(lines) + "\n"


def figure_png(entries: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """One panel per metric: per language a line over the Dolly LRs (with CI bars), the untuned model as a
    dashed horizontal line, LIMA as a star at its LR."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    langs = sorted({e["lang"] for e in entries}, key=lambda x: (x != "en", x))
    fig = Figure(figsize=(4.2 * len(METRICS), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(METRICS))
    colors = {lang: f"C{i}" for i, lang in enumerate(langs)}
    for ax, m in zip(axes, METRICS):
        for lang in langs:
            dolly = sorted(
                (e for e in entries if e["kind"] == "dolly" and e["lang"] == lang), key=lambda e: e["lr"]
            )
            xs = [e["lr"] for e in dolly]
            ys = [np.nan if e[m] is None else e[m] for e in dolly]
            err = [
                [0 if e[m] is None else e[m] - e[f"{m}_lo"] for e in dolly],
                [0 if e[m] is None else e[f"{m}_hi"] - e[m] for e in dolly],
            ]
            ax.errorbar(xs, ys, yerr=err, marker="o", color=colors[lang], label=lang, capsize=3)
            for e in entries:
                if e["lang"] != lang or e[m] is None:
                    continue
                if e["kind"] == "untuned":
                    ax.axhline(e[m], color=colors[lang], linestyle="--", linewidth=1, alpha=0.7)
                elif e["kind"] == "lima":
                    ax.plot(
                        [e["lr"]], [e[m]], marker="*", markersize=13, color=colors[lang], linestyle="none"
                    )
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (Dolly FT; ★ LIMA FT; dashed: untuned)")
        ax.set_title(METRIC_NAMES[m], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_outputs(entries: Sequence[dict[str, Any]], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table_markdown(entries), out / "table.md")
    atomic_write_text(table_csv(entries), out / "table.csv")
    atomic_write_bytes(figure_png(entries, title), out / "figure.png")


def publish(workdir: Path, runs: Sequence[gp.RunSpec], out: Path) -> None:
    """Generations and scores of every run into `out` (one Parquet each, a `run` column added)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, attr in (("generations", "generations"), ("scores", "scores")):
        tables = []
        for run in runs:
            t = read_table(getattr(gp.RunDir(workdir, run.name), attr))
            t = t.append_column("run", pa.array([run.name] * t.num_rows, pa.string()))
            tables.append(t)
        atomic_write_parquet(pa.concat_tables(tables, promote_options="default"), out / f"{name}.parquet")
    runs_meta = [gp.RunDir(workdir, r.name).path / "run.json" for r in runs]
    atomic_write_text(json.dumps([json.loads(p.read_text()) for p in runs_meta], indent=1), out / "runs.json")


def entries_from_published(folder: Path) -> list[dict[str, Any]]:
    """The table recomputed from a published folder's scores.parquet and runs.json."""
    meta = {r["run"]: r for r in json.loads((folder / "runs.json").read_text())}
    rows = [
        {**r, "lr": meta[r["run"]]["lr"], "kind": run_kind(meta[r["run"]])}
        for r in read_table(folder / "scores.parquet").to_pylist()
    ]
    return table(rows)


def summary_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """One screen: language correctness per language against LR, with CIs."""
    langs = sorted({e["lang"] for e in entries}, key=lambda x: (x != "en", x))
    head = f"{'run':<26}" + "".join(f"{lang:>20}" for lang in langs)
    out = ["language correctness (fastText), mean [95% CI]", head, "-" * len(head)]
    by_run: dict[str, dict[str, dict[str, Any]]] = {}
    for e in entries:
        by_run.setdefault(e["run"], {})[e["lang"]] = e
    for per in by_run.values():
        e0 = next(iter(per.values()))
        label = {"untuned": "untuned", "dolly": "Dolly FT", "lima": "LIMA FT"}[e0["kind"]]
        if e0["lr"] is not None:
            label += f" lr {e0['lr']:g}"
        out.append(
            f"{label:<26}"
            + "".join(f"{_cell(per[lang], 'lang_correct') if lang in per else '–':>20}" for lang in langs)
        )
    return out


# ------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    a.add_argument("--workdir", default=None, help="Runs directory (default runs/replicate-PRESET).")
    a.add_argument("--publish", default=None, help="Also copy generations/scores + table + figure here.")
    a.add_argument(
        "--table_from", default=None, help="Only recompute table + figure from a published folder."
    )
    a.add_argument("--dry_run", action="store_true")
    args = a.parse_args(argv)
    if args.table_from:
        folder = Path(args.table_from)
        entries = entries_from_published(folder)
        print(table_markdown(entries))
        return 0
    preset = PRESETS[args.preset]
    workdir = Path(args.workdir or f"runs/replicate-{args.preset}")
    try:
        grid = Grid(grid_options(preset, workdir))
    except gp.GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(grid.dry_run_text())
        return 0
    t0 = time.time()
    results = grid.run()
    failed = [f"{r.run}/{r.stage}" for r in results if r.status == "failed"]
    for r in results:
        print(f"{r.run:<34}{r.stage:<10}{r.status:<9}{r.seconds:>8.1f}")
    if failed:
        print(
            f"error: failed stages: {', '.join(failed)} (rerun the same command to resume)", file=sys.stderr
        )
        return 1
    entries = table(load_scores(workdir, grid.runs))
    title = f"SmolLM2-135M full FT, preset {args.preset}: {preset.steps} steps × {preset.batch_tokens} tokens"
    write_outputs(entries, workdir / "replication", title)
    if args.publish:
        out = Path(args.publish)
        publish(workdir, grid.runs, out)
        write_outputs(entries, out, title)
    print("\n".join(summary_lines(entries)))
    print(f"wall {time.time() - t0:.0f}s; table and figure in {workdir / 'replication'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
