"""Train-step throughput: xlit's jitted step (full FT and LoRA) vs transformers + PyTorch, same weights and batch.

  python -m bench.train_step [--models=smollm2,tiny --modes=ft,lora --rows=1 --seq_len=256 --runs=11
                              --tiny_rows=8 --json_out=bench/results/train_step.json --keep_freed_memory]

Ours is the trainer's real step (`train.state.build_state` + `jit_train_step`, optimizer from
`train.optim.make_optimizer`: AdamW β (0.9, 0.95), wd 0.1, global-norm clipping at 1.0, with the update
`optimizer.kernels=auto` picks, reported as `xlit_optimizer`, and the attention `model.attention=auto` picks,
reported as `xlit_attention`); the reference is `LlamaForCausalLM` loaded
from the same HF directory, stepped as transformers' `Trainer` does by default: `torch.optim.AdamW(fused=True)`
(Trainer's `adamw_torch_fused` on torch >= 2.8; same β, wd, eps, lr) after
`torch.nn.utils.clip_grad_norm_` at the same norm (Trainer's `max_grad_norm`), on the same token batch,
fp32 on both sides. LoRA on the torch side is a minimal wrapper around each targeted `nn.Linear` (rank 16, α 32, A random,
B zero: the first-step loss equals the base model's on both sides). Loss: mean cross-entropy over response
tokens (second half of every row). The process runs under the allocator setting the trainer applies on CPU
(train/host_memory.py; `--nokeep_freed_memory` to measure without it), both sides alike. torch uses `os.cpu_count()` intra-op threads; XLA:CPU runs each op on its
own Eigen pool, which is sized to the core count by default. One warm-up step per side (ours: compile + step);
then `--runs` interleaved timed steps; the median is reported.

Each case also reports the model FLOPs of a step (`step_flops`), both sides' GFLOP/s, and the fp32 matmul
ceiling measured in the same run (bench/ceiling.py: the model's MLP product at rows x seq_len rows, XLA and
torch, the higher of the two), so a ratio can be read against what the machine allows: a side at s% of the
ceiling can be beaten by at most 100/s.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from bench.ceiling import torch_matmul_gflops, xla_matmul_gflops

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "models", ["smollm2", "tiny"], "smollm2 (embedded SmolLM2-135M) and/or tiny (preset shapes)."
)
flags.DEFINE_list("modes", ["ft", "lora"], "Full fine-tuning and/or LoRA.")
flags.DEFINE_integer("rows", 1, "Rows per batch for smollm2.")
flags.DEFINE_integer("seq_len", 256, "Tokens per row.")
flags.DEFINE_integer("tiny_rows", 8, "Rows per batch for tiny.")
flags.DEFINE_integer("runs", 11, "Timed steps per side (median reported).")
flags.DEFINE_string("json_out", "bench/results/train_step.json", "Write the results as JSON here ('' = no).")
flags.DEFINE_bool(
    "keep_freed_memory",
    True,
    "glibc keeps freed memory, as the trainer sets it on CPU (train.keep_freed_memory, train/host_memory.py); "
    "process-wide, so both sides run under it.",
)

LORA_RANK, LORA_ALPHA = 16, 32.0
HF_TARGETS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def tiny_hf_dir(dst: Path) -> Path:
    """A random HF LLaMA with the shapes of models.config's `tiny` preset."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.config import preset

    c = preset("tiny")
    torch.manual_seed(0)
    hf_cfg = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_position_embeddings,
        rope_theta=c.rope_theta,
        rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(hf_cfg).save_pretrained(dst)
    return dst


def step_flops(cfg, tokens: int, seq_len: int, lora_params: int = 0) -> float:
    """Model FLOPs of one training step of `tokens` tokens in rows of `seq_len` (cfg: models.config.LlamaConfig).

    Full fine-tuning: `cfg.flops_per_token(seq_len)` (6 x matmul weights incl. the LM head, + attention, the
    trainer's MFU accounting). LoRA (`lora_params` > 0, the adapters' size): frozen weights need no weight
    gradient, so 4 x matmul weights (forward + input gradient) + the same attention + 6 x the adapters."""
    if not lora_params:
        return cfg.flops_per_token(seq_len) * tokens
    fpt = 4.0 * cfg.matmul_weights() + 6.0 * cfg.attention_units(seq_len) + 6.0 * lora_params
    return fpt * tokens


def make_batch(rows: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One micro-batch [1, rows, T] of random tokens, one example per row, loss on the second half."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(3, vocab, size=(rows, seq_len + 1), dtype=np.int32)
    weights = np.zeros((rows, seq_len), np.float32)
    weights[:, seq_len // 2 :] = 1.0
    batch = {
        "inputs": toks[:, :-1],
        "targets": toks[:, 1:],
        "weights": weights,
        "segment_ids": np.ones((rows, seq_len), np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy(),
    }
    return {k: v[None] for k, v in batch.items()}


class LoRALinear:
    """y = base(x) + (x·A)·B·α/R around a frozen nn.Linear (built lazily so torch is imported late)."""

    @staticmethod
    def wrap(base, rank: int, alpha: float):
        import torch
        from torch import nn

        class _LoRA(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.base = base
                self.a = nn.Parameter(torch.randn(base.in_features, rank) / base.in_features**0.5)
                self.b = nn.Parameter(torch.zeros(rank, base.out_features))
                self.scale = alpha / rank

            def forward(self, x):
                return self.base(x) + (x @ self.a) @ self.b * self.scale

        return _LoRA()


def hf_setup(model_dir: Path, lora: bool, lr: float, opt_cfg) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    if lora:
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.model.layers:
            for path in HF_TARGETS.values():
                parent_name, name = path.split(".")
                parent = getattr(layer, parent_name)
                setattr(parent, name, LoRALinear.wrap(getattr(parent, name), LORA_RANK, LORA_ALPHA))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(  # transformers' Trainer default on torch >= 2.8: optim="adamw_torch_fused"
        params,
        lr=lr,
        betas=(opt_cfg.b1, opt_cfg.b2),
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
        fused=True,
    )
    return model, opt


def hf_step(model, opt, tb: dict[str, Any], clip_norm: float) -> float:
    import torch

    logits = model(input_ids=tb["inputs"]).logits
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), tb["targets"].reshape(-1), reduction="none"
    )
    w = tb["weights"].reshape(-1)
    loss = (ce * w).sum() / w.sum()
    loss.backward()
    if clip_norm > 0:  # as Trainer does with max_grad_norm (default 1.0) and as our recipe does
        torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], clip_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def ours_setup(model_dir: Path, lora: bool, rows: int, seq_len: int):
    import jax

    from configs.smollm2 import get_config
    from models.sharding import make_mesh
    from train.optim import make_optimizer
    from train.state import build_state, jit_train_step

    cfg = get_config("" if lora else "ft")
    cfg.model.init_from = str(model_dir)
    cfg.model.dtype = "float32"
    cfg.data.seq_len, cfg.data.batch_tokens = seq_len, rows * seq_len
    cfg.train.grad_accum = 1
    cfg.optimizer.schedule = "constant"
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:1])
    tx, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx)
        step = jit_train_step(built, tx, schedule)
    return cfg, mesh, built, step


def bench_one(model_name: str, model_dir: Path, mode: str, rows: int, seq_len: int) -> dict[str, Any]:
    import jax
    import torch

    from train.state import put_batch

    lora = mode == "lora"
    cfg, mesh, built, step = ours_setup(model_dir, lora, rows, seq_len)
    mcfg = built.model_cfg
    np_batch = make_batch(rows, seq_len, built.model_cfg.vocab_size)
    tb = {
        "inputs": torch.from_numpy(np_batch["inputs"][0]).long(),
        "targets": torch.from_numpy(np_batch["targets"][0]).long(),
        "weights": torch.from_numpy(np_batch["weights"][0]),
    }
    model, opt = hf_setup(model_dir, lora, cfg.optimizer.lr, cfg.optimizer)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ours_n_train = sum(x.size for x in jax.tree.leaves(built.state["params"]))
    with jax.set_mesh(mesh):
        batch = put_batch(np_batch, mesh)
        state = built.state
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready((state, m))
        ours_first = time.perf_counter() - t
        ours_loss0 = float(m["loss"])
        t = time.perf_counter()
        hf_loss0 = hf_step(model, opt, tb, cfg.optimizer.clip_norm)
        hf_first = time.perf_counter() - t
        ours_all, hf_all = [], []
        for _ in range(FLAGS.runs):  # interleaved, so background load hits both sides alike
            t = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready((state, m))
            ours_all.append(time.perf_counter() - t)
            t = time.perf_counter()
            hf_step(model, opt, tb, cfg.optimizer.clip_norm)
            hf_all.append(time.perf_counter() - t)
    ours_s, hf_s = statistics.median(ours_all), statistics.median(hf_all)
    tokens = rows * seq_len
    flops = step_flops(mcfg, tokens, seq_len, ours_n_train if lora else 0)
    ceil_xla = xla_matmul_gflops(tokens, mcfg.hidden_size, mcfg.intermediate_size)
    ceil_torch = torch_matmul_gflops(tokens, mcfg.hidden_size, mcfg.intermediate_size)
    ceiling = max(ceil_xla, ceil_torch)
    rel = abs(ours_loss0 - hf_loss0) / abs(hf_loss0)
    assert rel < 1e-3, f"{model_name}/{mode}: first-step loss {ours_loss0} (xlit) vs {hf_loss0} (HF)"
    return {
        "model": model_name,
        "mode": mode,
        "rows": rows,
        "seq_len": seq_len,
        "tokens": tokens,
        "trainable_params": ours_n_train,
        "xlit_optimizer": built.optimizer_kernels,  # "native" (train/fused_adamw.py) or "xla" (optax)
        "xlit_attention": mcfg.attention_impl(),  # "auto" resolved: "native" (CPU kernels) or "einsum"
        "clip_norm": cfg.optimizer.clip_norm,
        "hf_optimizer": "torch.optim.AdamW(fused=True)",
        "hf_trainable_params": n_train,
        "xlit_step_s": ours_s,
        "xlit_tok_s": tokens / ours_s,
        "xlit_runs_s": ours_all,
        "xlit_first_call_s": ours_first,
        "xlit_compile_s": ours_first - ours_s,
        "hf_step_s": hf_s,
        "hf_tok_s": tokens / hf_s,
        "hf_runs_s": hf_all,
        "hf_first_call_s": hf_first,
        "ratio": hf_s / ours_s,
        "step_gflop": flops / 1e9,
        "xlit_gflops": flops / ours_s / 1e9,
        "hf_gflops": flops / hf_s / 1e9,
        "matmul_ceiling_gflops": ceiling,
        "matmul_ceiling_xla_gflops": ceil_xla,
        "matmul_ceiling_torch_gflops": ceil_torch,
        "xlit_share_of_ceiling": flops / ours_s / 1e9 / ceiling,
        "hf_share_of_ceiling": flops / hf_s / 1e9 / ceiling,
        "xlit_loss0": ours_loss0,
        "hf_loss0": hf_loss0,
        "loss_rel_diff": rel,
    }


def write_json(rows_out: list[dict[str, Any]], load_start: tuple[float, float, float]) -> None:
    import torch

    if not FLAGS.json_out:
        return
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),  # host allocator settings (docs/train.md)
        "keep_freed_memory": FLAGS.keep_freed_memory,  # train/host_memory.py, in process (both sides)
        "load_avg_start": load_start,
        "load_avg": os.getloadavg(),
        "results": rows_out,
    }
    Path(FLAGS.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.json_out).write_text(json.dumps(report, indent=2))


def run(argv_unused: list[str]) -> int:
    import torch

    from models.embedded import embedded_model_dir

    if FLAGS.keep_freed_memory:
        from train.host_memory import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    print(f"load average at the start: {load_start}", flush=True)
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"smollm2": lambda: embedded_model_dir(), "tiny": lambda: tiny_hf_dir(Path(tmp) / "tiny")}
        for name in FLAGS.models:
            model_dir = dirs[name]()
            rows = FLAGS.rows if name == "smollm2" else FLAGS.tiny_rows
            for mode in FLAGS.modes:
                r = bench_one(name, model_dir, mode, rows, FLAGS.seq_len)
                print(
                    f"{name}/{mode}: xlit {r['xlit_tok_s']:.0f} tok/s ({r['xlit_optimizer']} AdamW, "
                    f"{r['xlit_attention']} attention), HF {r['hf_tok_s']:.0f} tok/s",
                    flush=True,
                )
                rows_out.append(r)
                # after every case, so a cut-short run keeps what it measured
                write_json(rows_out, load_start)
    print(
        f"\ntrain-step benchmark: fp32, median of {FLAGS.runs} steps, {torch.get_num_threads()} torch threads"
    )
    print(
        f"{'model':>8} {'mode':>4} {'tokens':>6} {'xlit tok/s':>10} {'HF tok/s':>9} {'ratio':>6} "
        f"{'xlit compile s':>14} {'loss xlit':>10} {'loss HF':>10} {'GFLOP/s xlit/HF':>16} {'ceiling':>8} "
        f"{'share xlit/HF':>14}"
    )
    for r in rows_out:
        print(
            f"{r['model']:>8} {r['mode']:>4} {r['tokens']:>6} {r['xlit_tok_s']:>10.1f} {r['hf_tok_s']:>9.1f} "
            f"{r['ratio']:>5.2f}x {r['xlit_compile_s']:>14.1f} {r['xlit_loss0']:>10.5f} {r['hf_loss0']:>10.5f} "
            f"{r['xlit_gflops']:>7.1f}/{r['hf_gflops']:<8.1f} {r['matmul_ceiling_gflops']:>8.1f} "
            f"{r['xlit_share_of_ceiling']:>6.0%}/{r['hf_share_of_ceiling']:<6.0%}"
        )
    write_json(rows_out, load_start)
    return 0


def main() -> None:
    app.run(lambda argv: sys.exit(run(argv)))


if __name__ == "__main__":
    main()
