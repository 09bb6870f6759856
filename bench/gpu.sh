#!/usr/bin/env bash
# GPU benchmark for a lent H100/H200 (device tool): bf16 train-step MFU (1B and 7B-wide, FT and LoRA,
# with and without remat) and decode tokens/s at batch 1 and 64. Writes $OUT/gpu_mfu.json (+ env.txt, log).
#
#   bash bench/gpu.sh            # on the device, from the repository root; fits in ~8 minutes
#   bash bench/gpu.sh --smoke    # CPU dry run here: tiny shapes, the project's .venv, no install
#
# It creates a fresh venv with jax[cuda12] (PyPI) plus the project's requirements unless $XLIT_GPU_PY points
# at a Python that already has them. Python part: bench/gpu_mfu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/xlit_gpu_out}"
mkdir -p "$OUT"
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1

if [[ $SMOKE == 1 ]]; then
  PY="${XLIT_GPU_PY:-.venv/bin/python}"
  exec "$PY" -m bench.gpu_mfu --smoke --budget_s=1e9 --out="$OUT/gpu_mfu.json"
fi

PY="${XLIT_GPU_PY:-}"
if [[ -z "$PY" ]]; then
  VENV=/tmp/xlit_gpu_venv
  if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV" || { python3 -m pip install -q virtualenv && python3 -m virtualenv -q "$VENV"; }
    "$VENV/bin/pip" install -q --upgrade pip
    # versions from requirements.lock; only what train/, infer/decode.py and models/ import (run from the repo root)
    "$VENV/bin/pip" install -q "jax[cuda12]==0.10.2" flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.11.40 \
      ml-collections==1.1.0 absl-py==2.5.1 numpy==2.4.6 safetensors==0.7.0 tensorboardx==2.6.5 2>&1 | tail -5
  fi
  PY=$VENV/bin/python
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} | tee "$OUT/env.txt"

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
# ~8 minutes in all: the install takes 1-2, so no case starts after 5 minutes of benchmarking (hard stop 6.3).
timeout 380 "$PY" -m bench.gpu_mfu --budget_s=300 --out="$OUT/gpu_mfu.json" 2>&1 | tee "$OUT/gpu_mfu.log"
