"""Token-exact greedy parity with transformers generate on the real SmolLM2 weights (en/fr/pt/ru)."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from infer.decode import DecodeParams
from infer.engine import Engine
from tests.infer_helpers import eval_prompts, hf_greedy

# 10 prompts of 35..58 tokens (one 64-token bucket), mixed lengths, four languages
PROMPTS = eval_prompts({"en": [14, 6, 28], "fr": [14, 42], "pt": [16, 27], "ru": [19, 72, 13]})
N = 16


@pytest.fixture(scope="module")
def engine(smollm2_dir) -> Engine:
    return Engine.from_path(smollm2_dir, max_batch=20)


def test_smollm2_greedy_parity_penalty_1_1_and_1_2(engine, smollm2_dir):
    ids = [engine.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) >= 6
    # both penalties in one batch of 20 rows: per-row parameters share one compiled program
    params = [DecodeParams(max_new_tokens=N, repetition_penalty=p) for p in (1.1, 1.2) for _ in PROMPTS]
    ours = engine.generate_ids(ids + ids, params)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    for k, penalty in enumerate((1.1, 1.2)):
        ref = hf_greedy(hf, ids, N, penalty, pad_id=0)  # pad with <|endoftext|>, not EOS (see hf_greedy)
        for i, want in enumerate(ref):
            got = ours[k * len(ids) + i]
            assert got.ids == want, f"prompt {i} penalty {penalty}: {engine.tokenizer.decode(got.ids)!r}"
            assert got.text == engine.tokenizer.decode(want)
