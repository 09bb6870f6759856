#!/usr/bin/env bash
# GPU benchmark for one H100/H200 (issue 15 item 5), one call of under 8 minutes:
#   1. ours (bench/gpu_mfu.py): the trainer's 1B full-FT step (bf16 compute, fp32 masters, 4 × 2048 tokens) with
#      the full-logits loss and with the chunked loss (train.loss_chunk_tokens), LoRA at the same settings
#      (LoRA vs full FT tokens/s), and decode tokens/s of the 1B shapes at batch 64 and 256 (random weights,
#      128 + 128 tokens, static batch);
#   2. HF transformers eager (bench/gpu_torch.py): the same 1B step and the same decode shapes with `generate`;
#   3. bench/decode.py (SmolLM2 — on the lent machine its shapes with random weights, see below — real prompts,
#      ids asserted identical to HF `generate`) at batch 64 and 256 with transformers on the same card
#      (bench/gpu_decode.py), once per `--batching` value when the flag exists;
#   4. bench/gpu_compare.py: $OUT/gpu.json (date, card from nvidia-smi, versions, every figure; also copied to
#      bench/results/gpu.json) and a markdown table for bench/README.md on stdout.
#
#   bash bench/gpu.sh            # on the GPU machine, from anywhere; ~7 minutes at most (hard stops below)
#   bash bench/gpu.sh --smoke    # CPU dry run of every code path with tiny shapes and the project's .venv
#
# Python: $XLIT_GPU_PY, else `python3`, which must already hold a CUDA jax, torch and transformers (the device
# image does; elsewhere `pip install "jax[cuda12]" torch transformers` first). Wheels found in .whl/ (our pins
# the image lacks; `make gpu-prep` fetches them, for a machine with no index) are installed into
# /tmp/xlit_site first and put on PYTHONPATH. On the lent machine: `make gpu-prep` here, then one device call
# carrying .whl and .gpu_model with `bash bench/gpu.sh` (bench/README.md, "Running it"). Each part has a budget
# (no case starts after it) and a hard stop (`timeout`), so one failing or slow part still leaves the others'
# figures; all are overridable:
# XLIT_JAX_BUDGET_S/XLIT_JAX_STOP_S (150/190), XLIT_TORCH_BUDGET_S/XLIT_TORCH_STOP_S (60/90),
# XLIT_DECODE_STOP_S (75 per bench/decode.py run), XLIT_MODEL_STOP_S (45, the random-weight model below);
# XLIT_LOSS_CHUNK (2048: the chunked-loss setting measured).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/xlit_gpu_out}"
mkdir -p "$OUT"
T0=$SECONDS
FAILED=0
CHUNK="${XLIT_LOSS_CHUNK:-2048}"

if [[ "${1:-}" == "--smoke" ]]; then
  SMOKE=1
  PY="${XLIT_GPU_PY:-.venv/bin/python}"
  JAX_BUDGET=1e9 JAX_STOP=600 TORCH_BUDGET=1e9 TORCH_STOP=600 DECODE_STOP=600 MODEL_STOP=600
  MFU_ARGS=(--smoke --models=1b --modes=ft,lora --remat=false)
  TORCH_ARGS=(--smoke --models=1b)
  DECODE_ARGS=(--batch_sizes=2,3 --max_new_tokens=4 --runs=1 --continuous_prompts=4 --continuous_batch=2
    --continuous_max_new_tokens=8)
else
  SMOKE=0
  PY="${XLIT_GPU_PY:-python3}"
  JAX_BUDGET="${XLIT_JAX_BUDGET_S:-150}" JAX_STOP="${XLIT_JAX_STOP_S:-190}"
  TORCH_BUDGET="${XLIT_TORCH_BUDGET_S:-60}" TORCH_STOP="${XLIT_TORCH_STOP_S:-90}"
  DECODE_STOP="${XLIT_DECODE_STOP_S:-75}" MODEL_STOP="${XLIT_MODEL_STOP_S:-45}"
  MFU_ARGS=(--models=1b --modes=ft,lora --remat=false --loss_chunk_tokens="0,$CHUNK" --decode_batches=64,256)
  TORCH_ARGS=(--models=1b --decode_batches=64,256)
  DECODE_ARGS=(--batch_sizes=64,256 --max_new_tokens=128 --runs=2 --continuous_prompts=128 --continuous_batch=64
    --continuous_max_new_tokens=128)
  if compgen -G ".whl/*.whl" >/dev/null; then
    rm -rf /tmp/xlit_site && "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/xlit_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/xlit_site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import jax, flax, optax, torch, transformers as t; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', t.__version__, jax.devices())"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# part NAME STOP_S COMMAND...: runs with a hard stop, log in $OUT/NAME.log, the per-case lines on stdout
part() {
  local name=$1 stop=$2
  shift 2
  timeout "$stop" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  grep -E "^(train|decode) \(" "$OUT/$name.log"
  echo "== $name: exit $rc, $((SECONDS - T0)) s since start"
  [[ $rc == 0 ]] || FAILED=1
}

# JAX first (its allocator takes 92% of the card), then PyTorch in a fresh process.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true" \
  part gpu_mfu "$JAX_STOP" "$PY" -m bench.gpu_mfu "${MFU_ARGS[@]}" --budget_s="$JAX_BUDGET" --out="$OUT/gpu_mfu.json"
part gpu_torch "$TORCH_STOP" "$PY" -m bench.gpu_torch "${TORCH_ARGS[@]}" --budget_s="$TORCH_BUDGET" \
  --out="$OUT/gpu_torch.json"

# bench/decode.py through its flags only: once per value of its --batching flag if it has one (values from its
# enum help, else static and continuous), else once. JAX and torch share the card here: no preallocation, and
# float32 matmuls at full precision on the JAX side (as torch's default), since the ids must match exactly.
HELP=$("$PY" -m bench.decode --helpfull 2>&1 || true)
if grep -q -- "--batching" <<<"$HELP"; then
  VALUES=$(grep -- "--batching" <<<"$HELP" | grep -o "<[A-Za-z0-9_|-]*>" | head -1 | tr -d '<>' | tr '|' ' ')
  VALUES="${VALUES:-static continuous}"
else
  VALUES="default"
fi
# Its model: the embedded SmolLM2 where `make setup` put it; else (the lent machine: the model's 98 MB cannot be
# carried there) SmolLM2's shapes with random weights, built from the config and tokenizer files that
# `make gpu-prep` put in .gpu_model/ (bench/gpu_model.py; the directory's name labels every row). The dry run
# takes that path too, from the set-up model's files when .gpu_model/ is absent.
EMBEDDED=$("$PY" -c "from models.embedded import embedded_model_dir; print(embedded_model_dir())" 2>/dev/null)
MODEL_ARG=()
if [[ $SMOKE == 1 || -z $EMBEDDED ]]; then
  SRC=.gpu_model
  [[ -f $SRC/config.json || -z $EMBEDDED ]] || SRC="$EMBEDDED"
  RANDOM_DIR="${TMPDIR:-/tmp}/xlit_gpu_model/smollm2-shapes-random-weights"  # not under $OUT: 538 MB
  timeout "$MODEL_STOP" "$PY" -m bench.gpu_model --src="$SRC" --dst="$RANDOM_DIR" >"$OUT/gpu_model.log" 2>&1 || {
    tail -3 "$OUT/gpu_model.log"
    FAILED=1
  }
  MODEL_ARG=(--model="$RANDOM_DIR")
fi
DECODE_JSON=()
for v in $VALUES; do
  flag=()
  [[ $v == default ]] || flag=(--batching="$v")
  XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest part "decode_$v" "$DECODE_STOP" \
    "$PY" -m bench.gpu_decode "${DECODE_ARGS[@]}" "${MODEL_ARG[@]}" "${flag[@]}" --json_out="$OUT/decode_$v.json"
  DECODE_JSON+=("$v=$OUT/decode_$v.json")
done

"$PY" -m bench.gpu_compare --ours="$OUT/gpu_mfu.json" --theirs="$OUT/gpu_torch.json" \
  --decode_json="$(IFS=,; echo "${DECODE_JSON[*]}")" --env="$OUT/env.txt" --json_out="$OUT/gpu.json" \
  | tee "$OUT/table.md" || FAILED=1
[[ $SMOKE == 1 ]] || cp "$OUT/gpu.json" bench/results/gpu.json
echo "== total $((SECONDS - T0)) s; outputs in $OUT"
if [[ $SMOKE == 1 ]]; then
  # the dry run passes only if every part ran every case without an error
  "$PY" - "$OUT" <<'EOF' || FAILED=1
import json, sys
r = json.load(open(f"{sys.argv[1]}/gpu.json"))
parts = [r["ours"], r["hf_transformers"], *r["decode_py"].values()]
bad = [e for p in parts for e in p.get("errors", []) + p.get("skipped", [])]
assert not bad, bad
assert len(r["ours"]["train"]) == 4 and len(r["ours"]["decode"]) == 2, "ours: 4 train + 2 decode cases expected"
assert r["hf_transformers"]["train"] and len(r["hf_transformers"]["decode"]) == 2
assert all(d.get("results") for d in r["decode_py"].values()), "bench/decode.py gave no results"
print("smoke: every part ran")
EOF
fi
exit $FAILED
