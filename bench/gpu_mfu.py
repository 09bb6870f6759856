"""bf16 train-step MFU (full FT and LoRA, chunked loss on/off, remat and its policy) and decode tokens/s on
one accelerator.

  python -m bench.gpu_mfu --out=$OUT/gpu_mfu.json [--models=1b,7b_wide --rows=4 --seq_len=2048 --steps=5
      --loss_chunk_tokens=0,2048 --remat=false --remat_policy=nothing_saveable --decode_batches=64,256]
  python -m bench.gpu_mfu --smoke --out=/tmp/gpu_mfu.json      # CPU dry run, tiny shapes

Random weights from `models.config.LlamaConfig` (no download): "1b" is LLaMA-shaped at ~1.1B parameters
(TinyLlama's shapes: width 2048, MLP 5632, 22 layers, 32 heads / 4 KV heads), "7b_wide" is LLaMA-2-7B's width
(4096, MLP 11008, 32 heads, MHA) with `--wide_layers` layers. The step is the trainer's own
(`train.state.build_state` + `jit_train_step`, AdamW from `train.optim`), bf16 compute on fp32 master weights,
with the config's `train.loss_chunk_tokens` (0 = full logits) and `model.remat` / `model.remat_policy`; the step
is lowered and compiled first, and XLA's own memory analysis of it (temporaries, arguments) is reported.
MFU = flops_per_token(seq_len) × tokens / step time / peak (train/metrics.py). Decode: `infer.decode.Decoder`
(greedy, repetition penalty 1.1, no EOS) at each `--decode_batches`, prefill excluded. Each case is guarded:
an error (e.g. out of memory) is recorded and the next case runs; the JSON is rewritten after every case, and
cases stop being started once `--budget_s` is spent.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "Tiny shapes, 1 timed step: a CPU dry run of every code path.")
flags.DEFINE_list("models", ["1b", "7b_wide"], "Model shapes: 1b, 7b_wide.")
flags.DEFINE_list("modes", ["ft", "lora"], "Training modes.")
flags.DEFINE_list("remat", ["false", "true"], "Activation checkpointing settings to measure.")
flags.DEFINE_list("remat_policy", ["nothing_saveable"], "model.remat_policy values measured with remat on.")
flags.DEFINE_list(
    "loss_chunk_tokens", ["0", "2048"], "train.loss_chunk_tokens values (0 = full logits; --smoke: 0, 48)."
)
flags.DEFINE_list(
    "attention",
    ["cudnn"],
    "Training attention (LlamaConfig.attention): einsum, xla, cudnn; --smoke runs cudnn as xla.",
)
flags.DEFINE_integer("wide_layers", 8, "Layers of the 7B-wide model.")
flags.DEFINE_integer("rows", 4, "Rows per micro-batch.")
flags.DEFINE_integer("seq_len", 2048, "Tokens per row.")
flags.DEFINE_integer("steps", 5, "Timed train steps (median reported).")
flags.DEFINE_list("decode_batches", ["64", "256"], "Decode batch sizes.")
flags.DEFINE_integer("prompt_len", 128, "Decode prompt length.")
flags.DEFINE_integer("new_tokens", 128, "Decode new tokens per row.")
flags.DEFINE_string("decode_model", "1b", "Model shape for the decode benchmark.")
flags.DEFINE_float("budget_s", 420.0, "Start no new case after this many seconds.")
flags.DEFINE_string("out", "gpu_mfu.json", "JSON output path.")


def shapes(name: str):
    from bench.gpu_common import model_shapes

    return model_shapes(name, smoke=FLAGS.smoke, wide_layers=FLAGS.wide_layers)


def train_case(
    name: str, mode: str, remat: bool, attention: str, chunk: int = 0, policy: str = "nothing_saveable"
) -> dict[str, Any]:
    import jax
    import numpy as np

    from configs.common import base
    from models.config import PRESETS
    from models.sharding import make_mesh
    from train.metrics import peak_flops
    from train.optim import make_optimizer
    from train.state import build_state, jit_train_step, put_batch

    key = f"bench_{name}"
    PRESETS[key] = shapes(name)
    rows, seq = (2, 64) if FLAGS.smoke else (FLAGS.rows, FLAGS.seq_len)
    cfg = base()
    cfg.model.preset = key
    cfg.model.dtype = "float32" if FLAGS.smoke else "bfloat16"
    cfg.model.remat = remat
    cfg.model.remat_policy = policy
    cfg.train.loss_chunk_tokens = chunk
    cfg.model.attention = "xla" if FLAGS.smoke and attention == "cudnn" else attention
    cfg.lora.enabled = mode == "lora"
    cfg.data.seq_len, cfg.data.batch_tokens = seq, rows * seq
    cfg.train.grad_accum = 1
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:1])
    tx, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
    mcfg = PRESETS[key]
    rng = np.random.default_rng(0)
    toks = rng.integers(3, mcfg.vocab_size, size=(1, rows, seq + 1), dtype="int32")
    np_batch = {
        "inputs": toks[..., :-1],
        "targets": toks[..., 1:],
        "weights": np.ones((1, rows, seq), "float32"),
        "segment_ids": np.ones((1, rows, seq), "int32"),
        "positions": np.broadcast_to(np.arange(seq, dtype="int32"), (1, rows, seq)),
    }
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx)
        batch = put_batch(np_batch, mesh)
        state = built.state
        t = time.perf_counter()
        step = jit_train_step(built, tx, schedule).lower(state, batch).compile()
        compile_s = time.perf_counter() - t
        mem = step.memory_analysis()
        state, m = step(state, batch)
        jax.block_until_ready((state, m))
        first = time.perf_counter() - t
        times = []
        for _ in range(1 if FLAGS.smoke else FLAGS.steps):
            t = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready((state, m))
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    tokens = rows * seq
    fpt = built.model_cfg.flops_per_token(seq)
    peak = peak_flops()
    return {
        "model": name,
        "mode": mode,
        "remat": remat,
        "remat_policy": policy if remat else None,
        "attention": attention,
        "loss_chunk_tokens": chunk,
        "params": built.model_cfg.num_params(),
        "tokens": tokens,
        "step_s": step_s,
        "tok_s": tokens / step_s,
        "first_call_s": first,
        "compile_s": compile_s,
        "temp_gib": _gib(mem, "temp_size_in_bytes"),
        "argument_gib": _gib(mem, "argument_size_in_bytes"),
        "model_tflops_s": fpt * tokens / step_s / 1e12,
        "mfu": fpt * tokens / step_s / peak if peak else None,
        "loss": float(m["loss"]),
        "runs_s": times,
    }


def _gib(mem: Any, field: str) -> float | None:
    """A field of XLA's compiled memory analysis in GiB (None where the backend gives none)."""
    value = getattr(mem, field, None) if mem is not None else None
    return value / 2**30 if value is not None else None


def decode_case(batch: int) -> dict[str, Any]:
    import jax
    import numpy as np
    from flax import nnx

    from infer.decode import DecodeParams, Decoder, RowParams
    from models.modules import Llama

    dtype = "float32" if FLAGS.smoke else "bfloat16"
    mcfg = shapes(FLAGS.decode_model).replace(dtype=dtype, param_dtype=dtype)
    p_len, new = (16, 8) if FLAGS.smoke else (FLAGS.prompt_len, FLAGS.new_tokens)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(mcfg, rngs=nnx.Rngs(0))))
    model = nnx.merge(graphdef, jax.jit(lambda: nnx.to_pure_dict(nnx.state(Llama(mcfg, rngs=nnx.Rngs(0)))))())
    dec = Decoder(model, eos_ids=[], pad_id=0)
    tokens = np.random.default_rng(0).integers(3, mcfg.vocab_size, size=(batch, p_len), dtype=np.int32)
    mask = np.ones_like(tokens)
    row = RowParams.build([DecodeParams(max_new_tokens=new, repetition_penalty=1.1)] * batch, batch)

    def once() -> tuple[float, float]:
        t = time.perf_counter()
        state = dec.prefill(tokens, mask, p_len + new, new)
        jax.block_until_ready(state)
        t1 = time.perf_counter()
        state = dec.decode(state, row, new)
        jax.block_until_ready(state)
        return t1 - t, time.perf_counter() - t1

    t = time.perf_counter()
    once()
    first = time.perf_counter() - t
    runs = [once() for _ in range(1 if FLAGS.smoke else 3)]
    dec_s = statistics.median(r[1] for r in runs)
    return {
        "model": FLAGS.decode_model,
        "batch": batch,
        "prompt_len": p_len,
        "new_tokens": new,
        "prefill_s": statistics.median(r[0] for r in runs),
        "decode_s": dec_s,
        "decode_tok_s": batch * new / dec_s,
        "first_call_s": first,
    }


def run(argv_unused: list[str]) -> int:
    import jax

    from bench.gpu_common import run_cases

    dev = jax.devices()[0]
    report: dict[str, Any] = {"device": dev.device_kind, "platform": dev.platform, "smoke": FLAGS.smoke}
    cases: list[tuple[str, Any]] = []
    chunks = [0, 48] if FLAGS.smoke else [int(c) for c in FLAGS.loss_chunk_tokens]
    for name in FLAGS.models:
        for mode in FLAGS.modes:
            for r in FLAGS.remat:
                remat = r.lower() == "true"
                for policy in FLAGS.remat_policy if remat else ["nothing_saveable"]:
                    for att in FLAGS.attention:
                        for chunk in chunks:
                            cases.append(("train", (name, mode, remat, att, chunk, policy)))
    cases += [("decode", (int(b),)) for b in FLAGS.decode_batches]

    def rank(case: tuple[str, Any]) -> int:
        """Most wanted first, so a short budget drops the extra variants rather than the FT MFU (both loss
        paths), LoRA with the chunked loss (LoRA vs FT) or the decode figures."""
        kind, args = case
        if kind == "decode":
            return 2
        return 0 if args[1] == "ft" else 1 if args[4] == max(chunks) else 3

    cases.sort(key=rank)  # stable: the flag order within a rank
    return run_cases(
        cases,
        lambda kind, args: train_case(*args) if kind == "train" else decode_case(*args),
        report,
        FLAGS.out,
        FLAGS.budget_s,
        after_case=jax.clear_caches,
    )


def main() -> None:
    app.run(lambda argv: sys.exit(run(argv)))


if __name__ == "__main__":
    main()
