"""Tower-7B / Dolly-DT / FT — the paper's configuration on the multilingual base and multilingual data.

Command:  python -m train.main --config=configs/tower7b_dolly_dt_ft.py --workdir=runs/tower7b_dolly_dt_ft
          (`:paper` for the paper's Appendix B protocol instead of the released one; `:runlocal` = CPU smoke run)
Base:     ~/.cache/xlit/models/towerbase-7b (HF directory; fetch it once while online, see docs/train.md). Data: Dolly-15k en + NLLB fr/pt/ru (configs.common.DOLLY_DT).
Hardware: 2×A100-80GB or 1×H200 with fp32 master weights (~115 GB over the chips: --config.mesh.tensor=1 on one chip);
          1×H100-80GB with --config.model.param_dtype=bfloat16 --config.optimizer.mu_dtype=bfloat16 --config.mesh.tensor=1.
Time:     released protocol: ~4 h on 2×A100 at 40% MFU (~2.5 h on one H200); paper protocol: ~50 min on 2×A100.
Result:   runs/tower7b_dolly_dt_ft/export/ (HF LLaMA directory, bf16); metrics in runs/tower7b_dolly_dt_ft/metrics.jsonl.
"""

from __future__ import annotations

from configs.common import llama_config


def get_config(arg: str | None = None):
    return llama_config("~/.cache/xlit/models/towerbase-7b", data="dolly_dt", lora=False, arg=arg)
