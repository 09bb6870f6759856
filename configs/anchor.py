"""The anchor configuration, LLaMA-2-13B / Dolly-En / FT (alias of configs/llama2_13b_dolly_en_ft.py).

Command:  python -m train.main --config=configs/anchor.py --workdir=runs/anchor
Hardware, time and result: see configs/llama2_13b_dolly_en_ft.py.
"""

from configs.llama2_13b_dolly_en_ft import get_config  # noqa: F401
