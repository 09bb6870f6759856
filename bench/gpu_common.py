"""Shared by bench/gpu_mfu.py (ours, JAX) and bench/gpu_torch.py (HF transformers): the model shapes, the
peak FLOP/s table and the guarded case loop, so both sides measure the same cases the same way."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from models.config import LlamaConfig, preset
from records.files import atomic_write_text

Case = tuple[str, tuple[Any, ...]]  # ("train" | "decode", arguments)


def model_shapes(name: str, *, smoke: bool, wide_layers: int) -> LlamaConfig:
    """ "1b": LLaMA shapes at ~1.1B (TinyLlama's); "7b_wide": LLaMA-2-7B's width with `wide_layers` layers;
    `smoke`: the tiny preset whatever the name."""
    if smoke:
        return preset("tiny")
    if name == "1b":
        return LlamaConfig(
            vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
            num_kv_heads=4, head_dim=64, max_position_embeddings=4096,
        )  # fmt: skip
    if name == "7b_wide":
        return preset("llama2_7b", num_layers=wide_layers)
    raise ValueError(f"unknown model {name!r}")


def run_cases(
    cases: Sequence[Case],
    run_one: Callable[[str, tuple[Any, ...]], dict[str, Any]],
    report: dict[str, Any],
    out: str | Path,
    budget_s: float,
    after_case: Callable[[], None] = lambda: None,
) -> int:
    """Runs each case in order, guarded: an error (e.g. out of memory) is recorded in report["errors"] and the
    next case runs; no case starts after `budget_s` (those are listed in report["skipped"]). The JSON report
    is rewritten atomically after every case. Returns 1 if any case failed, else 0."""
    t0 = time.perf_counter()
    report.update(train=[], decode=[], errors=[], skipped=[])
    for kind, args in cases:
        if time.perf_counter() - t0 > budget_s:
            report["skipped"].append([kind, *args])
            continue
        try:
            res = run_one(kind, args)
            report[kind].append(res)
            figures = {
                k: round(res[k], 3) for k in ("tok_s", "decode_tok_s", "mfu") if res.get(k) is not None
            }
            print(kind, args, figures, flush=True)
        except Exception as e:  # noqa: BLE001 - an OOM in one case must not lose the others
            report["errors"].append({"case": [kind, *args], "error": f"{type(e).__name__}: {e}"[:2000]})
            traceback.print_exc()
        after_case()
        report["elapsed_s"] = time.perf_counter() - t0
        atomic_write_text(json.dumps(report, indent=2), out)
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0
