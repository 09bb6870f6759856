#!/usr/bin/env bash
# GPU benchmark for one H100/H200 (e.g. the device tool's machine): bf16 train-step MFU (1B and 7B-wide, FT and
# LoRA) and decode tokens/s at batch 1 and 64 with our JAX code (bench/gpu_mfu.py), then the same shapes in
# Hugging Face transformers on PyTorch (bench/gpu_torch.py), side by side. Writes $OUT/gpu_mfu.json,
# $OUT/gpu_torch.json, env.txt and the logs, then prints the ratios (bench/gpu_compare.py).
#
#   bash bench/gpu.sh            # on the GPU machine, from the repository root; ~7 minutes
#   bash bench/gpu.sh --smoke    # CPU dry run here: tiny shapes, the project's .venv
#
# Python: $XLIT_GPU_PY, else `python3`, which must already hold a CUDA jax, torch and transformers (the device
# image does; elsewhere `pip install "jax[cuda12]" torch transformers` first). Wheels found in .whl/ (e.g. our
# pinned flax/optax/ml-collections, fetched here with `pip download`, for a machine with no index) are
# installed into /tmp/xlit_site first and put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/xlit_gpu_out}"
mkdir -p "$OUT"

if [[ "${1:-}" == "--smoke" ]]; then
  PY="${XLIT_GPU_PY:-.venv/bin/python}"
  "$PY" -m bench.gpu_mfu --smoke --budget_s=1e9 --out="$OUT/gpu_mfu.json" >"$OUT/gpu_mfu.log" 2>&1 || exit 1
  "$PY" -m bench.gpu_torch --smoke --budget_s=1e9 --out="$OUT/gpu_torch.json" >"$OUT/gpu_torch.log" 2>&1 || exit 1
  exec "$PY" -m bench.gpu_compare "$OUT/gpu_mfu.json" "$OUT/gpu_torch.json"
fi

PY="${XLIT_GPU_PY:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  rm -rf /tmp/xlit_site && "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/xlit_site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/xlit_site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" -c "import jax, flax, optax, torch, transformers as t; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', t.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

# JAX first (its allocator takes 92% of the card), then PyTorch in a fresh process. Each part has its own
# budget (no case starts after it) and a hard stop, so one failing part still leaves the other's figures.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true" \
  timeout "${XLIT_JAX_STOP_S:-270}" "$PY" -m bench.gpu_mfu --budget_s="${XLIT_JAX_BUDGET_S:-200}" --remat=false \
  --out="$OUT/gpu_mfu.json" 2>&1 | tee "$OUT/gpu_mfu.log" | grep -v "^ "
timeout "${XLIT_TORCH_STOP_S:-150}" "$PY" -m bench.gpu_torch --budget_s="${XLIT_TORCH_BUDGET_S:-100}" --models=1b,7b_wide \
  --out="$OUT/gpu_torch.json" 2>&1 | tee "$OUT/gpu_torch.log" | grep -v "^ "
"$PY" -m bench.gpu_compare "$OUT/gpu_mfu.json" "$OUT/gpu_torch.json" | tee "$OUT/compare.txt"
