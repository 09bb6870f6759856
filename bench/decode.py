"""Decode throughput: xlit's jitted decode loop vs transformers `generate`, same prompts, same tokens.

  python -m bench.decode [--model=embedded --batch_sizes=1,16 --max_new_tokens=32 --runs=5 --json_out=FILE]

Greedy decoding with repetition penalty on English evaluation prompts. Per batch size: one warm-up
(reported as compile time for xlit), then the median of `--runs` timed runs (interleaved) of the whole generate call
(prefill included) for each side; tokens/s counts generated tokens (up to EOS). The decode phase alone is
reported too: (tokens - first tokens) / (generate time - time of a 1-token generate). The generated ids of the
two sides are asserted identical. Prints a table and writes JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "embedded", "Model directory or 'embedded' (SmolLM2-135M-Instruct).")
flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes to measure.")
flags.DEFINE_integer("max_new_tokens", 32, "New tokens per prompt.")
flags.DEFINE_float("repetition_penalty", 1.1, "HF repetition penalty.")
flags.DEFINE_integer("runs", 5, "Timed runs per side and batch size (median reported).")
flags.DEFINE_string(
    "prompts", "data/eval/alpacaeval_test_subset.en.jsonl", "Chat prompts, one list per line."
)
flags.DEFINE_string("json_out", None, "Write the results as JSON here.")


def hf_generate(
    model, prompts: list[list[int]], max_new: int, penalty: float, eos: set[int]
) -> list[list[int]]:
    import torch

    width = max(len(p) for p in prompts)
    pad = 0  # not EOS: HF's repetition penalty also sees the pad ids of left-padded rows
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            repetition_penalty=penalty,
            max_new_tokens=max_new,
            pad_token_id=pad,
            eos_token_id=sorted(eos),
            top_k=None,
            top_p=None,
            temperature=None,
        )
    rows = []
    for row in out[:, width:].tolist():
        cut = next((k for k, t in enumerate(row) if t in eos), None)
        rows.append(row if cut is None else row[: cut + 1])
    return rows


def flops_per_token(cfg, context: float) -> float:
    """Matmul FLOPs of one decode step per row: 2 x (layer weights + LM head) + attention over `context`."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = d * h * (cfg.num_heads * 2 + cfg.num_kv_heads * 2) + 3 * d * f
    attention = 4 * cfg.num_heads * h * context
    return float(cfg.num_layers * (2 * per_layer + attention) + 2 * d * cfg.vocab_size)


def matmul_peak_gflops(cfg, batch: int, repeats: int = 200) -> float:
    """GFLOP/s of XLA:CPU on this machine for the model's MLP matmul at this batch (fp32, jitted): the
    practical ceiling of a decode step made of such matmuls."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((batch, cfg.hidden_size), jnp.float32)
    w = jnp.ones((cfg.hidden_size, cfg.intermediate_size), jnp.float32) * 1e-3
    f = jax.jit(lambda x, w: jax.lax.fori_loop(0, repeats, lambda i, y: x + (y @ w)[:, : x.shape[1]], x))
    f(x, w).block_until_ready()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        f(x, w).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * batch * cfg.hidden_size * cfg.intermediate_size * repeats / statistics.median(times) / 1e9


def run(argv_unused: list[str]) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from infer.decode import DecodeParams
    from infer.engine import Engine, resolve_model_dir

    model_dir = resolve_model_dir(FLAGS.model)
    lines = Path(FLAGS.prompts).read_text(encoding="utf-8").splitlines()
    sizes = [int(b) for b in FLAGS.batch_sizes]
    engine = Engine.from_path(model_dir, max_batch=max(sizes))
    prompts = [engine.encode(json.loads(x)) for x in lines[: max(sizes)]]
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = set(engine.eos_ids)
    params = DecodeParams(max_new_tokens=FLAGS.max_new_tokens, repetition_penalty=FLAGS.repetition_penalty)
    rows = []
    for b in sizes:
        batch = prompts[:b]
        t = time.perf_counter()
        ours = engine.generate_ids(batch, params)  # warm-up: compiles this bucket
        compile_s = time.perf_counter() - t
        hf_generate(hf, batch, FLAGS.max_new_tokens, FLAGS.repetition_penalty, eos)  # warm-up
        ours_all, hf_all = [], []
        for _ in range(FLAGS.runs):  # interleaved, so background load hits both sides alike
            t = time.perf_counter()
            ours = engine.generate_ids(batch, params)
            ours_all.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = hf_generate(hf, batch, FLAGS.max_new_tokens, FLAGS.repetition_penalty, eos)
            hf_all.append(time.perf_counter() - t)
        ours_s, hf_s = statistics.median(ours_all), statistics.median(hf_all)
        # prefill alone (one new token), to report the decode phase separately
        one = DecodeParams(max_new_tokens=1, repetition_penalty=FLAGS.repetition_penalty)
        engine.generate_ids(batch, one)  # compiles the 1-token bucket
        ours_pre, hf_pre = [], []
        for _ in range(FLAGS.runs):
            t = time.perf_counter()
            engine.generate_ids(batch, one)
            ours_pre.append(time.perf_counter() - t)
            t = time.perf_counter()
            hf_generate(hf, batch, 1, FLAGS.repetition_penalty, eos)
            hf_pre.append(time.perf_counter() - t)
        ours_pre_s, hf_pre_s = statistics.median(ours_pre), statistics.median(hf_pre)
        ours_ids = [r.ids for r in ours]
        mismatch = [i for i, (a, r) in enumerate(zip(ours_ids, ref, strict=True)) if a != r]
        assert not mismatch, f"batch {b}: generated ids differ from transformers on rows {mismatch}"
        tokens = sum(len(r) for r in ours_ids)
        context = statistics.mean(len(p) for p in batch) + FLAGS.max_new_tokens / 2
        fpt = flops_per_token(engine.cfg, context)
        peak = matmul_peak_gflops(engine.cfg, b)
        xlit_dec = (tokens - b) / max(ours_s - ours_pre_s, 1e-9)
        hf_dec = (tokens - b) / max(hf_s - hf_pre_s, 1e-9)
        rows.append(
            {
                "batch": b,
                "new_tokens": tokens,
                "max_new_tokens": FLAGS.max_new_tokens,
                "prompt_tokens": [len(p) for p in batch],
                "xlit_s": ours_s,
                "xlit_tok_s": tokens / ours_s,
                "xlit_runs_s": ours_all,
                "xlit_first_call_s": compile_s,
                "hf_s": hf_s,
                "hf_tok_s": tokens / hf_s,
                "hf_runs_s": hf_all,
                "speedup": hf_s / ours_s,
                "xlit_prefill_s": ours_pre_s,
                "hf_prefill_s": hf_pre_s,
                "xlit_decode_tok_s": xlit_dec,
                "hf_decode_tok_s": hf_dec,
                "gflop_per_token": fpt / 1e9,
                "xlit_decode_gflops": xlit_dec * fpt / 1e9,
                "hf_decode_gflops": hf_dec * fpt / 1e9,
                "matmul_peak_gflops": peak,
                "decode_speedup": (hf_s - hf_pre_s) / max(ours_s - ours_pre_s, 1e-9),
                "identical_tokens": True,
            }
        )
    print(
        f"\ndecode benchmark: {model_dir.name}, greedy, repetition_penalty {FLAGS.repetition_penalty}, "
        f"max_new_tokens {FLAGS.max_new_tokens}, median of {FLAGS.runs} runs (prefill included)"
    )
    print(
        f"{'batch':>5} {'tokens':>6} {'xlit tok/s':>11} {'HF tok/s':>9} {'ratio':>6} "
        f"{'decode-only xlit/HF tok/s':>26} {'ratio':>6} {'xlit 1st call s':>16} "
        f"{'decode GFLOP/s xlit/HF':>23} {'matmul peak':>12}"
    )
    for r in rows:
        dec = f"{r['xlit_decode_tok_s']:.1f}/{r['hf_decode_tok_s']:.1f}"
        print(
            f"{r['batch']:>5} {r['new_tokens']:>6} {r['xlit_tok_s']:>11.1f} {r['hf_tok_s']:>9.1f} "
            f"{r['speedup']:>5.2f}x {dec:>26} {r['decode_speedup']:>5.2f}x {r['xlit_first_call_s']:>16.1f} "
            f"{r['xlit_decode_gflops']:>11.1f}/{r['hf_decode_gflops']:<11.1f} {r['matmul_peak_gflops']:>12.1f}"
        )
    report = {
        "model": str(model_dir),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
        "results": rows,
    }
    if FLAGS.json_out:
        Path(FLAGS.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(FLAGS.json_out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


def main() -> None:
    app.run(lambda argv: sys.exit(run(argv)))


if __name__ == "__main__":
    main()
