"""Decoding on the tiny random model: token-exact parity with transformers generate, batch invariance,
EOS and stop strings, rows finishing at different steps, sampling, the JSON-object constraint."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from infer.decode import DecodeParams, bucket, first_argmax
from infer.engine import Engine
from tests.constraint_helpers import RICH_SCHEMA, check_rich
from tests.infer_helpers import eval_prompts, hf_greedy

PROMPTS = eval_prompts(
    {"en": [0, 4, 9], "fr": [1, 7, 20], "pt": [2, 11], "ru": [3, 15, 30]}
)  # 11, mixed lengths
N = 16


@pytest.fixture(scope="module")
def engine(tiny_hf_dir) -> Engine:
    return Engine.from_path(tiny_hf_dir, max_batch=16)


@pytest.fixture(scope="module")
def hf(tiny_hf_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_hf_dir).eval()


@pytest.fixture(scope="module")
def prompt_ids(engine) -> list[list[int]]:
    ids = [engine.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) > 5, "prompts should have mixed lengths"
    return ids


@pytest.mark.parametrize("penalty", [1.1, 1.2])
def test_greedy_parity_with_transformers(engine, hf, prompt_ids, penalty):
    ours = engine.generate(PROMPTS, DecodeParams(max_new_tokens=N, repetition_penalty=penalty))
    for i, ids in enumerate(prompt_ids):  # HF one prompt at a time: the semantics without padding
        ref = hf_greedy(hf, [ids], N, penalty)[0]
        assert ours[i].ids == ref, f"prompt {i} (penalty {penalty})"
        assert ours[i].prompt_tokens == len(ids)
        assert ours[i].response_tokens == len(ref)


def test_results_do_not_depend_on_batch_composition(tiny_hf_dir, engine, prompt_ids):
    params = DecodeParams(max_new_tokens=N, repetition_penalty=1.2)
    full = engine.generate_ids(prompt_ids, params)
    small = engine.derive(name="tiny", max_batch=3)
    reordered = small.generate_ids(prompt_ids[::-1], params)[::-1]
    alone = [engine.generate_ids([p], params)[0] for p in prompt_ids[:2]]
    assert [r.ids for r in reordered] == [r.ids for r in full]
    assert [r.ids for r in alone] == [r.ids for r in full[:2]]


def test_eos_rows_finish_at_different_steps(engine, hf, prompt_ids):
    params = DecodeParams(max_new_tokens=N, repetition_penalty=1.1)
    base = engine.generate_ids(prompt_ids[:4], params)
    # make the 3rd token of row 0 and the 8th token of row 1 "EOS": those rows must stop there, others go on
    eos = [base[0].ids[2], base[1].ids[7]]
    eng = engine.derive(name="tiny-eos", max_batch=16, eos_ids=eos)
    got = eng.generate_ids(prompt_ids[:4], params)
    for b, g, ids in zip(base, got, prompt_ids[:4], strict=True):
        cut = next((k for k, t in enumerate(b.ids) if t in eos), None)
        want = b.ids if cut is None else b.ids[: cut + 1]
        assert g.ids == want
        assert g.finish_reason == ("stop" if cut is not None else "length")
        assert g.ids == hf_greedy(hf, [ids], N, 1.1, eos=eos)[0]
    assert len(got[0].ids) == 3 and len(got[1].ids) <= 8 and len({len(g.ids) for g in got}) > 1


def test_stop_strings_cut_text_and_end_row(engine, prompt_ids):
    params = DecodeParams(max_new_tokens=24, repetition_penalty=1.1)
    base = engine.generate_ids(prompt_ids[:3], params)
    text = base[0].text
    stop = text[len(text) // 3 : len(text) // 3 + 4]
    assert stop.strip()
    got = engine.generate_ids(
        prompt_ids[:3], DecodeParams(max_new_tokens=24, repetition_penalty=1.1, stop=(stop,))
    )
    assert got[0].text == text[: text.index(stop)]
    assert got[0].finish_reason == "stop" and got[0].response_tokens < base[0].response_tokens
    assert got[0].ids == base[0].ids[: got[0].response_tokens]
    for b, g in zip(base[1:], got[1:], strict=True):  # other rows: unchanged unless they contain the stop too
        if stop not in b.text:
            assert (g.ids, g.text, g.finish_reason) == (b.ids, b.text, b.finish_reason)


def test_sampling_is_seeded_per_row(engine, prompt_ids):
    p = [DecodeParams(max_new_tokens=N, temperature=0.9, top_p=0.9, seed=s) for s in (1, 2, 1)]
    a = engine.generate_ids([prompt_ids[0]] * 3, p)
    b = engine.generate_ids([prompt_ids[5], prompt_ids[0]], [p[2], p[0]])
    assert a[0].ids == a[2].ids == b[1].ids
    assert a[0].ids != a[1].ids
    greedy = engine.generate_ids([prompt_ids[0]], DecodeParams(max_new_tokens=N))[0]
    assert greedy.ids != a[0].ids


def test_json_object_constraint_always_parses(engine):
    msgs = [[{"role": "user", "content": f"Describe item {i} as JSON."}] for i in range(20)]
    params = [DecodeParams(max_new_tokens=12 + i % 3, temperature=0.7 * (i % 2), seed=i) for i in range(20)]
    res = engine.generate(msgs, params, constraints=[engine.json_constraint() for _ in msgs])
    for r in res:
        assert isinstance(json.loads(r.text), dict), r.text


def test_json_constraint_closes_nested_structures(engine):
    c = engine.json_constraint()
    tok = engine.tokenizer.tok
    for t in tok('{"a": [1, {"b": "x', add_special_tokens=False)["input_ids"]:
        assert c.allowed(100)[t]
        c.advance(t)
    assert c.closing_text() == '"}]}'
    assert json.loads('{"a": [1, {"b": "x' + c.closing_text()) == {"a": [1, {"b": "x"}]}
    assert not c.allowed(100)[tok.eos_token_id]  # EOS only once the object is complete


def test_json_schema_constraint_mixes_with_other_rows(engine):
    from infer.json_constraint import JsonVocab, parse_response_format

    vocab = JsonVocab(engine.tokenizer, engine.cfg.vocab_size, engine.eos_ids)
    fmt = parse_response_format({"type": "json_schema", "json_schema": {"schema": RICH_SCHEMA}})
    msgs = [[{"role": "user", "content": f"Describe pupil {i} as JSON."}] for i in range(6)]
    params = [
        DecodeParams(max_new_tokens=40 + 8 * (i % 3), temperature=0.8 * (i % 2), seed=i) for i in range(5)
    ]
    params.append(DecodeParams(max_new_tokens=40))  # greedy: its tokens do not depend on the batch
    cons = [vocab.constraint(fmt.grammar) for _ in range(4)] + [engine.json_constraint(), None]
    res = engine.generate(msgs, params, constraints=cons)
    for r in res[:4]:
        check_rich(json.loads(r.text))
    assert isinstance(json.loads(res[4].text), dict)
    assert res[5].text == engine.generate(msgs[5:], params[5:])[0].text  # unconstrained rows are untouched


def test_bad_prompts_are_reported_not_dropped(engine):
    res = engine.generate([[{"role": "user", "content": "hi"}], []], DecodeParams(max_new_tokens=4))
    assert res[0].finish_reason in ("stop", "length")
    assert res[1].finish_reason == "error" and res[1].error


def test_buckets_are_powers_of_two():
    assert [bucket(n, 16) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    assert bucket(5, maximum=4) == 4
    with pytest.raises(ValueError, match="top_p"):
        DecodeParams(top_p=0)


def test_first_argmax_takes_the_first_of_tied_maxima():
    import numpy as np

    rows = np.array(
        [[0.0, 3.0, 3.0, -1.0], [5.0, 5.0, 5.0, 5.0], [-2.0, -3.0, -1.0, -1.0], [1e-30, 0.0, -0.0, 1e-30]],
        np.float32,
    )
    assert first_argmax(rows).tolist() == [1, 0, 2, 0]
    rng = np.random.default_rng(0)
    ties = rng.integers(0, 5, (64, 1000)).astype(np.float32)  # many ties per row
    assert first_argmax(ties).tolist() == np.argmax(ties, axis=-1).tolist()
