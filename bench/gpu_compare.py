"""bench/gpu.sh's report: bench/gpu_mfu.py (ours, JAX), bench/gpu_torch.py (HF transformers, PyTorch) and
bench/decode.py runs (SmolLM2, real prompts, through bench/gpu_decode.py) merged into one JSON (date, card,
environment, every figure) and printed as a markdown table for bench/README.md.

  python -m bench.gpu_compare --ours=OUT/gpu_mfu.json --theirs=OUT/gpu_torch.json \\
      [--decode_json=static=OUT/decode_static.json,...] [--env=OUT/env.txt] [--json_out=OUT/gpu.json]

A missing input file is reported as an error line, not a crash, so a part that timed out still leaves the
others' figures.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """At run time, not import, so tests can import `table` next to bench/decode.py's flags (--json_out)."""
    flags.DEFINE_string("ours", None, "bench/gpu_mfu.py's JSON.")
    flags.DEFINE_string("theirs", None, "bench/gpu_torch.py's JSON.")
    flags.DEFINE_list(
        "decode_json", [], "label=path of bench/decode.py JSON outputs (label: its --batching value)."
    )
    flags.DEFINE_string("env", None, "env.txt written by bench/gpu.sh (nvidia-smi query, package versions).")
    flags.DEFINE_string("json_out", None, "Write the merged report here.")


def _load(path: str | None) -> dict[str, Any]:
    p = Path(path) if path else None
    if p is None or not p.exists():
        return {"train": [], "decode": [], "errors": [f"{p}: missing (the part did not finish)"]}
    return json.loads(p.read_text())


def card_name(env_lines: list[str], fallback: str | None) -> str | None:
    """The GPU name from nvidia-smi's `--query-gpu=name,... --format=csv` lines (header first)."""
    for i, line in enumerate(env_lines):
        if line.startswith("name,") and i + 1 < len(env_lines) and "," in env_lines[i + 1]:
            return env_lines[i + 1].split(",")[0].strip()
    return fallback


def _train_name(r: dict[str, Any]) -> str:
    remat = f" remat {r.get('remat_policy') or 'nothing_saveable'}" if r.get("remat") else ""
    chunk = r.get("loss_chunk_tokens") or 0
    loss = f"chunked loss {chunk}" if chunk else "full logits"
    return f"train {r['model']} {r['mode']} {r.get('attention', 'einsum')}{remat}, {loss}"


def _tok(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:,.0f} tok/s" if r.get(key) is not None else "—"


def table(ours: dict[str, Any], theirs: dict[str, Any], decode_py: dict[str, dict[str, Any]]) -> str:
    """Markdown: every case of ours with the HF figure and ours/HF where HF ran the same case, LoRA vs full FT
    at the same loss setting, then bench/decode.py's rows."""
    lines = [
        f"ours: {ours.get('device')} · HF: {theirs.get('device')} torch {theirs.get('torch')}",
        "",
        "| case | ours | HF transformers | ours / HF |",
        "|---|---|---|---|",
    ]
    hf_train = {(r["model"], r["mode"]): r for r in theirs.get("train", [])}
    for r in ours.get("train", []):
        h = hf_train.get((r["model"], r["mode"]))
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") else ""
        mem = f", temp {r['temp_gib']:.1f} GiB" if r.get("temp_gib") is not None else ""
        hmfu = f", MFU {h['mfu']:.1%}" if h and h.get("mfu") else ""
        lines.append(
            f"| {_train_name(r)} | {r['tok_s']:,.0f} tok/s{mfu}{mem} | "
            + (f"{h['tok_s']:,.0f} tok/s{hmfu} | {r['tok_s'] / h['tok_s']:.2f}× |" if h else "— | — |")
        )

    def same_setting(r: dict[str, Any]) -> tuple[Any, ...]:
        return (
            r["model"],
            r.get("attention"),
            r.get("remat"),
            r.get("remat_policy"),
            r.get("loss_chunk_tokens"),
        )

    ft = {same_setting(r): r for r in ours.get("train", []) if r["mode"] == "ft"}
    for r in ours.get("train", []):
        f = ft.get(same_setting(r)) if r["mode"] == "lora" else None
        if f is not None:
            lines.append(
                f"| LoRA / full FT, {r['model']} {_train_name(r).split(', ')[-1]} | "
                f"{r['tok_s'] / f['tok_s']:.2f}× | | |"
            )
    hf_dec = {r["batch"]: r for r in theirs.get("decode", [])}
    for r in ours.get("decode", []):
        h = hf_dec.get(r["batch"])
        lines.append(
            f"| decode {r['model']} (random, {r['prompt_len']}+{r['new_tokens']} tokens, static) batch "
            f"{r['batch']} | {_tok(r, 'decode_tok_s')} | {_tok(h or {}, 'decode_tok_s')} | "
            + (f"{r['decode_tok_s'] / h['decode_tok_s']:.2f}× |" if h else "— |")
        )
    for label, rep in decode_py.items():
        model = Path(
            str(rep.get("model", "SmolLM2"))
        ).name  # e.g. smollm2-shapes-random-weights (bench/gpu_model.py)
        for r in rep.get("results", []) if isinstance(rep.get("results"), list) else []:
            if not isinstance(r, dict) or "batch" not in r:
                continue
            rows = len(r["prompt_tokens"]) if isinstance(r.get("prompt_tokens"), list) else r["batch"]
            ratio = r.get("decode_speedup")
            lines.append(
                f"| bench/decode.py {model} {label}, batch {r['batch']} ({rows} prompts), decode phase | "
                f"{_tok(r, 'xlit_decode_tok_s')} | {_tok(r, 'hf_decode_tok_s')} | "
                + (f"{ratio:.2f}× |" if ratio is not None else "— |")
            )
            if r.get("speedup") is not None:
                lines.append(
                    f"| bench/decode.py {model} {label}, batch {r['batch']}, whole call | "
                    f"{_tok(r, 'xlit_tok_s')} | {_tok(r, 'hf_tok_s')} | {r['speedup']:.2f}× |"
                )
    for side, rep in (("ours", ours), ("HF", theirs), *decode_py.items()):
        for e in rep.get("errors", []):
            lines.append(f"error ({side}): {str(e)[:300]}")
        for s in rep.get("skipped", []):
            lines.append(f"skipped ({side}, budget): {s}")
    return "\n".join(lines)


def run(argv_unused: list[str]) -> int:
    ours, theirs = _load(FLAGS.ours), _load(FLAGS.theirs)
    decode_py = {}
    for item in FLAGS.decode_json:
        label, _, path = item.partition("=")
        decode_py[label] = _load(path)
    env = Path(FLAGS.env).read_text().splitlines() if FLAGS.env and Path(FLAGS.env).exists() else []
    text = table(ours, theirs, decode_py)
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": card_name(env, ours.get("device")),
        "smoke": bool(ours.get("smoke")),
        "env": env,
        "ours": ours,
        "hf_transformers": theirs,
        "decode_py": decode_py,
        "table": text,
    }
    if FLAGS.json_out:
        Path(FLAGS.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(FLAGS.json_out).write_text(json.dumps(report, indent=1))
    print(f"{report['date']} · {report['device']}\n\n{text}")
    return 0


def main() -> None:
    _define_flags()
    app.run(lambda argv: sys.exit(run(argv)))


if __name__ == "__main__":
    main()
