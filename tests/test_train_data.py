"""Reading, pre-check, sorted and packed batching, language sampling, resumable position, bad input
(train/data.py), and the chat-template loss mask (models/tokenizer.py)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.tokenizer import TEMPLATES, ChatTokenizer
from records.schemas import TRANSLATION_SCHEMA
from train.data import DataError, Loader, _dolly_messages, budget_groups, read_corpus


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


@pytest.mark.parametrize("batching", ["packed", "sorted"])
def test_packing_segments_positions_and_budget(tmp_path, batching):
    c = read_corpus([write_jsonl(tmp_path / "d.jsonl", dolly(50))], "dolly")
    b = loader(c, batching=batching).next_batch()
    assert b["inputs"].shape == (2, 2, 32)
    for a in range(2):
        for r in range(2):
            seg, pos = b["segment_ids"][a, r], b["positions"][a, r]
            assert seg.max() >= 2 or batching == "sorted"  # several examples packed per row
            for s in range(1, seg.max() + 1):
                idx = np.where(seg == s)[0]
                assert np.array_equal(pos[idx], np.arange(len(idx)))
                assert np.all(np.diff(idx) == 1)
            assert np.all(b["weights"][a, r][seg == 0] == 0)


@pytest.mark.parametrize("batching", ["packed", "sorted"])
def test_deterministic_and_resumable(tmp_path, batching):
    rows = [{**r, "response": "r" * (1 + i % 9)} for i, r in enumerate(dolly(30))]
    c = read_corpus([write_jsonl(tmp_path / "d.jsonl", rows)], "dolly")

    def loader(c, **kw):  # sorted: buffers of 16 examples, so 12 steps cross buffers and epochs
        args = dict(seq_len=32, rows=2, grad_accum=2, seed=0, batching=batching, buffer_size=16)
        return Loader(c, fake_encode, **{**args, **kw})

    ref = loader(c)
    batches = [ref.next_batch() for _ in range(12)]  # crosses epochs
    assert ref.state["cursor"]["en"][0] >= 1
    again = loader(c)
    for _ in range(5):
        again.next_batch()
    saved = json.loads(json.dumps(again.state))
    if batching == "sorted":
        assert saved["buffer"]["group"] > 0 or saved["buffer"]["offset"] > 0  # resumed mid-buffer
    resumed = loader(c)
    resumed.set_state(saved)
    for want in batches[5:]:
        got = resumed.next_batch()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    other = loader(c, seed=1).next_batch()
    assert not np.array_equal(other["inputs"], batches[0]["inputs"])


@pytest.mark.parametrize("batching", ["packed", "sorted"])
def test_uniform_language_sampling(tmp_path, batching):
    paths = [write_jsonl(tmp_path / "dolly.en.jsonl", dolly(200, "e"))]
    for lang, n in (("fr", 20), ("pt", 50)):
        paths.append(write_jsonl(tmp_path / f"dolly.{lang}.jsonl", dolly(n, lang[0])))
    rows = [{"id": str(i), "lang": "ru", "instruction": f"z{i}", "context": "", "response": "rrrr",
             "category": "x", "translator": "nllb"} for i in range(10)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=TRANSLATION_SCHEMA), tmp_path / "ru.parquet")
    paths.append(str(tmp_path / "ru.parquet"))
    c = read_corpus(paths, "dolly")
    assert {k: len(v) for k, v in c.by_lang.items()} == {"en": 200, "fr": 20, "pt": 50, "ru": 10}
    ld = loader(c, seq_len=64, rows=4, grad_accum=4, batching=batching, buffer_size=100)
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


@pytest.mark.parametrize("batching", ["packed", "sorted"])
@pytest.mark.parametrize("policy", ["truncate", "skip"])
def test_over_budget_examples_truncated_or_skipped_and_counted(tmp_path, policy, batching):
    rows = dolly(6) + [{"instruction": "long", "context": "", "response": "y" * 100}]
    c = read_corpus([write_jsonl(tmp_path / "d.jsonl", rows)], "dolly")
    ld = loader(c, over_budget=policy, grad_accum=1, batching=batching, buffer_size=8)
    seen_full_row = False
    for _ in range(8):
        b = ld.next_batch()
        seen_full_row |= bool(((b["segment_ids"][0] == 1).sum(-1) == 32).any())
    stats = ld.stats
    assert stats["used"] == (7 if policy == "truncate" else 6)
    if policy == "truncate":
        assert stats["over_budget_truncated"] >= 1 and stats["over_budget_skipped"] == 0 and seen_full_row
    else:
        assert stats["over_budget_skipped"] >= 1 and stats["over_budget_truncated"] == 0 and not seen_full_row


def test_budget_groups_follow_pasero():
    # pasero.utils.build_batches' docstring example (no max_lines): padded size = longest × count ≤ budget
    assert budget_groups([1000, 2000, 4000, 500, 1000, 1000], 4000) == [[0, 1], [2], [3, 4, 5]]
    assert budget_groups([3, 3, 3, 4], 12) == [[0, 1, 2], [3]]
    assert budget_groups([], 8) == []


def example_keys(batch):
    """The examples of a `[rows, seq_len]` micro-batch as tuples of input ids."""
    out = []
    for r in range(batch["inputs"].shape[0]):
        seg = batch["segment_ids"][r]
        for s in range(1, seg.max() + 1):
            out.append(tuple(batch["inputs"][r][seg == s]))
    return out


def test_sorted_buffer_groups_sorted_within_budget_and_complete(tmp_path):
    rows = [{**r, "response": "r" * (1 + (7 * i) % 23)} for i, r in enumerate(dolly(40))]
    c = read_corpus([write_jsonl(tmp_path / "d.jsonl", rows)], "dolly")
    ld = loader(c, batching="sorted", buffer_size=40, grad_accum=1, seq_len=80, rows=1)  # no layout cut
    first = example_keys(ld.next_microbatch())
    groups = [[tuple(ex.inputs) for ex in g] for g in ld._groups]
    assert sorted(first) == sorted(groups[0])  # a micro-batch starting a group holds that group only
    for g in groups:
        lengths = [len(k) for k in g]
        assert max(lengths) * len(g) <= 80  # padded size within batch_tokens (pasero's rule)
        assert lengths == sorted(lengths, reverse=True)  # laid out longest first
    # groups are consecutive runs of the length-sorted buffer: their length ranges do not interleave
    ranges = sorted((min(map(len, g)), max(map(len, g))) for g in groups)
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    # one buffer = one epoch here: the groups hold every record once, and the micro-batches emit them all
    assert sorted(k for g in groups for k in g) == sorted(set(k for g in groups for k in g))
    assert sum(map(len, groups)) == 40
    seen = list(first)
    while ld.state["buffer"]["group"] < len(groups):
        seen += example_keys(ld.next_microbatch())
    assert sorted(seen) == sorted(k for g in groups for k in g)
    assert ld.stats["layout_cut"] == 0 and ld.state["microbatches"] == len(groups)


def test_sorted_layout_cut_counted_and_nothing_lost(tmp_path):
    # examples of 11 slots: a group holds 5 (5 × 11 ≤ 64) but two rows of 32 hold only 4 → cut; the rest
    # starts the next micro-batch and the next group follows it as far as it fits
    c = read_corpus([write_jsonl(tmp_path / "d.jsonl", dolly(10, resp_len=7))], "dolly")
    ld = loader(c, batching="sorted", buffer_size=10, grad_accum=1)
    first = ld.next_microbatch()
    assert len(example_keys(first)) == 4 and ld.state["buffer"]["offset"] == 4
    seen = example_keys(first)
    for _ in range(2):
        keys = example_keys(ld.next_microbatch())
        assert len(keys) == 4  # no near-empty micro-batch after a cut
        seen += keys
    # groups g0, g1 of the first buffer (one epoch), then 2 examples of the next buffer's first group
    assert len(seen) == 12 and len(set(seen)) == 10
    assert ld.state["buffers"] == 2 and ld.state["buffer"]["group"] == 0 and ld.state["buffer"]["offset"] == 2
    assert ld.stats["layout_cut"] == 3 and ld.stats["layout_cut_examples"] == 1 + 2 + 3
    assert ld.stats["examples"] == 12


def test_sorted_lang_unit_microbatch_one_language_per_microbatch(tmp_path):
    paths = [write_jsonl(tmp_path / f"d.{lang}.jsonl", dolly(20, lang)) for lang in ("en", "fr", "ru")]
    c = read_corpus(paths, "dolly")
    ld = loader(c, batching="sorted", lang_unit="microbatch", buffer_size=30, grad_accum=1, rows=4)
    first = {3 + ord(lang[0]) % 200: lang for lang in ("en", "fr", "ru")}  # first token of the instruction
    langs_seen = set()
    for _ in range(30):
        mb = ld.next_microbatch()
        langs = {first[k[1]] for k in example_keys(mb)}
        assert len(langs) == 1
        langs_seen |= langs
    assert langs_seen == {"en", "fr", "ru"}


def test_precheck_tokenizes_once_and_counts_or_rejects_bad_records(tmp_path):
    rows = dolly(8)
    rows[2]["instruction"] = "BREAK"  # the template fails
    rows[5]["instruction"] = "NORESP"  # no response token
    rows[6]["response"] = "y" * 100  # over seq_len: skipped (over_budget), not a bad record
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    c = read_corpus([p], "dolly")
    calls = Counter()

    def encode(messages):
        calls[messages[0]["content"]] += 1
        if messages[0]["content"] == "BREAK":
            raise ValueError("boom")
        enc = fake_encode(messages)
        if messages[0]["content"] == "NORESP":
            enc.loss_mask = [0] * len(enc.ids)
        return enc

    ld = Loader(c, encode, seq_len=32, rows=2, grad_accum=2, seed=0, over_budget="skip")
    assert ld.stats == {
        "used": 5,
        "over_budget_truncated": 0,
        "over_budget_skipped": 1,
        "no_response_skipped": 1,
        "template_error_skipped": 1,
        "examples": 0,
        "layout_cut": 0,
        "layout_cut_examples": 0,
    }
    for _ in range(10):  # several epochs: nothing tokenized again, no bad record drawn
        b = ld.next_batch()
        assert b["weights"].sum() > 0
    assert set(calls.values()) == {1} and len(calls) == 8
    for bad, msg in (
        (2, r"e\.jsonl:3: cannot apply the chat template \(boom\) \(data\.bad_records='error'\)"),
        (5, r"e\.jsonl:3: no response token to train on \(data\.bad_records='error'\)"),
    ):
        only = read_corpus([write_jsonl(tmp_path / "e.jsonl", [*rows[:2], rows[bad]])], "dolly")
        with pytest.raises(DataError, match=msg):
            Loader(only, encode, seq_len=32, rows=2, grad_accum=1, seed=0, bad_records="error")
    with pytest.raises(DataError, match="no usable record"):
        Loader(read_corpus([write_jsonl(tmp_path / "f.jsonl", [rows[6]])], "dolly"), encode,
               seq_len=32, rows=1, grad_accum=1, seed=0, over_budget="skip")  # fmt: skip


# -- the chat-template loss mask on the real (embedded SmolLM2) tokenizer


def lima_record(line: int) -> list[dict[str, str]]:
    rec = json.loads(open("data/train/lima.en.jsonl").read().splitlines()[line - 1])
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t}
        for i, t in enumerate(rec["conversations"])
    ]


def masked_runs(enc) -> list[list[int]]:
    runs, cur = [], []
    for i, m in zip(enc.ids, enc.loss_mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def chat_tok(request, smollm2_dir):
    return ChatTokenizer(smollm2_dir, request.param)


def end_of_turn(tok: ChatTokenizer) -> str:
    return tok.tok.eos_token if tok.template_name == "llama-2" else "<|im_end|>"


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param(lambda: lima_record(54), id="lima-line-54"),
        pytest.param(
            lambda: [
                {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "\n\n\nHi there!\n\n\n"},
            ],
            id="blank-lines",
        ),
        pytest.param(
            lambda: [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another one?"},
                {"role": "assistant", "content": "\nGreen, of course.  "},
            ],
            id="multi-turn",
        ),
        pytest.param(lambda: lima_record(1030), id="lima-multi-turn"),
        pytest.param(
            lambda: [
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Bye."},
            ],
            id="assistant-first",
        ),
    ],
)
def test_encode_chat_masks_exactly_the_assistant_turns(chat_tok, messages):
    messages = messages()
    enc = chat_tok.encode_chat(messages)
    full = chat_tok.render(messages, add_generation_prompt=False)
    assert len(enc.ids) == len(enc.loss_mask)
    assert chat_tok.tok.decode(enc.ids) == full  # the ids are the rendered text
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = masked_runs(enc)
    assert len(runs) == len(answers)  # one trained span per assistant turn, nothing else
    eot = end_of_turn(chat_tok)
    for run, answer in zip(runs, answers):
        text = chat_tok.tok.decode(run)
        assert answer.strip() in text and eot in text  # the response and the token that closes it
        assert len(text) <= len(answer) + len(eot) + 3  # hardly anything from the prompt
    prompt_text = chat_tok.tok.decode([i for i, m in zip(enc.ids, enc.loss_mask) if not m])
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"].strip() in prompt_text


def prefix_mask(tok: ChatTokenizer, messages):
    """The previous token-prefix rule, for templates and texts where it holds."""
    ids, mask = [], []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            before = tok._ids(tok.render(messages[:i], add_generation_prompt=True))
            upto = tok._ids(tok.render(messages[: i + 1], add_generation_prompt=False))
            mask += [0] * (len(before) - len(ids)) + [1] * (len(upto) - len(before))
            ids = upto
    full = tok._ids(tok.render(messages, add_generation_prompt=False))
    return full, mask + [0] * (len(full) - len(ids))


def test_encode_chat_agrees_with_the_prefix_rule_where_it_held(chat_tok):
    recs = [json.loads(line) for line in open("data/train/dolly_subset.jsonl").read().splitlines()[:40]]
    for n, rec in enumerate(recs):
        messages = _dolly_messages(rec, f"dolly_subset.jsonl:{n + 1}")
        enc = chat_tok.encode_chat(messages)
        ids, mask = prefix_mask(chat_tok, messages)
        if ids[: len(mask)] == enc.ids[: len(mask)] and not rec["response"][:1].isspace():
            assert (enc.ids, enc.loss_mask) == (ids, mask)
