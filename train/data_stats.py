"""What a config's training data gives per update, under both batching modes (tokenization only, no JAX).

    python -m train.data_stats --config=configs/smollm2.py[:lima] [--config.data.seq_len=2048 ...] [--epochs=2]

Runs the pre-check (records used / skipped per reason) once, then draws `--epochs` epochs of updates with
`data.batching` "sorted" and "packed" and prints one JSON line per mode: real (non-padding) tokens, response
tokens and examples per update, padding share of the token slots, updates per epoch, layout cuts per update.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from models.embedded import resolve_model
from models.tokenizer import ChatTokenizer
from records.cli import expected_errors

from .data import BATCHING, Loader, read_corpus

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config (configs/*.py[:args]).")
_EPOCHS = flags.DEFINE_float("epochs", 2.0, "How many epochs of updates to draw per batching mode.")


def measure(cfg: ConfigDict, epochs: float = 2.0) -> list[dict[str, Any]]:
    """One row per batching mode: the per-update averages over `epochs` epochs of the config's data."""
    d = cfg.data
    tok = ChatTokenizer(resolve_model(cfg.model.tokenizer or cfg.model.init_from), cfg.model.chat_template)
    corpus = read_corpus(
        d.paths, d.format, d.languages, d.empty_response, d.hub_dataset, keep_flagged=d.keep_flagged
    )
    memo: dict[int, Any] = {}

    def encode(messages: list[dict[str, str]]) -> Any:  # the two loaders share one tokenization
        if id(messages) not in memo:
            memo[id(messages)] = tok.encode_chat(messages)
        return memo[id(messages)]

    rows_out = []
    for batching in BATCHING:
        ld = Loader(
            corpus,
            encode,
            seq_len=d.seq_len,
            rows=d.batch_tokens // d.seq_len,
            grad_accum=cfg.train.grad_accum,
            seed=cfg.seed,
            over_budget=d.over_budget,
            lang_sampling=d.lang_sampling,
            lang_unit=d.lang_unit,
            batching=batching,
            buffer_size=d.buffer_size,
            bad_records=d.bad_records,
        )
        used = ld.stats["used"]
        real = resp = updates = 0
        group_tokens, n_groups, buffers = 0, 0, 0  # sorted: the groups pasero would emit as micro-batches
        while ld.state["stats"]["examples"] < epochs * used:
            b = ld.next_batch()
            real += int((b["segment_ids"] > 0).sum())
            resp += int(b["weights"].sum())
            updates += 1
            if ld.state["buffers"] != buffers:
                buffers = ld.state["buffers"]
                group_tokens += sum(len(ex) for g in ld._groups for ex in g)
                n_groups += len(ld._groups)
        slots = updates * cfg.train.grad_accum * d.batch_tokens
        cuts = ld.state["stats"]["layout_cut"]
        per_update = ld.state["stats"]["examples"] / updates
        rows_out.append(
            {
                "batching": batching,
                **corpus.stats,
                **ld.check_stats,
                "real_tokens_per_update": round(real / updates, 1),
                "response_tokens_per_update": round(resp / updates, 1),
                "examples_per_update": round(per_update, 2),
                "padding_share": round(1 - real / slots, 3),
                "updates_per_epoch": round(used / per_update, 2),
                "layout_cuts_per_update": round(cuts / updates, 3),
                # pasero's micro-batch is one whole group: the real tokens of grad_accum groups
                "pasero_real_tokens_per_update": (
                    round(group_tokens / n_groups * cfg.train.grad_accum, 1) if n_groups else None
                ),
                "updates_measured": updates,
                "tokens_per_example": round(
                    float(np.mean([len(e) for v in ld.examples.values() for e in v])), 1
                ),
            }
        )
    return rows_out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for row in measure(_CONFIG.value, _EPOCHS.value):
        print(json.dumps(row))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(expected_errors(main))
