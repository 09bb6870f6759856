"""SmolLM2-135M-Instruct (embedded) instruction-tuned with LoRA on the shipped Dolly subset — the CPU default.

Command:  python -m train.main --config=configs/smollm2.py --workdir=runs/smollm2
Variants: `:ft` (full fine-tuning, lr 1e-5), `:lima` (shipped LIMA instead of Dolly), `:runlocal` (tiny random
          model, 2 steps), `:paper` (Appendix B schedule); comma-separated, e.g. `:ft,lima`.
Hardware: 2 CPU cores, ~2 GB RAM. Time: ~2 minutes (measured 2m09s wall: ~50 s start-up and compilation,
          then ~6 s/step = 0.16 steps/s, ~60 non-padding tokens/s on a shared 2-core machine).
Validation: at steps 6 and 12 (en/fr/pt/ru, 4 instructions each, 32 tokens; ~20 s each, the first ~40 s with
          compilation): `"validation"` lines in metrics.jsonl (train/validate.py).
Result:   runs/smollm2/export/ (HF directory, LoRA merged; transformers and infer/ load it). The per-step
          loss (runs/smollm2/metrics.jsonl) is 1.7-3.5 and noisy: each step sees different examples;
          tests/test_train_smollm2.py checks that the loss on fixed batches falls.
Protocol as the anchor's LoRA variant (Adam β (0.9, 0.95), wd 0.1, rank 16, lr 1e-4 linear to 1e-5,
response-only loss, gradient accumulation), shrunk for a CPU: 12 steps of 2 micro-batches × 256 tokens,
fp32 compute (bf16 matmuls are slower than fp32 on CPUs).
"""

from __future__ import annotations

from configs.common import LORA_LR_GRID, SHIPPED_DOLLY, SHIPPED_LIMA, apply_args, base


def get_config(arg: str | None = None):
    names = [a for a in (arg or "").split(",") if a]
    c = base()
    c.model.init_from = "embedded"
    c.model.dtype = "float32"
    c.data.paths = (SHIPPED_DOLLY,)
    if "lima" in names:
        c.data.format, c.data.paths = "lima", (SHIPPED_LIMA,)
    c.data.seq_len = 256
    c.data.batch_tokens = 256
    c.train.grad_accum = 2
    c.train.steps = 12
    # the cross-entropy 64 tokens at a time, skipping chunks without response tokens (train/step.py
    # chunked_nll; 26% of Dolly's 64-token chunks): same loss up to float rounding, less LM-head work
    c.train.loss_chunk_tokens = 64
    c.checkpoint.save_every = 6
    # validation at steps 6 and 12: 4 items × 4 languages, 32 tokens (~20 s each on 2 cores, docs/train.md)
    c.train.validate_every, c.train.validate_items, c.train.validate_max_new_tokens = 6, 4, 32
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    if "ft" not in names:
        c.lora.enabled = True
        c.optimizer.lr, c.optimizer.min_lr = 1e-4, 1e-5
        c.lr_grid = LORA_LR_GRID
    return apply_args(c, ",".join(n for n in names if n not in ("ft", "lima")))
