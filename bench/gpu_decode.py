"""bench/decode.py with transformers on the same accelerator as JAX (bench/gpu.sh's decode comparison).

  python -m bench.gpu_decode [bench.decode's flags, e.g. --batch_sizes=64,256 --json_out=F]

bench/decode.py builds its transformers model and input tensors with torch's defaults, i.e. on the CPU. Here
torch's default device is set to the GPU first (when there is one), which transformers' `from_pretrained`
and `torch.tensor` follow, so both sides of its comparison run on the card; then bench.decode runs with the
given flags, unchanged (its own checks included: the generated ids of both sides must be identical).
"""

from __future__ import annotations

import runpy


def main() -> None:
    import torch

    if torch.cuda.is_available():
        torch.set_default_device("cuda")
    print(f"bench.gpu_decode: torch default device {torch.get_default_device()}", flush=True)
    # run as a program (its absl flags are defined when it runs, not imported into this module)
    runpy.run_module("bench.decode", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
