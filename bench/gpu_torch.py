"""The baseline for bench/gpu_mfu.py: the same shapes in Hugging Face transformers on PyTorch, one accelerator.

  python -m bench.gpu_torch --out=$OUT/gpu_torch.json [--models=1b --rows=4 --seq_len=2048 --steps=5]
  python -m bench.gpu_torch --smoke --out=/tmp/gpu_torch.json      # CPU dry run, tiny shapes

What a user would write instead of our trainer and decoder: `LlamaForCausalLM` (random init, SDPA attention)
with fp32 master weights, `torch.autocast(bfloat16)` and fused AdamW for the train step (full FT), and
`model.generate` (bf16 weights, greedy, repetition penalty 1.1, dynamic KV cache, exactly `--new_tokens`
new tokens) for decoding. No torch.compile: eager is what `Trainer`/`generate` give by default. The model
shapes and the FLOP accounting are bench/gpu_mfu.py's (`LlamaConfig.flops_per_token`), so MFU and tokens/s
compare one to one. Decode time excludes prefill (a 1-token generate is timed and subtracted).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "Tiny shapes on CPU, 1 timed step.")
flags.DEFINE_list("models", ["1b"], "Model shapes (bench/gpu_mfu.py's names): 1b, 7b_wide.")
flags.DEFINE_integer("wide_layers", 8, "Layers of the 7B-wide model.")
flags.DEFINE_integer("rows", 4, "Rows per step.")
flags.DEFINE_integer("seq_len", 2048, "Tokens per row.")
flags.DEFINE_integer("steps", 5, "Timed train steps (median reported).")
flags.DEFINE_list("decode_batches", ["64", "256"], "Decode batch sizes.")
flags.DEFINE_integer("prompt_len", 128, "Decode prompt length.")
flags.DEFINE_integer("new_tokens", 128, "Decode new tokens per row.")
flags.DEFINE_string("decode_model", "1b", "Model shape for the decode benchmark.")
flags.DEFINE_float("budget_s", 300.0, "Start no new case after this many seconds.")
flags.DEFINE_string("out", "gpu_torch.json", "JSON output path.")


def _shapes(name: str):
    from bench.gpu_common import model_shapes

    return model_shapes(name, smoke=FLAGS.smoke, wide_layers=FLAGS.wide_layers)


def _hf_model(cfg, dtype):
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    hf = HFConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_embeddings, attn_implementation="sdpa",
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(_device()):  # initialise on the card, not on the host and copy
        return LlamaForCausalLM(hf).to(dtype=dtype)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not FLAGS.smoke else "cpu"


def _sync() -> None:
    import torch

    if _device() == "cuda":
        torch.cuda.synchronize()


def _peak() -> float | None:
    import torch

    if _device() != "cuda":
        return None
    from train.metrics import PEAK_FLOPS

    name = torch.cuda.get_device_name().lower()
    return next((PEAK_FLOPS[k] for k in sorted(PEAK_FLOPS, key=len, reverse=True) if k in name), None)


def train_case(name: str) -> dict[str, Any]:
    import torch

    cfg = _shapes(name)
    rows, seq = (2, 64) if FLAGS.smoke else (FLAGS.rows, FLAGS.seq_len)
    model = _hf_model(cfg, torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=_device() == "cuda")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (rows, seq), generator=g).to(_device())
    amp = torch.autocast(_device(), dtype=torch.bfloat16, enabled=not FLAGS.smoke)

    def step() -> float:
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    t = time.perf_counter()
    step()
    _sync()
    first = time.perf_counter() - t
    times, loss = [], 0.0
    for _ in range(1 if FLAGS.smoke else FLAGS.steps):
        t = time.perf_counter()
        loss = step()
        _sync()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    tokens = rows * seq
    fpt = cfg.flops_per_token(seq)
    peak = _peak()
    res = {
        "model": name, "mode": "ft", "impl": "hf_torch_eager", "tokens": tokens, "step_s": step_s,
        "tok_s": tokens / step_s, "first_call_s": first, "model_tflops_s": fpt * tokens / step_s / 1e12,
        "mfu": fpt * tokens / step_s / peak if peak else None, "loss": loss, "runs_s": times,
        "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if _device() == "cuda" else None,
    }  # fmt: skip
    return res


def decode_case(batch: int) -> dict[str, Any]:
    import torch

    cfg = _shapes(FLAGS.decode_model)
    p_len, new = (16, 8) if FLAGS.smoke else (FLAGS.prompt_len, FLAGS.new_tokens)
    model = _hf_model(cfg, torch.float32 if FLAGS.smoke else torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.vocab_size, (batch, p_len), generator=g).to(_device())
    mask = torch.ones_like(ids)

    def gen(n: int) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                repetition_penalty=1.1, pad_token_id=0,
            )  # fmt: skip
        _sync()
        assert out.shape == (batch, p_len + n), out.shape
        return time.perf_counter() - t

    t = time.perf_counter()
    gen(new)
    first = time.perf_counter() - t
    runs = [(gen(1), gen(new)) for _ in range(1 if FLAGS.smoke else 3)]
    prefill = statistics.median(r[0] for r in runs)
    total = statistics.median(r[1] for r in runs)
    dec_s = max(total - prefill, 1e-9)
    return {
        "model": FLAGS.decode_model, "impl": "hf_torch_generate", "batch": batch, "prompt_len": p_len,
        "new_tokens": new, "prefill_s": prefill, "total_s": total, "decode_s": dec_s,
        "decode_tok_s": batch * (new - 1) / dec_s, "first_call_s": first,
    }  # fmt: skip


def run(argv_unused: list[str]) -> int:
    import torch
    import transformers

    from bench.gpu_common import run_cases

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if _device() == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "smoke": FLAGS.smoke,
    }  # fmt: skip
    # the first model's train step, then decoding, then the other models: a short budget drops the latter
    cases: list[tuple[str, Any]] = [("train", (m,)) for m in FLAGS.models[:1]]
    cases += [("decode", (int(b),)) for b in FLAGS.decode_batches]
    cases += [("train", (m,)) for m in FLAGS.models[1:]]

    def release() -> None:
        gc.collect()  # the case's model and optimizer state go before the next case allocates
        if _device() == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    return run_cases(
        cases,
        lambda kind, args: train_case(*args) if kind == "train" else decode_case(*args),
        report,
        FLAGS.out,
        FLAGS.budget_s,
        after_case=release,
    )


def main() -> None:
    app.run(lambda argv: sys.exit(run(argv)))


if __name__ == "__main__":
    main()
