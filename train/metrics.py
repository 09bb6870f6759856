"""Per-step metrics: `workdir/metrics.jsonl`, TensorBoard event files in `workdir/tb/`, a console line.

MFU = model FLOPs/s ÷ (peak FLOPs/s of one chip × chips), with the model FLOPs per token from
`LlamaConfig.flops_per_token(seq_len)` (6·matmul params + attention; the same count for LoRA, as usual for
"model FLOPs"). Peak dense bf16 numbers per chip; CPUs and unknown chips report no MFU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
from absl import logging

# substring of jax Device.device_kind (lower case) -> peak dense bf16 FLOP/s per chip
PEAK_FLOPS = {
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
    "gh200": 989e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6": 918e12,
}


def peak_flops(device: jax.Device | None = None) -> float | None:
    """Peak FLOP/s of one device, or None (CPU, unknown accelerator)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in kind:
            return PEAK_FLOPS[key]
    return None


class MetricsWriter:
    """Writes on process 0 only; JSONL lines are {"step": N, "time": unix, ...metrics}."""

    def __init__(self, workdir: str | Path, *, flops_per_token: float, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.flops_per_token = flops_per_token
        self.peak = peak_flops()
        self.n_devices = jax.device_count()
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not self.enabled:
            return
        if self.path.exists():  # drop lines past the checkpoint we resume from
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln)["step"] <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(Path(workdir) / "tb"), purge_step=resume_step + 1)
        self._f = self.path.open("a", encoding="utf-8")
        self._t = time.perf_counter()

    def rates(self, tokens: float, seconds: float) -> dict[str, float]:
        out = {"tokens_per_s": tokens / seconds if seconds > 0 else 0.0}
        if self.peak:
            out["mfu"] = out["tokens_per_s"] * self.flops_per_token / (self.peak * self.n_devices)
        return out

    def write(self, step: int, metrics: dict[str, Any], total_steps: int) -> dict[str, Any]:
        if not self.enabled:
            return metrics
        row = {"step": step, "time": time.time(), **{k: _num(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        for k, v in row.items():
            if k not in ("step", "time") and isinstance(v, (int, float)):
                self._tb.add_scalar(f"train/{k}", v, step)
        mfu = f" mfu {row['mfu']:.1%}" if "mfu" in row else ""
        logging.info(
            "step %d/%d  loss %.4f  gnorm %.3f  lr %.3g  %.0f tok/s  %.2f s/step%s",
            step,
            total_steps,
            row["loss"],
            row["grad_norm"],
            row["lr"],
            row.get("tokens_per_s", 0.0),
            row.get("step_time", 0.0),
            mfu,
        )
        return row

    def write_validation(self, step: int, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        """One validation (train/validate.py): a metrics.jsonl line {"step", "time", "validation": [one object
        per language], "validation_s"} and TensorBoard scalars validation/<lang>/<metric>, validation/seconds."""
        line = {"step": step, "time": time.time(), "validation": rows, "validation_s": seconds}
        if not self.enabled:
            return line
        self._f.write(json.dumps(line) + "\n")
        self._f.flush()
        for r in rows:
            for k, v in r.items():
                if k != "lang" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"validation/{r['lang']}/{k}", v, step)
        self._tb.add_scalar("validation/seconds", seconds, step)
        self._tb.flush()
        logging.info(
            "step %d validation (%.1f s): %s",
            step,
            seconds,
            "  ".join(
                f"{r['lang']} lang {_pct(r['lang_correct'])} spell {_pct(r['spell_ok_rate'])} "
                f"loss {r['loss'] if r['loss'] is None else round(r['loss'], 3)}"
                for r in rows
            ),
        )
        return line

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._f.close()


def _num(v: Any) -> Any:
    import numpy as np

    a = np.asarray(v)
    if a.ndim or a.dtype.kind not in "biuf":
        return v
    return int(a) if a.dtype.kind in "biu" else float(a)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"
