"""LLaMA-2-13B / LIMA-En / FT — the paper's configuration on the small LIMA set.

Command:  python -m train.main --config=configs/llama2_13b_lima_en_ft.py --workdir=runs/llama2_13b_lima_en_ft
          (`:paper` for the paper's Appendix B protocol instead of the released one; `:runlocal` = CPU smoke run)
Base:     ~/.cache/xlit/models/llama-2-13b (HF directory; fetch it once while online, see docs/train.md). Data: shipped data/train/lima.en.jsonl (loss on every assistant turn).
Hardware: 2×A100-80GB (paper) with --config.model.param_dtype=bfloat16 --config.optimizer.mu_dtype=bfloat16
          (~130 GB of weights + Adam state over 2 chips); with the default fp32 master weights 13B full FT needs
          ~210 GB (e.g. 4×A100-80GB, --config.mesh.tensor=1 --config.mesh.fsdp=4, or 2×H200).
Time:     released protocol (82M tokens): ~7 h on 2×A100 at 40% MFU; paper protocol (16M tokens): ~1.5 h.
Result:   runs/llama2_13b_lima_en_ft/export/ (HF LLaMA directory, bf16); metrics in runs/llama2_13b_lima_en_ft/metrics.jsonl.
"""

from __future__ import annotations

from configs.common import llama_config


def get_config(arg: str | None = None):
    return llama_config("~/.cache/xlit/models/llama-2-13b", data="lima_en", lora=False, arg=arg)
