"""Matplotlib figures of the report (reporting.report), rendered to PNG bytes.

Uses `matplotlib.figure.Figure` with the Agg canvas directly (no pyplot, no global backend state), so it
works headless and in threads. Every function takes plain numbers prepared by reporting.report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


@dataclass
class Panel:
    """One heatmap: `values[i][j]` (NaN = no value) coloured, `texts[i][j]` written in the cell."""

    title: str
    values: np.ndarray
    texts: list[list[str]]
    row_labels: list[str]
    col_labels: list[str]
    vmin: float = 0.0
    vmax: float = 2.0
    cmap: str = "RdYlGn"
    xlabel: str = ""
    ylabel: str = ""


@dataclass
class Line:
    """One line of Figure 3 left: `ys[k]` at LR `xs[k]`; `chosen` = the LR marked on it (or None)."""

    name: str
    xs: list[float]
    ys: list[float | None]
    chosen: float | None
    color_index: int
    dashed: bool = False
    hline: float | None = None  # a run without an LR (untuned base): a horizontal line at this value


@dataclass
class CISeries:
    """A line with 95% CI bars: `ys[k]` in [`lo[k]`, `hi[k]`] at `xs[k]` (log x axis)."""

    name: str
    xs: list[float]
    ys: list[float | None]
    lo: list[float | None]
    hi: list[float | None]
    color_index: int
    style_index: int = 0


def ci_lines_png(series: Sequence[CISeries], hlines: Sequence[tuple[float, int]], ylabel: str) -> bytes:
    """Lines with CI bars over a log LR axis; `hlines` (value, color index) dashed (runs without an LR)."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    styles = ("-", ":", "-.", "--")
    for sr in series:
        ys = np.array([np.nan if y is None else y for y in sr.ys], float)
        err = np.array(
            [
                [0.0 if (y is None or lo is None) else y - lo for y, lo in zip(sr.ys, sr.lo)],
                [0.0 if (y is None or hi is None) else hi - y for y, hi in zip(sr.ys, sr.hi)],
            ]
        )
        ax.errorbar(sr.xs, ys, yerr=err, marker="o", capsize=3, color=f"C{sr.color_index}",
                    linestyle=styles[sr.style_index % len(styles)], label=sr.name)  # fmt: skip
    for value, ci in hlines:
        ax.axhline(value, color=f"C{ci}", linestyle="--", linewidth=1, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def heatmaps_png(panels: Sequence[Panel], ncols: int, suptitle: str = "", colorbar: bool = True) -> bytes:
    """Heatmap panels on a grid of `ncols` columns, values written in the cells; one shared colour bar."""
    nrows = -(-len(panels) // ncols)
    ncol_cells = max(len(p.col_labels) for p in panels)
    cell_w = max(ncol_cells * (0.5 if ncol_cells > 8 else 0.75), 2.4)
    cell_h = max(max(len(p.row_labels) for p in panels) * 0.5 + 2.0, 2.6)
    label_w = max(max((len(s) for p in panels for s in p.row_labels), default=4) * 0.075, 0.6)
    fig = Figure(figsize=(ncols * cell_w + label_w + 0.8, nrows * cell_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, (ax, p) in enumerate(zip(axes.flat, panels)):
        vals = np.asarray(p.values, dtype=float)
        im = ax.imshow(np.ma.masked_invalid(vals), cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, aspect="auto")
        for i in range(vals.shape[0]):
            for j in range(vals.shape[1]):
                v = vals[i, j]
                rgb = im.cmap(im.norm(v))[:3] if not np.isnan(v) else (1.0, 1.0, 1.0)
                dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.45
                ax.text(
                    j,
                    i,
                    p.texts[i][j],
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
        long_labels = max(len(s) for s in p.col_labels) > 3
        ax.set_xticks(
            range(len(p.col_labels)),
            p.col_labels,
            rotation=45 if long_labels else 0,
            ha="right" if long_labels else "center",
            fontsize=8,
        )
        show_rows = k % ncols == 0 or panels[k - k % ncols].row_labels != p.row_labels
        ax.set_yticks(range(len(p.row_labels)), p.row_labels if show_rows else [], fontsize=8)
        ax.set_title(p.title, fontsize=10)
        ax.set_xlabel(p.xlabel, fontsize=8)
        ax.set_ylabel(p.ylabel if show_rows else "", fontsize=8)
    if colorbar:
        height = nrows * cell_h
        fig.colorbar(im, ax=axes, shrink=min(0.9, 3.5 / height), aspect=20, label="score (0-2)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return _png(fig)


def surface_png(metrics: dict[str, list[Line]], suptitle: str = "", non_en: str = "non-English") -> bytes:
    """Figure 3 left: one panel per surface metric, x = LR (log scale), the chosen LR marked by a star;
    `non_en` names the languages of the dashed lines (e.g. "fr/pt/ru")."""
    fig = Figure(figsize=(5 * len(metrics), 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False, sharex=True)[0]
    colors = [f"C{i}" for i in range(10)]
    plotted: dict[str, int] = {}  # group -> colour index, for the legend
    for ax, (title, lines) in zip(axes, metrics.items()):
        for ln in lines:
            if ln.hline is not None:
                color = colors[ln.color_index % len(colors)]
                ax.axhline(
                    ln.hline, color=color, linestyle="--" if ln.dashed else "-", linewidth=1, alpha=0.7
                )
                plotted[ln.name.split(" — ")[0]] = ln.color_index
            pts = [(x, y) for x, y in zip(ln.xs, ln.ys) if y is not None]
            if not pts:
                continue
            plotted[ln.name.split(" — ")[0]] = ln.color_index
            xs, ys = zip(*pts)
            color = colors[ln.color_index % len(colors)]
            ax.plot(xs, ys, "--" if ln.dashed else "-", marker="o", color=color, label=ln.name)
            if ln.chosen is not None and ln.chosen in xs:
                y = ys[xs.index(ln.chosen)]
                ax.plot(
                    [ln.chosen],
                    [y],
                    marker="*",
                    markersize=16,
                    color=color,
                    markeredgecolor="black",
                    zorder=5,
                )
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xscale("log")
        ax.set_ylim(top=1.02)  # bottom: automatic, so that differences near 1 stay visible
        ax.set_xlabel("learning rate")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[i % len(colors)], marker="o", label=g) for g, i in plotted.items()]
    handles += [
        Line2D([], [], color="black", label="en"),
        Line2D([], [], color="black", linestyle="--", label=f"mean {non_en}"),
        Line2D([], [], color="white", marker="*", markersize=12, markeredgecolor="black", label="chosen LR"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    fig.suptitle(suptitle or f"Surface metrics vs LR (★ = chosen LR; solid = en, dashed = mean {non_en})")
    return _png(fig)


def tasks_png(
    tasks: list[str],
    series: dict[str, tuple[list, list, list]],
    title: str,
    xlabel: str = "helpfulness (0-2)",
) -> bytes:
    """Figure 3 right: horizontal grouped bars per task; `series[name] = (means, los, his)`."""
    fig = Figure(figsize=(7, 1.2 + 0.32 * len(tasks) * max(len(series), 1) / 2 + 0.3), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / max(len(series), 1)
    y = np.arange(len(tasks))
    for k, (name, (means, los, his)) in enumerate(series.items()):
        m = np.array([np.nan if v is None else v for v in means], dtype=float)
        lo = np.array([np.nan if v is None else v for v in los], dtype=float)
        hi = np.array([np.nan if v is None else v for v in his], dtype=float)
        err = np.nan_to_num(np.stack([m - lo, hi - m]), nan=0.0).clip(min=0)
        ax.barh(
            y + (k - (len(series) - 1) / 2) * height,
            np.nan_to_num(m),
            height,
            xerr=err,
            label=name,
            capsize=2,
        )
    ax.set_yticks(y, tasks, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 2.05)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    return _png(fig)


@dataclass
class StepCurve:
    """One line of a step-curve panel: `ys[k]` (None = not measured) at training step `xs[k]`."""

    name: str
    xs: list[int]
    ys: list[float | None]
    color_index: int


def step_curves_png(
    panels: Sequence[tuple[str, list[StepCurve]]], ncols: int, ylabel: str, suptitle: str = ""
) -> bytes:
    """Panels (title, curves) of a metric in [0, 1] over training steps, on a grid of `ncols` columns; one
    shared legend (curve names, first panel that has them)."""
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.4 * ncols + 0.6, 2.9 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    legend: dict[str, Line2D] = {}
    for k, (ax, (title, curves)) in enumerate(zip(axes.flat, panels)):
        for c in curves:
            pts = [(x, y) for x, y in zip(c.xs, c.ys) if y is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            (h,) = ax.plot(xs, ys, marker="o", markersize=3, color=f"C{c.color_index % 10}", label=c.name)
            legend.setdefault(c.name, h)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step", fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    if legend:
        fig.legend(
            handles=list(legend.values()), loc="outside lower center", ncols=min(len(legend), 6), fontsize=8
        )
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return _png(fig)
