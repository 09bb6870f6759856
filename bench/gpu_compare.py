"""Side-by-side table of bench/gpu_mfu.py (ours, JAX) and bench/gpu_torch.py (HF transformers, PyTorch) results.

python -m bench.gpu_compare OUT/gpu_mfu.json OUT/gpu_torch.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    return (
        json.loads(p.read_text()) if p.exists() else {"train": [], "decode": [], "errors": [f"{p}: missing"]}
    )


def table(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Markdown rows: every case of ours, with the HF figure and ours/HF where HF ran the same case."""
    lines = [
        f"ours: {ours.get('device')} · HF: {theirs.get('device')} torch {theirs.get('torch')}",
        "| case | ours | HF transformers | ours / HF |",
        "|---|---|---|---|",
    ]
    hf_train = {(r["model"], r["mode"]): r for r in theirs.get("train", [])}
    for r in ours.get("train", []):
        name = f"train {r['model']} {r['mode']} {r.get('attention', 'einsum')}{' remat' if r.get('remat') else ''}"
        h = hf_train.get((r["model"], r["mode"]))
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") else ""
        hmfu = f", MFU {h['mfu']:.1%}" if h and h.get("mfu") else ""
        lines.append(
            f"| {name} | {r['tok_s']:,.0f} tok/s{mfu} | "
            + (f"{h['tok_s']:,.0f} tok/s{hmfu} | {r['tok_s'] / h['tok_s']:.2f}× |" if h else "— | — |")
        )
    hf_dec = {r["batch"]: r for r in theirs.get("decode", [])}
    for r in ours.get("decode", []):
        h = hf_dec.get(r["batch"])
        lines.append(
            f"| decode {r['model']} batch {r['batch']} | {r['decode_tok_s']:,.0f} tok/s | "
            + (
                f"{h['decode_tok_s']:,.0f} tok/s | {r['decode_tok_s'] / h['decode_tok_s']:.2f}× |"
                if h
                else "— | — |"
            )
        )
    for side, rep in (("ours", ours), ("HF", theirs)):
        for e in rep.get("errors", []):
            lines.append(f"error ({side}): {str(e)[:300]}")
        for s in rep.get("skipped", []):
            lines.append(f"skipped ({side}, budget): {s}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(table(_load(sys.argv[1]), _load(sys.argv[2])))


if __name__ == "__main__":
    main()
