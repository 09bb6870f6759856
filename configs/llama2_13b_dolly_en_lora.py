"""LLaMA-2-13B / Dolly-En / LoRA — the paper's configuration with LoRA (rank 16, α 8, lr 1e-4, 4 accumulated batches as released).

Command:  python -m train.main --config=configs/llama2_13b_dolly_en_lora.py --workdir=runs/llama2_13b_dolly_en_lora
          (`:paper` for the paper's Appendix B protocol instead of the released one; `:runlocal` = CPU smoke run)
Base:     ~/.cache/xlit/models/llama-2-13b (HF directory; fetch it once while online, see docs/train.md). Data: Dolly-15k English (configs.common.DOLLY_EN).
Hardware: 1×A100-80GB, 1×H100 or 1×H200 (bf16 compute on the fp32 base, 52 GB; adapters + Adam < 1 GB);
          --config.model.param_dtype=bfloat16 halves the frozen base to 26 GB.
Time:     released protocol (33M tokens): ~2 h on one H100; paper protocol (16M tokens): ~1 h.
Result:   runs/llama2_13b_dolly_en_lora/export/ (HF LLaMA directory, bf16); metrics in runs/llama2_13b_dolly_en_lora/metrics.jsonl.
"""

from __future__ import annotations

from configs.common import llama_config


def get_config(arg: str | None = None):
    return llama_config("~/.cache/xlit/models/llama-2-13b", data="dolly_en", lora=True, arg=arg)
