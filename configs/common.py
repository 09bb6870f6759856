"""Shared base of every training config: the full schema (each field typed and documented) and variants.

`base()` holds every key the trainer reads; `train.main` rejects a config with a key that is not here, a
value of another type, or an enum-like name not listed. Two protocols (see docs/train.md):
  * released (`protocol="released"`, the authors' yaml): batches of 8192 tokens (4 rows × 2048), 10
    accumulated micro-batches (4 for LoRA), lr → min_lr linearly over 1000 steps, no warmup;
  * paper (`:paper`, Appendix B): batches of 4000 tokens (2 rows × 2000), 4 accumulated micro-batches,
    inverse square root schedule, no warmup.
Released only (pasero defaults the yamls rely on, see configs/released/defaults.json): gradient clipping at global
norm 1.0, LoRA α 8 (scale α/r = 0.5) with kaiming-uniform A, over-long examples skipped, length-sorted padded
micro-batches whose token budget counts padding, repetition penalty 1.2 when generating.
Paper only: repetition penalty 1.1 (the text says nothing of clipping, LoRA α, batching: released values kept).
Both: Adam β (0.9, 0.95), decoupled weight decay 0.1, dropout 0, 1000 steps, prompt loss 0,
bf16 compute with fp32 master weights, last checkpoint = result. xlit's addition: paper configs validate every 200
steps (the yamls' valid_interval) in en/fr/pt/ru (train/validate.py); `:runlocal` does not.
"""

from __future__ import annotations

import ml_collections

SHIPPED_DOLLY = "data/train/dolly_subset.jsonl"
SHIPPED_LIMA = "data/train/lima.en.jsonl"
# Full Dolly-15k is not shipped: download it (databricks/databricks-dolly-15k) and its NLLB translations
# (naver/pasero examples/zero-shot-transfer-inst-tuning/data/dolly.{fr,pt,ru}.jsonl) to these paths.
DOLLY_EN = "data/train/dolly.en.jsonl"
PAPER_LANGS = ("en", "fr", "pt", "ru")  # the paper's languages: default values below, never assumed by code
DOLLY_DT = tuple(f"data/train/dolly.{lang}.jsonl" for lang in PAPER_LANGS)
LIMA_EN = SHIPPED_LIMA
# LoRA target projections (the names of models.lora's projections; configs import nothing but each other).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
PROTOCOLS = ("released", "paper")
LORA_LR_GRID = (1e-5, 1e-4, 1e-3)

ENUMS = {
    "protocol": PROTOCOLS,
    "lora.init": ("pasero", "normal"),
    "model.chat_template": ("model", "llama-2"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.attention": ("auto", "einsum", "native", "xla", "cudnn"),
    "model.remat_policy": ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable"),
    "data.format": ("dolly", "lima"),
    "data.lang_sampling": ("uniform", "proportional"),
    "data.lang_unit": ("example", "microbatch"),
    "data.over_budget": ("truncate", "skip"),
    "data.batching": ("sorted", "packed"),
    "data.empty_response": ("skip", "error"),
    "data.bad_records": ("skip", "error"),
    "optimizer.schedule": ("inverse_sqrt", "linear_to_min", "constant"),
    "optimizer.mu_dtype": ("float32", "bfloat16"),
    "optimizer.kernels": ("auto", "xla", "native"),
    "export.dtype": ("float32", "bfloat16"),
}


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # released: the authors' runs (yaml + pasero defaults); paper: Appendix B's text (`:paper`)
    c.protocol = "released"
    # LRs the grid trains when no --lrs is given: the paper's three (Sec. 3, 5.3: FT 1e-6 / 1e-5 / 1e-4);
    # LoRA configs set 1e-5 / 1e-4 / 1e-3 (the paper names only LoRA's best, 1e-4: our grid centres on it)
    c.lr_grid = (1e-6, 1e-5, 1e-4)
    c.model = ml_collections.ConfigDict(
        dict(
            init_from="",  # HF dir, .gguf, or "embedded"; "" = random `preset` (tests / runlocal only)
            preset="",  # models.config preset name, used only when init_from is ""
            tokenizer="",  # tokenizer dir; "" = init_from
            chat_template="model",  # "model" = the checkpoint's own, "llama-2" = [INST] (released configs)
            dtype="bfloat16",  # compute
            param_dtype="float32",  # master weights
            remat=False,  # activation checkpointing per layer
            # with remat, what a layer keeps for the backward pass (models.config.LlamaConfig.remat_policy):
            # nothing_saveable (recompute all) | dots_with_no_batch_dims_saveable (keep the projections) |
            # dots_saveable (keep every matmul output); runtime only, same numbers
            remat_policy="nothing_saveable",
            attention="auto",  # no-cache attention: auto | einsum | native | xla | cudnn (models.config.LlamaConfig.attention)
        )
    )
    # pasero: lora_alpha 8 (scale α/r = 0.5), A kaiming_uniform_(a=√5) = U(±1/√fan_in), B zeros
    c.lora = ml_collections.ConfigDict(
        dict(enabled=False, rank=16, alpha=8.0, init="pasero", targets=LORA_TARGETS)
    )
    c.data = ml_collections.ConfigDict(
        dict(
            format="dolly",
            paths=(DOLLY_EN,),  # JSONL or Parquet; "lang=path" sets a file's language
            hub_dataset="",  # "databricks/databricks-dolly-15k" when online and asked for
            languages=(),  # keep only these languages ((): all)
            lang_sampling="uniform",
            lang_unit="example",
            seq_len=2048,  # row length = longest example (decoder_max_len)
            batch_tokens=8192,  # tokens per micro-batch = rows × seq_len
            over_budget="skip",  # example longer than seq_len: skip (pasero) or truncate (counted either way)
            # sorted: pasero's batches (a buffer of `buffer_size` examples sorted by length, cut so that
            # longest × count ≤ batch_tokens, padding counted); packed: first-fit packing (opt-in, more real
            # tokens per update; docs/train.md gives the measured effect)
            batching="sorted",
            buffer_size=1000,
            empty_response="skip",  # skip (counted) or error
            # a record the pre-check cannot use (template fails, no response token left): skip (counted per
            # reason in data_stats.json) or error (the run fails before any work, naming file:line)
            bad_records="skip",
            # translated records flagged by the translation pipeline's quality checks (non-empty `flags`):
            # skipped and counted as translation_flagged_skipped in data_stats.json; True trains on them
            keep_flagged=False,
        )
    )
    c.optimizer = ml_collections.ConfigDict(
        dict(
            lr=1e-5,
            min_lr=1e-6,
            schedule="linear_to_min",
            warmup_steps=0,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            clip_norm=1.0,  # global-norm clipping (pasero default 1.0); 0 = none
            mu_dtype="float32",  # Adam first moment; bfloat16 saves memory (13B on 2×A100)
            # how the update runs, not what it computes: "native" = one pass per tensor on one CPU device
            # (train/fused_adamw.py, same float32 arithmetic as optax), "xla" = optax; "auto" = native where
            # it applies
            kernels="auto",
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            steps=1000,
            grad_accum=10,
            log_every=1,
            # validation while training (train/validate.py, docs/train.md): every N steps and at the last one,
            # greedy answers to data/eval/validation.{lang}.jsonl + the loss of their reference answers; 0 = off
            validate_every=0,
            validate_langs=PAPER_LANGS,
            validate_items=0,  # first N items per language (0 = all 24)
            validate_max_new_tokens=128,  # answer budget (the run's repetition penalty, greedy)
            # cross-entropy over at most ~this many tokens' float32 logits at a time (train/step.py
            # chunked_nll: a scan over sequence chunks with a fused loss + gradient), instead of the full
            # [rows, seq_len, vocab] logits, skipping chunks without response tokens; 0 = off (one logits
            # tensor). Runtime only: same loss and gradients up to float rounding
            # (tests/test_train_loss_chunk.py); e.g. 2048 on GPUs, 64 in configs/smollm2.py
            loss_chunk_tokens=0,
            # CPU runs: glibc keeps freed memory, so XLA's per-step buffers are not faulted in again at every
            # step (train/host_memory.py); runtime only, the process keeps its peak memory until it exits
            keep_freed_memory=True,
        )
    )
    c.checkpoint = ml_collections.ConfigDict(dict(save_every=200, keep=2, async_save=True))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.export = ml_collections.ConfigDict(dict(enabled=True, dtype="float32"))
    # How the run's model is decoded at evaluation (grid, infer.main --run): the protocol's settings, so that
    # training and decoding cannot be mixed by accident. released: yaml repeat_penalty 1.2, max_output_len 512.
    c.decode = ml_collections.ConfigDict(dict(repetition_penalty=1.2, max_new_tokens=512))
    return c


def paper_protocol(c: ml_collections.ConfigDict) -> None:
    """Appendix B: 4000-token batches, update every 4 micro-batches, inverse square root, no warmup,
    repetition penalty 1.1."""
    c.protocol = "paper"
    c.decode.repetition_penalty = 1.1
    c.data.seq_len = 2000
    c.data.batch_tokens = 4000
    c.train.grad_accum = 4
    c.optimizer.schedule = "inverse_sqrt"


def llama_config(
    init_from: str, *, data: str, lora: bool = False, arg: str | None = None
) -> ml_collections.ConfigDict:
    """A paper configuration on a LLaMA-2 / Tower base. data: "dolly_en" | "dolly_dt" | "lima_en"."""
    c = base()
    c.model.init_from = init_from
    c.model.chat_template = "llama-2"
    c.model.remat = True
    c.mesh.tensor = 2  # released: tp_size 2
    if data == "dolly_en":
        c.data.paths = (DOLLY_EN,)
    elif data == "dolly_dt":
        c.data.paths = DOLLY_DT
        c.data.lang_sampling = "uniform"
    elif data == "lima_en":
        c.data.format = "lima"
        c.data.paths = (LIMA_EN,)
    else:
        raise ValueError(data)
    if lora:
        c.lora.enabled = True
        c.optimizer.lr, c.optimizer.min_lr = 1e-4, 1e-5
        c.lr_grid = LORA_LR_GRID
        c.train.grad_accum = 4  # released LoRA yaml: virtual_dp_size 4
        c.mesh.tensor = 1
    c.export.dtype = "bfloat16"
    c.train.validate_every = 200  # the released yamls' valid_interval
    return apply_args(c, arg)


def apply_args(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Comma-separated variant names after `:` — `paper`, `runlocal` (and a config's own)."""
    names = [a for a in (arg or "").split(",") if a]
    unknown = [a for a in names if a not in ("paper", "runlocal")]
    if unknown:
        raise ValueError(f"unknown config argument(s) {unknown}; known: paper, runlocal")
    if "paper" in names:
        paper_protocol(c)
    if "runlocal" in names:
        runlocal(c)
    return c


def runlocal(c: ml_collections.ConfigDict) -> None:
    """CPU smoke run: tiny random model with the embedded tokenizer, tiny batches, 2 steps, one device.

    Only sizes change; the protocol (schedule, accumulation count, template, LoRA/FT, language mix)
    stays. Dolly-En/DT paths become the shipped Dolly subset (for DT, the same file under each language).
    """
    c.model.init_from = ""
    c.model.preset = "tiny"
    c.model.tokenizer = "embedded"
    c.model.dtype = "float32"
    c.data.seq_len = 128
    c.data.batch_tokens = 256
    if c.data.format == "dolly":
        langs = [p.split("/")[-1].split(".")[-2] for p in c.data.paths]
        c.data.paths = (
            tuple(f"{lang}={SHIPPED_DOLLY}" for lang in langs) if len(langs) > 1 else (SHIPPED_DOLLY,)
        )
    c.train.steps = 2
    c.train.validate_every = 0  # off (tests turn it on with --config.train.validate_every)
    c.checkpoint.save_every = 2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.export.dtype = "float32"
