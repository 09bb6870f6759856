"""The training run: `run(config, workdir)` (the grid runner calls it; `python -m train.main` is its CLI). A workdir holding a
checkpoint resumes from it exactly; a workdir holding `done.json` is a finished run and is returned as is.
What lands in the workdir:
  config.json         the resolved config (written before training starts)
  checkpoints/<step>/ orbax checkpoints (state + data position), last `checkpoint.keep` kept
  metrics.jsonl, tb/  per-step metrics (JSONL, TensorBoard); with train.validate_every, per-language
                      validation lines {"step", "validation": [...], "validation_s"} (train/validate.py)
  data_stats.json     records read; used, skipped (per reason) and truncated; layout cuts
  export/             HF directory (LoRA merged) that transformers and infer/ load
  done.json           written last: {"steps", "final_loss", "export", "wall_s", "data_files" ({path: sha256}
                      of the training files read), ...}
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
from absl import logging
from ml_collections import ConfigDict

from configs.common import ENUMS, base
from infer.engine import eos_ids_of
from models.checkpoint import export_hf
from models.sharding import make_mesh
from models.tokenizer import ChatTokenizer
from records.errors import InputError
from records.files import atomic_write_text, sha256_file

from . import data as data_lib
from .checkpoint import Checkpointer
from .host_memory import keep_freed_memory
from .metrics import MetricsWriter
from .optim import make_optimizer
from .state import build_state, jit_train_step, local_rows, merged_model, put_batch, tokenizer_dir
from .validate import ValidationError, Validator, load_validation_set, should_validate

DONE = "done.json"


class ConfigError(InputError):
    """The config has an unknown key, a wrong type, or an invalid value."""


def _flat(c: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in c.items():
        key = f"{prefix}{k}"
        if isinstance(v, (ConfigDict, dict)):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def validate_config(cfg: ConfigDict) -> None:
    """Checks keys and types against configs/common.base(), enum values, and basic consistency."""
    ref, got = _flat(base()), _flat(cfg)
    unknown = sorted(set(got) - set(ref))
    missing = sorted(set(ref) - set(got))
    if unknown or missing:
        raise ConfigError(f"config keys unknown: {unknown}, missing: {missing} (schema: configs/common.py)")
    for k, v in got.items():
        want = type(ref[k])
        ok = isinstance(v, want) or (want is float and isinstance(v, int) and not isinstance(v, bool))
        if want in (tuple, list):
            ok = isinstance(v, (tuple, list))
        if isinstance(v, bool) != (want is bool):
            ok = False
        if not ok:
            raise ConfigError(f"config.{k}={v!r}: expected {want.__name__}, got {type(v).__name__}")
    for k, allowed in ENUMS.items():
        if got[k] not in allowed:
            raise ConfigError(f"config.{k}={got[k]!r}: use one of {allowed}")
    d = cfg.data
    if d.seq_len <= 0 or d.batch_tokens % d.seq_len:
        raise ConfigError(
            f"data.batch_tokens={d.batch_tokens} must be a multiple of data.seq_len={d.seq_len}"
        )
    for k in (
        "train.steps",
        "train.grad_accum",
        "train.log_every",
        "checkpoint.save_every",
        "checkpoint.keep",
    ):
        if got[k] <= 0:
            raise ConfigError(f"config.{k}={got[k]} must be positive")
    for k in ("train.validate_every", "train.validate_items"):
        if got[k] < 0:
            raise ConfigError(f"config.{k}={got[k]} must be >= 0 (0: off / all items)")
    if got["train.validate_max_new_tokens"] <= 0:
        raise ConfigError(
            f"config.train.validate_max_new_tokens={got['train.validate_max_new_tokens']} must be positive"
        )
    if got["train.validate_every"] and not got["train.validate_langs"]:
        raise ConfigError("config.train.validate_langs is empty while train.validate_every > 0")
    if not cfg.model.init_from and not cfg.model.preset:
        raise ConfigError("model.init_from is empty: set it to the base model (HF dir, .gguf or 'embedded')")


def check_inputs(cfg: ConfigDict) -> None:
    """Paths that must exist, checked before anything is written."""
    from models.embedded import resolve_model

    if cfg.model.init_from:
        p = resolve_model(cfg.model.init_from)
        if not p.exists():
            raise FileNotFoundError(f"model.init_from={cfg.model.init_from!r}: {p} does not exist")
    if not cfg.data.hub_dataset:
        data_lib.check_paths(cfg.data.paths)
    if cfg.train.validate_every > 0:
        try:
            load_validation_set(tuple(cfg.train.validate_langs), cfg.train.validate_items)
        except ValidationError as e:
            raise ConfigError(str(e)) from None
        from evalsuite.spelling import find_dictionary, missing_message

        for lang in cfg.train.validate_langs:  # fail now, not at the first validation step
            if find_dictionary(lang) is None:
                raise ConfigError(f"train.validate_langs: {missing_message(lang)}")


def _summary_path(workdir: Path) -> Path:
    return workdir / DONE


def is_finished(workdir: str | os.PathLike) -> bool:
    return _summary_path(Path(workdir)).exists()


def run(cfg: ConfigDict, workdir: str | os.PathLike, *, stop_after: int | None = None) -> dict[str, Any]:
    """Trains (or resumes) to `train.steps`, exports, writes done.json; returns its contents.

    stop_after: stop (after checkpointing) once this many steps are done — for tests and time-sliced jobs.
    """
    t_start = time.time()
    if not cfg.data.hub_dataset:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # base weights and tokenizer come from paths only
    validate_config(cfg)
    check_inputs(cfg)
    if cfg.train.get("keep_freed_memory", True) and jax.default_backend() == "cpu":
        keep_freed_memory()
    workdir = Path(workdir)
    if is_finished(workdir):
        logging.info("%s: already finished", workdir)
        return json.loads(_summary_path(workdir).read_text())

    tok_dir = tokenizer_dir(cfg)
    tok = ChatTokenizer(tok_dir, cfg.model.chat_template)
    corpus = data_lib.read_corpus(
        cfg.data.paths,
        cfg.data.format,
        cfg.data.languages,
        cfg.data.empty_response,
        cfg.data.hub_dataset,
        keep_flagged=cfg.data.keep_flagged,
    )
    data_files = {path: sha256_file(path) for path in corpus.files}
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    rows = cfg.data.batch_tokens // cfg.data.seq_len
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % shards:
        raise ConfigError(f"{rows} rows per micro-batch do not split over data×fsdp = {shards} devices")
    loader = data_lib.Loader(
        corpus,
        tok.encode_chat,
        seq_len=cfg.data.seq_len,
        rows=rows,
        grad_accum=cfg.train.grad_accum,
        seed=cfg.seed,
        over_budget=cfg.data.over_budget,
        lang_sampling=cfg.data.lang_sampling,
        lang_unit=cfg.data.lang_unit,
        batching=cfg.data.batching,
        buffer_size=cfg.data.buffer_size,
        bad_records=cfg.data.bad_records,
    )  # tokenizes and checks every record now, before any work
    logging.info("training data: %s", json.dumps({**corpus.stats, **loader.check_stats}))
    tx, schedule = make_optimizer(cfg.optimizer, cfg.train.steps)

    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        atomic_write_text(cfg.to_json_best_effort(indent=2), workdir / "config.json")
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx, vocab_size=len(tok.tok))
        ckpt = Checkpointer(
            workdir / "checkpoints", keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save
        )
        state = built.state
        start = ckpt.latest_step() or 0
        if start:
            state, data_state = ckpt.restore(start, state, built.shardings)
            loader.set_state(data_state)
            logging.info("resumed from %s at step %d", ckpt.directory, start)
        step_fn = jit_train_step(built, tx, schedule)
        logging.info(
            "optimizer update: %s (optimizer.kernels=%s); attention: %s (model.attention=%s)",
            built.optimizer_kernels,
            cfg.optimizer.kernels,
            built.model_cfg.attention_impl(),
            cfg.model.attention,
        )
        writer = MetricsWriter(
            workdir, flops_per_token=built.model_cfg.flops_per_token(cfg.data.seq_len), resume_step=start
        )
        total = cfg.train.steps
        last = stop_after if stop_after is not None else total
        validator = None
        if cfg.train.validate_every > 0 and jax.process_count() > 1:
            logging.warning("train.validate_every: validation runs single-process only; skipped on %d processes",
                            jax.process_count())  # fmt: skip
        elif cfg.train.validate_every > 0:
            validator = Validator(cfg, built, tok, eos_ids_of(tok_dir, tok))
        host_rows = local_rows(mesh, loader.rows)
        loss = math.nan
        t_log, tokens_log, n_log = time.perf_counter(), 0, 0
        for step in range(start, min(total, last)):
            batch = put_batch(loader.next_batch(host_rows), mesh, loader.rows)  # this host's rows only
            state, m = step_fn(state, batch)
            done = step + 1
            n_log += 1
            if done % cfg.train.log_every == 0 or done == total:
                m = jax.device_get(m)
                tokens_log += int(m["tokens"]) * n_log  # approximation when log_every > 1
                dt = time.perf_counter() - t_log
                row = {**m, **writer.rates(tokens_log, dt), "step_time": dt / n_log, **loader.state["stats"]}
                row = writer.write(done, row, total)
                loss = float(m["loss"])
                t_log, tokens_log, n_log = time.perf_counter(), 0, 0
            if validator is not None and should_validate(done, cfg.train.validate_every, total):
                rows, seconds = validator(state)
                writer.write_validation(done, rows, seconds)
                t_log += seconds  # the next training line's rates leave the validation out
            if done % cfg.checkpoint.save_every == 0 or done == total:
                ckpt.save(done, state, loader.state)
        ckpt.close()
        writer.close()
        final = int(jax.device_get(state["step"]))
        if final < total:
            return {"finished": False, "steps": final}
        stats = {**corpus.stats, **loader.stats}
        export_dir = workdir / "export"
        if cfg.export.enabled:
            if jax.process_count() > 1:  # every process joins the gather; process 0 writes
                from jax.experimental import multihost_utils

                state = {
                    k: multihost_utils.process_allgather(state[k], tiled=True) for k in ("params", "frozen")
                }
            model = merged_model(built, state)
            if jax.process_index() == 0:
                export_hf(model, export_dir, tokenizer_dir=tok_dir, torch_dtype=cfg.export.dtype)
    summary = {
        "finished": True,
        "steps": final,
        "final_loss": loss,
        "export": str(export_dir) if cfg.export.enabled else None,
        "checkpoint": str(ckpt.directory / str(final)),
        "wall_s": time.time() - t_start,
        "data_stats": stats,
        "data_files": data_files,
    }
    if jax.process_index() == 0:
        atomic_write_text(json.dumps(stats, indent=2), workdir / "data_stats.json")
        atomic_write_text(json.dumps(summary, indent=2), _summary_path(workdir))
    return summary
