"""Every shipped training record goes through the pre-check with every chat template: tokenized and used, or
skipped with a count; nothing raises, and the counts add up to the file's records (tokenization only, no JAX)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.tokenizer import TEMPLATES, ChatTokenizer
from train.data import Loader, read_corpus

SHIPPED = {"data/train/dolly_subset.jsonl": "dolly", "data/train/lima.en.jsonl": "lima"}
SKIPS = ("over_budget_skipped", "no_response_skipped", "template_error_skipped")


def test_every_shipped_file_is_covered():
    assert sorted(str(p) for p in Path("data/train").glob("*.jsonl")) == sorted(SHIPPED)


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def tok(request, smollm2_dir) -> ChatTokenizer:
    return ChatTokenizer(smollm2_dir, request.param)  # "model" = SmolLM2's own ChatML template


@pytest.mark.parametrize("path", sorted(SHIPPED))
def test_shipped_records_all_tokenized_or_skipped_with_a_count(tok, path):
    lines = sum(1 for line in Path(path).read_text().splitlines() if line.strip())
    corpus = read_corpus([path], SHIPPED[path])
    assert corpus.stats["records"] + corpus.stats["empty_response_skipped"] == lines
    # the released sizes (2048-token rows); the pre-check runs in the constructor and must not raise
    ld = Loader(corpus, tok.encode_chat, seq_len=2048, rows=4, grad_accum=1, seed=0, over_budget="skip")
    stats = ld.stats
    assert stats["used"] + sum(stats[k] for k in SKIPS) == corpus.stats["records"]
    assert sum(len(v) for v in ld.examples.values()) == stats["used"]
    # the shipped data is clean: every record renders with both templates and has response tokens
    assert stats["template_error_skipped"] == 0 and stats["no_response_skipped"] == 0, stats
    assert stats["used"] > 0.9 * lines, stats
    for ex in ld.examples["en"]:
        assert 0 < len(ex) <= 2048 and ex.weights.any()
