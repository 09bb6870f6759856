"""Reading, packing, language sampling, resumable position, and bad input for train/data.py."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines.schemas import TRANSLATION_SCHEMA
from train.data import DataError, Loader, read_corpus


@dataclass
class Enc:
    ids: list[int]
    loss_mask: list[int]


def fake_encode(messages):
    """Deterministic stand-in for ChatTokenizer.encode_chat: one token per character, prompt then answer."""
    ids, mask = [1], [0]
    for m in messages:
        toks = [3 + (ord(c) % 200) for c in m["content"]] + [2]
        ids += toks
        mask += [int(m["role"] == "assistant")] * len(toks)
    return Enc(ids, mask)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def dolly(n, prefix="q", resp_len=5):
    return [
        {"instruction": f"{prefix}{i}", "context": "", "response": "r" * resp_len, "category": "x"}
        for i in range(n)
    ]


def loader(corpus, **kw):
    args = dict(seq_len=32, rows=2, grad_accum=2, seed=0)
    return Loader(corpus, fake_encode, **{**args, **kw})


def test_dolly_context_joined_and_lima_all_assistant_turns(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Sum up", "context": "Text.", "response": "ok"}])
    c = read_corpus([p], "dolly")
    assert c.by_lang["en"][0].messages == [
        {"role": "user", "content": "Sum up\n\nText."},
        {"role": "assistant", "content": "ok"},
    ]
    lima = write_jsonl(tmp_path / "l.jsonl", [{"conversations": ["hi", "hello", "more?", "sure"]}])
    rec = read_corpus([lima], "lima").by_lang["en"][0]
    enc = fake_encode(rec.messages)
    # both assistant turns carry loss, both user turns none
    roles = [m["role"] for m in rec.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert sum(enc.loss_mask) == len("hello") + 1 + len("sure") + 1


def test_packing_segments_positions_and_budget(tmp_path):
    c = read_corpus([write_jsonl(tmp_path / "d.jsonl", dolly(50))], "dolly")
    b = loader(c).next_batch()
    assert b["inputs"].shape == (2, 2, 32)
    for a in range(2):
        for r in range(2):
            seg, pos = b["segment_ids"][a, r], b["positions"][a, r]
            assert seg.max() >= 2  # several examples packed per row
            for s in range(1, seg.max() + 1):
                idx = np.where(seg == s)[0]
                assert np.array_equal(pos[idx], np.arange(len(idx)))
                assert np.all(np.diff(idx) == 1)
            assert np.all(b["weights"][a, r][seg == 0] == 0)


def test_deterministic_and_resumable(tmp_path):
    c = read_corpus([write_jsonl(tmp_path / "d.jsonl", dolly(30))], "dolly")
    ref = loader(c)
    batches = [ref.next_batch() for _ in range(12)]  # crosses epochs
    assert ref.state["cursor"]["en"][0] >= 1
    again = loader(c)
    for _ in range(5):
        again.next_batch()
    saved = json.loads(json.dumps(again.state))
    resumed = loader(c)
    resumed.set_state(saved)
    for want in batches[5:]:
        got = resumed.next_batch()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    other = loader(c, seed=1).next_batch()
    assert not np.array_equal(other["inputs"], batches[0]["inputs"])


def test_uniform_language_sampling(tmp_path):
    paths = [write_jsonl(tmp_path / "dolly.en.jsonl", dolly(200, "e"))]
    for lang, n in (("fr", 20), ("pt", 50)):
        paths.append(write_jsonl(tmp_path / f"dolly.{lang}.jsonl", dolly(n, lang[0])))
    rows = [{"id": str(i), "lang": "ru", "instruction": f"z{i}", "context": "", "response": "rrrr",
             "category": "x", "translator": "nllb"} for i in range(10)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=TRANSLATION_SCHEMA), tmp_path / "ru.parquet")
    paths.append(str(tmp_path / "ru.parquet"))
    c = read_corpus(paths, "dolly")
    assert {k: len(v) for k, v in c.by_lang.items()} == {"en": 200, "fr": 20, "pt": 50, "ru": 10}
    ld = loader(c, seq_len=64, rows=4, grad_accum=4)
    for _ in range(25):
        ld.next_batch()
    counts = Counter()
    for lang, (epoch, pos) in ld.state["cursor"].items():
        counts[lang] = epoch * len(c.by_lang[lang]) + pos
    total = sum(counts.values())
    assert total > 800
    for lang in counts:
        assert abs(counts[lang] / total - 0.25) < 0.05, counts


def test_malformed_jsonl_names_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [dolly(1)[0], "{not json", dolly(1)[0]])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        read_corpus([p], "dolly")
    p2 = write_jsonl(tmp_path / "bad2.jsonl", [dolly(1)[0], {"instruction": "x"}])
    with pytest.raises(DataError, match=r"bad2\.jsonl:2: field 'response'"):
        read_corpus([p2], "dolly")
    with pytest.raises(DataError, match="does not exist"):
        read_corpus([str(tmp_path / "nope.jsonl")], "dolly")


def test_empty_response_skipped_and_counted_or_error(tmp_path):
    rows = dolly(3)
    rows[1]["response"] = "  "
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    c = read_corpus([p], "dolly", empty_response="skip")
    assert c.stats == {"records": 2, "empty_response_skipped": 1}
    with pytest.raises(DataError, match=r"d\.jsonl:2: empty response"):
        read_corpus([p], "dolly", empty_response="error")


@pytest.mark.parametrize("policy", ["truncate", "skip"])
def test_over_budget_examples_truncated_or_skipped_and_counted(tmp_path, policy):
    rows = dolly(6) + [{"instruction": "long", "context": "", "response": "y" * 100}]
    c = read_corpus([write_jsonl(tmp_path / "d.jsonl", rows)], "dolly")
    ld = loader(c, over_budget=policy, grad_accum=1)
    seen_full_row = False
    for _ in range(8):
        b = ld.next_batch()
        seen_full_row |= bool(((b["segment_ids"][0] == 1).sum(-1) == 32).any())
    stats = ld.state["stats"]
    if policy == "truncate":
        assert stats["over_budget_truncated"] >= 1 and stats["over_budget_skipped"] == 0 and seen_full_row
    else:
        assert stats["over_budget_skipped"] >= 1 and stats["over_budget_truncated"] == 0 and not seen_full_row
