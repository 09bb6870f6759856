"""Real weights: SmolLM2-135M, LoRA and full fine-tuning on the shipped Dolly subset lower the training loss.

Kept small for a 2-core CPU (a 135M step costs ~6·135M FLOPs per token): batches of one 96-token row,
5 steps alternating over the first 2 batches of the stream; the loss on each must fall.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs.smollm2 import get_config
from models.sharding import make_mesh
from models.tokenizer import ChatTokenizer
from tests.train_helpers import override
from train.data import Loader, read_corpus
from train.optim import make_optimizer
from train.state import build_state, jit_train_step, put_batch, tokenizer_dir

STEPS, SEQ = 5, 96


@pytest.mark.parametrize("variant,lr", [("lora", 3e-4), ("ft", 3e-5)])
def test_smollm2_training_lowers_loss(smollm2_dir, variant, lr):
    cfg = get_config("ft" if variant == "ft" else "")
    override(cfg, **{"optimizer.lr": lr, "optimizer.min_lr": lr / 10, "train.steps": STEPS, "data.seq_len": SEQ,
                     "data.batch_tokens": SEQ, "train.grad_accum": 1})  # fmt: skip
    assert cfg.lora.enabled == (variant == "lora")
    tok = ChatTokenizer(tokenizer_dir(cfg))
    corpus = read_corpus(cfg.data.paths, "dolly")
    loader = Loader(corpus, tok.encode_chat, seq_len=SEQ, rows=1, grad_accum=1, seed=0)
    batches = [loader.next_batch() for _ in range(2)]
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:1])
    tx, sched = make_optimizer(cfg.optimizer, STEPS)
    losses = []
    with jax.set_mesh(mesh):
        built = build_state(cfg, mesh, tx)
        step = jit_train_step(built, tx, sched)
        state = built.state
        for i in range(STEPS):  # batches 0, 1, 0, 1, 0: the loss is measured before each update
            state, m = step(state, put_batch(batches[i % 2], mesh))
            losses.append(float(m["loss"]))
    assert all(np.isfinite(losses)), losses
    assert losses[4] < losses[0] - 0.05 and losses[3] < losses[1] - 0.05, losses
