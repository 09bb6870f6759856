"""Instruction-tuning entry point.

    python -m train.main --config=configs/anchor.py --workdir=runs/anchor [--config.optimizer.lr=1e-4]

`train.loop.run(config, workdir)` is the same thing from Python (the grid runner calls it); its module
docstring says what lands in the workdir and how a run resumes.
"""

from __future__ import annotations

import json
import logging as std_logging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from records.cli import expected_errors
from train.loop import check_inputs, run, validate_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (configs/*.py[:args]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (resumes if it holds a checkpoint).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")


class _QuietOrbax(std_logging.Filter):
    """Drops orbax's INFO chatter (one line per file written) unless --verbosity is given."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.get_absl_handler().addFilter(_QuietOrbax())
    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    cfg = _CONFIG.value
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    validate_config(cfg)
    check_inputs(cfg)
    summary = run(cfg, _WORKDIR.value)  # a bad record under data.bad_records="error" fails before any step
    logging.info("done: %s", json.dumps({k: v for k, v in summary.items() if k != "data_stats"}))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(expected_errors(main))
