"""Decode throughput: xlit's jitted decode loop vs transformers `generate`, same prompts, same tokens.

  python -m bench.decode [--model=embedded --batch_sizes=1,16 --max_new_tokens=32 --runs=5 --json_out=FILE]

Greedy decoding with repetition penalty on English evaluation prompts. Per batch size: one warm-up
(reported as compile time for xlit), then the median of `--runs` timed runs (interleaved) of the whole generate call
(prefill included) for each side; tokens/s counts generated tokens (up to EOS). The decode phase alone is
reported too: (tokens - first tokens) / (generate time - time of a 1-token generate), each timed run paired
with a 1-token run right after it and the median of the differences taken. Where the prefill is most of a
call (batch 16 with 32 new tokens on 2 cores: ~4 of ~5 s), that difference is sensitive to drift, so
`decode_check` (JSON; also printed) flags a decode phase above the matmul ceiling measured in the same run,
or one under a quarter of xlit's call: rerun on a quiet machine, or raise --max_new_tokens. The generated
ids of the two sides are asserted identical. Prints a table and writes JSON.

Besides FLOP/s against the in-cache matmul ceiling, each side's decode phase is given in GB/s
(`bytes_per_step`: the weights plus the live keys and values, read once per step) against the memory
read bandwidth measured in the same run (`bench.ceiling.xla_stream_gbs`): at a few rows a step streams
all weights for little arithmetic, so that bandwidth is its limit.

The `continuous` case (`--continuous_prompts=64`, 0 skips it): English evaluation prompts of every task plus
modifier prompts (short / long / lists / ...), so answer lengths vary, `--continuous_max_new_tokens=256`,
decoded by xlit with static batches (each runs until its longest row ends) and with continuous batching
(`--continuous_batch` slots refilled as rows end); one warm-up call per mode (compiles), then
`--continuous_runs` interleaved timed calls; wall time and tokens/s per mode; ids asserted identical.
Smoke run: `--batch_sizes= --continuous_prompts=6 --continuous_max_new_tokens=8 --continuous_batch=3`.
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

from bench.ceiling import xla_matmul_gflops, xla_stream_gbs
from infer.decode import DecodeKernels

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
flags.DEFINE_enum("batching", "static", ["static", "continuous"], "xlit batching in the transformers cases.")
flags.DEFINE_integer("continuous_prompts", 64, "Prompts of the static-vs-continuous case (0: skip it).")
flags.DEFINE_integer("continuous_max_new_tokens", 256, "New tokens per prompt in the continuous case.")
flags.DEFINE_integer("continuous_batch", 16, "Rows per static batch = decode slots, continuous case.")
flags.DEFINE_integer("continuous_runs", 1, "Timed runs per mode in the continuous case (median reported).")
flags.DEFINE_enum_class(
    "kernels", DecodeKernels.AUTO, DecodeKernels, "xlit's decode kernels (auto: native where they apply)."
)


def decode_check(xlit_gflops: float, hf_gflops: float, ceiling_gflops: float, decode_share: float) -> str:
    """Why a decode-only figure cannot be trusted, or '' (see the module docstring)."""
    why = []
    for side, g in (("xlit's", xlit_gflops), ("transformers'", hf_gflops)):
        if g > ceiling_gflops:
            why.append(
                f"{side} decode phase at {g:.0f} GFLOP/s exceeds the {ceiling_gflops:.0f} measured ceiling"
            )
    if decode_share < 0.25:
        why.append(f"the decode phase is only {decode_share:.0%} of xlit's call")
    if not why:
        return ""
    return (
        "; ".join(why) + ": the decode-only figures are not reliable, rerun quiet or raise --max_new_tokens"
    )


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
    return 2.0 * cfg.matmul_weights() + 2.0 * cfg.attention_units(context)


def bytes_per_step(cfg, batch: int, context: float) -> float:
    """Bytes a decode step must read at least: every matmul weight once (the tied embedding in full, as the LM
    head) and each row's live keys and values (`context` entries; padding and unused cache not counted)."""
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * context * batch
    return cfg.weight_dtype.itemsize * cfg.matmul_weights() + cfg.compute_dtype.itemsize * kv


def matmul_peak_gflops(cfg, batch: int) -> float:
    """GFLOP/s of XLA:CPU on this machine for the model's MLP matmul at this batch (fp32, jitted), its 3.5 MB
    weight staying in cache: an arithmetic ceiling. A decode step streams every weight from memory, which
    `bytes_per_step` against `xla_stream_gbs` accounts for."""
    return xla_matmul_gflops(batch, cfg.hidden_size, cfg.intermediate_size, repeats=200)


def hf_cases(engine, model_dir: Path, sizes: list[int]) -> list[dict]:
    """xlit vs transformers generate at each batch size (the table above the continuous case)."""
    from transformers import AutoModelForCausalLM

    from infer.decode import DecodeParams

    lines = Path(FLAGS.prompts).read_text(encoding="utf-8").splitlines()
    prompts = [engine.encode(json.loads(x)) for x in lines[: max(sizes)]]
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = set(engine.eos_ids)
    params = DecodeParams(max_new_tokens=FLAGS.max_new_tokens, repetition_penalty=FLAGS.repetition_penalty)
    rows = []
    for b in sizes:
        batch = prompts[:b]
        t = time.perf_counter()
        ours = engine.generate_ids(batch, params, batching=FLAGS.batching)  # warm-up: compiles
        compile_s = time.perf_counter() - t
        hf_generate(hf, batch, FLAGS.max_new_tokens, FLAGS.repetition_penalty, eos)  # warm-up
        one = DecodeParams(max_new_tokens=1, repetition_penalty=FLAGS.repetition_penalty)
        engine.generate_ids(batch, one, batching=FLAGS.batching)  # compiles the 1-token bucket
        hf_generate(hf, batch, 1, FLAGS.repetition_penalty, eos)
        ours_all, hf_all, ours_pre, hf_pre = [], [], [], []
        for _ in range(FLAGS.runs):
            # interleaved, so background load hits both sides alike; each whole call next to its 1-token
            # call (prefill alone), so the decode phase is the difference of two timings taken together
            t = time.perf_counter()
            ours = engine.generate_ids(batch, params, batching=FLAGS.batching)
            ours_all.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = hf_generate(hf, batch, FLAGS.max_new_tokens, FLAGS.repetition_penalty, eos)
            hf_all.append(time.perf_counter() - t)
            t = time.perf_counter()
            engine.generate_ids(batch, one, batching=FLAGS.batching)
            ours_pre.append(time.perf_counter() - t)
            t = time.perf_counter()
            hf_generate(hf, batch, 1, FLAGS.repetition_penalty, eos)
            hf_pre.append(time.perf_counter() - t)
        ours_s, hf_s = statistics.median(ours_all), statistics.median(hf_all)
        ours_pre_s, hf_pre_s = statistics.median(ours_pre), statistics.median(hf_pre)
        ours_dec_s = statistics.median(a - p for a, p in zip(ours_all, ours_pre, strict=True))
        hf_dec_s = statistics.median(a - p for a, p in zip(hf_all, hf_pre, strict=True))
        ours_ids = [r.ids for r in ours]
        mismatch = [i for i, (a, r) in enumerate(zip(ours_ids, ref, strict=True)) if a != r]
        assert not mismatch, f"batch {b}: generated ids differ from transformers on rows {mismatch}"
        tokens = sum(len(r) for r in ours_ids)
        context = statistics.mean(len(p) for p in batch) + FLAGS.max_new_tokens / 2
        fpt = flops_per_token(engine.cfg, context)
        peak = matmul_peak_gflops(engine.cfg, b)
        # measured per case, next to its timed runs: this VM's memory bandwidth drifts within minutes
        stream = xla_stream_gbs()
        step_bytes = bytes_per_step(engine.cfg, b, context)
        xlit_dec = (tokens - b) / max(ours_dec_s, 1e-9)
        hf_dec = (tokens - b) / max(hf_dec_s, 1e-9)
        check = decode_check(xlit_dec * fpt / 1e9, hf_dec * fpt / 1e9, peak, ours_dec_s / ours_s)
        if check:
            print(f"batch {b}: {check}", file=sys.stderr)
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
                "stream_gbs": stream,
                "bytes_per_step": step_bytes,
                "xlit_decode_gbs": xlit_dec / b * step_bytes / 1e9,
                "hf_decode_gbs": hf_dec / b * step_bytes / 1e9,
                "xlit_decode_s": ours_dec_s,
                "hf_decode_s": hf_dec_s,
                "decode_speedup": hf_dec_s / max(ours_dec_s, 1e-9),
                "decode_check": check,
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
        f"{'decode GFLOP/s xlit/HF':>23} {'matmul peak':>12} {'decode GB/s xlit/HF':>20} {'stream GB/s':>12}"
    )
    for r in rows:
        dec = f"{r['xlit_decode_tok_s']:.1f}/{r['hf_decode_tok_s']:.1f}"
        print(
            f"{r['batch']:>5} {r['new_tokens']:>6} {r['xlit_tok_s']:>11.1f} {r['hf_tok_s']:>9.1f} "
            f"{r['speedup']:>5.2f}x {dec:>26} {r['decode_speedup']:>5.2f}x {r['xlit_first_call_s']:>16.1f} "
            f"{r['xlit_decode_gflops']:>11.1f}/{r['hf_decode_gflops']:<11.1f} {r['matmul_peak_gflops']:>12.1f} "
            f"{r['xlit_decode_gbs']:>9.1f}/{r['hf_decode_gbs']:<10.1f} {r['stream_gbs']:>12.1f}"
        )
    return rows


def eval_mix(n: int) -> list[list[dict[str, str]]]:
    """n English prompts: half evaluation instructions spread over the 25 tasks, half modifier
    instructions spread over the modifier types (short, long, lists of k items, ...)."""
    from evalsuite.data import load_eval, load_modifiers

    evals, mods = load_eval("en"), load_modifiers("en")
    k_eval = n - n // 2
    pick = [evals[i * len(evals) // k_eval] for i in range(k_eval)]
    pick += [mods[i * len(mods) // (n // 2)] for i in range(n // 2)] if n // 2 else []
    return [r.messages for r in pick]


def continuous_case(engine) -> dict:
    """Static batches vs continuous batching on the same mixed-length workload (xlit only)."""
    from infer.decode import DecodeParams

    eng = engine.derive(max_batch=FLAGS.continuous_batch)
    prompts = [eng.encode(m) for m in eval_mix(FLAGS.continuous_prompts)]
    params = DecodeParams(
        max_new_tokens=FLAGS.continuous_max_new_tokens, repetition_penalty=FLAGS.repetition_penalty
    )
    modes = ("static", "continuous")
    first, times, ids = {}, {m: [] for m in modes}, {}
    for m in modes:  # warm-up: compiles
        t = time.perf_counter()
        ids[m] = [r.ids for r in eng.generate_ids(prompts, params, batching=m)]
        first[m] = time.perf_counter() - t
    for _ in range(FLAGS.continuous_runs):  # interleaved, so background load hits both alike
        for m in modes:
            t = time.perf_counter()
            got = [r.ids for r in eng.generate_ids(prompts, params, batching=m)]
            times[m].append(time.perf_counter() - t)
            assert got == ids[m], f"{m}: ids differ between runs"
    mismatch = [i for i, (a, b) in enumerate(zip(ids["static"], ids["continuous"], strict=True)) if a != b]
    assert not mismatch, f"continuous batching changed the generated ids of prompts {mismatch}"
    lengths = [len(x) for x in ids["static"]]
    tokens = sum(lengths)
    # row-steps a static batch spends (every row of a batch runs until its longest row ends)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[i : i + eng.max_batch] for i in range(0, len(order), eng.max_batch)]
    static_row_steps = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    out = {
        "prompts": len(prompts),
        "slots": eng.max_batch,
        "max_new_tokens": params.max_new_tokens,
        "new_tokens": tokens,
        "answer_tokens_min_median_max": [min(lengths), statistics.median(lengths), max(lengths)],
        "prompt_tokens_min_median_max": [
            min(map(len, prompts)),
            statistics.median(map(len, prompts)),
            max(map(len, prompts)),
        ],
        "static_row_steps_used": tokens / max(static_row_steps, 1),
        "identical_tokens": True,
    }
    for m in modes:
        wall = statistics.median(times[m]) if times[m] else first[m]
        out[m] = {"wall_s": wall, "tok_s": tokens / wall, "runs_s": times[m], "first_call_s": first[m]}
    out["continuous_speedup"] = out["static"]["wall_s"] / out["continuous"]["wall_s"]
    print(
        f"\ncontinuous batching: {len(prompts)} prompts (evaluation + modifiers), {eng.max_batch} slots, "
        f"max_new_tokens {params.max_new_tokens}, {tokens} tokens (answers {min(lengths)}..{max(lengths)}; "
        f"static batches use {out['static_row_steps_used']:.0%} of their row-steps)"
    )
    print(f"{'mode':>10} {'wall s':>8} {'tok/s':>8} {'first call s':>13}")
    for m in modes:
        r = out[m]
        print(f"{m:>10} {r['wall_s']:>8.1f} {r['tok_s']:>8.1f} {r['first_call_s']:>13.1f}")
    print(f"continuous / static tokens/s: {out['continuous_speedup']:.2f}x (ids identical)")
    return out


def run(argv_unused: list[str]) -> int:
    import torch

    from infer.engine import Engine, resolve_model_dir

    model_dir = resolve_model_dir(FLAGS.model)
    sizes = [int(b) for b in FLAGS.batch_sizes]
    engine = Engine.from_path(
        model_dir, max_batch=max(sizes + [FLAGS.continuous_batch]), kernels=FLAGS.kernels
    )
    print(f"xlit decode kernels: {engine.decoder.kernels.value}", flush=True)
    rows = hf_cases(engine, model_dir, sizes) if sizes else []
    continuous = continuous_case(engine) if FLAGS.continuous_prompts else None
    report = {
        "model": str(model_dir),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
        "xlit_kernels": engine.decoder.kernels.value,
        "results": rows,
        "continuous": continuous,
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
