"""Continuous batching (infer/slots.py): more prompts than slots, rows ending at different steps (EOS or
their own max_new_tokens), slots refilled and the cache compacted; the tokens equal transformers' greedy
decoding of each prompt alone (tiny random model and SmolLM2), and the static path's for stop strings,
streaming, log-probs, constraints and sampling. A 2x2x2 CPU mesh keeps the slot cache sharded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from infer.decode import DecodeParams
from infer.engine import Engine
from infer.rows import Row
from tests.infer_helpers import eval_prompts, hf_greedy

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = eval_prompts({"en": [0, 4, 9], "fr": [1, 7, 20], "pt": [2, 11], "ru": [3]})  # 9, mixed lengths
BUDGETS = [5, 24, 9, 16, 3, 20, 12, 7, 18]  # max_new_tokens per prompt


@pytest.fixture(scope="module")
def engine(tiny_hf_dir) -> Engine:
    return Engine.from_path(tiny_hf_dir, max_batch=3)


@pytest.fixture(scope="module")
def prompt_ids(engine) -> list[list[int]]:
    ids = [engine.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) > 5, "prompts should have mixed lengths"
    return ids


def params_for(budgets: list[int], **kw) -> list[DecodeParams]:
    return [DecodeParams(max_new_tokens=b, repetition_penalty=1.1, **kw) for b in budgets]


def test_continuous_equals_hf_greedy_of_each_prompt_alone(engine, tiny_hf_dir, prompt_ids):
    hf = AutoModelForCausalLM.from_pretrained(tiny_hf_dir).eval()
    params = params_for(BUDGETS)
    first = engine.generate_ids(prompt_ids, params, batching="static")
    # two tokens made "EOS": rows containing them stop there (at different steps), the others run to their budget
    eos = [first[1].ids[6], first[5].ids[11]]
    eng = engine.derive(name="tiny-eos", eos_ids=eos)
    got = eng.generate_ids(prompt_ids, params)  # continuous: 9 prompts through 3 slots
    for i, (ids, budget) in enumerate(zip(prompt_ids, BUDGETS, strict=True)):
        want = hf_greedy(hf, [ids], budget, 1.1, eos=eos)[0]
        assert got[i].ids == want, f"prompt {i}"
        stopped = bool(want) and want[-1] in eos
        assert got[i].finish_reason == ("stop" if stopped else "length"), f"prompt {i}"
        assert (got[i].prompt_tokens, got[i].response_tokens) == (len(ids), len(want))
    reasons = [r.finish_reason for r in got]
    assert reasons.count("stop") >= 2 and reasons.count("length") >= 2, reasons
    assert len({r.response_tokens for r in got}) >= 5
    assert [r.ids for r in eng.generate_ids(prompt_ids, params, batching="static")] == [r.ids for r in got]


def test_slots_admit_as_requests_arrive_and_compact(engine, prompt_ids):
    """The server's use: rows submitted between steps; a small cache forces compactions."""
    params = params_for(BUDGETS)
    want = engine.generate_ids(prompt_ids, params, batching="static")
    extent = max(len(i) + b for i, b in zip(prompt_ids, BUDGETS, strict=True))
    slots = engine.slots(2, cache_len=extent + 8, out_len=32, segment=4)
    got: dict[int, object] = {}
    arrivals = {0: [0, 1, 2], 1: [3], 3: [4, 5], 6: [6, 7, 8]}  # step number -> rows arriving then
    step = 0
    while slots.busy or step <= max(arrivals):
        for i in arrivals.get(step, []):
            slots.submit(Row(i, prompt_ids[i], params[i]))
        for row, res in slots.step():
            assert row.index not in got
            got[row.index] = res
        step += 1
    assert sorted(got) == list(range(len(prompt_ids)))
    for i, w in enumerate(want):
        assert (got[i].ids, got[i].text, got[i].finish_reason) == (w.ids, w.text, w.finish_reason), i
    assert slots.compactions >= 2, slots.compactions
    assert len(slots.prefills) >= 5 and not slots.busy


def test_a_long_prompt_admitted_early_does_not_starve_a_live_row(engine):
    """Regression: a prompt whose bucket is above the cursor used to move the shared cursor up, using up a
    live row's cache room; with no room to compact, decoding stopped making progress. Now the live row's
    entries move right instead, and both rows finish as they would alone."""
    a = Row(0, list(range(3, 19)), DecodeParams(max_new_tokens=96))  # 16 + 96 = the slots' 112 positions
    b = Row(1, list(range(3, 103)), DecodeParams(max_new_tokens=12))  # bucket 112 > the cursor (32) below
    want = engine.generate_ids([a.ids, b.ids], [a.params, b.params], batching="static")
    slots = engine.slots(2, cache_len=128)
    assert slots.capacity == 112
    slots.submit(a)
    assert slots.step() == [] and slots.cursor == 32
    slots.submit(b)
    got = {}
    for _ in range(20):  # a needs 80 more steps: 5 segments, plus one for b's admission
        got.update({row.index: res for row, res in slots.step()})
        if not slots.busy:
            break
    assert not slots.busy, "decoding stopped making progress"
    assert [got[0].ids, got[1].ids] == [want[0].ids, want[1].ids]
    assert (got[0].response_tokens, got[1].response_tokens) == (96, 12)


def test_stop_strings_streaming_and_logprobs_match_static(engine, prompt_ids):
    base = engine.generate_ids(prompt_ids, params_for(BUDGETS), batching="static")
    text = base[1].text
    stop = text[len(text) // 3 : len(text) // 3 + 4]
    assert stop.strip()
    params = params_for(BUDGETS, stop=(stop,))
    lps = [None, 3, 0, None, 2, None, 1, None, 5]
    runs = {}
    for mode in ("static", "continuous"):
        streamed: dict[int, list[str]] = {}
        finals: list[int] = []

        def on_delta(i, delta, finished, streamed=streamed, finals=finals):
            streamed.setdefault(i, []).append(delta)
            if finished:
                finals.append(i)

        runs[mode] = engine.generate_ids(prompt_ids, params, on_delta=on_delta, logprobs=lps, batching=mode)
        for i, r in enumerate(runs[mode]):  # deltas go to the prompt's own index and add up to its text
            assert "".join(streamed[i]) == r.text, (mode, i)
        assert sorted(finals) == list(range(len(prompt_ids)))
    got, want = runs["continuous"], runs["static"]
    assert got[1].text == text[: text.index(stop)] and got[1].finish_reason == "stop"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert (g.ids, g.text, g.finish_reason) == (w.ids, w.text, w.finish_reason), i
        if lps[i] is None:
            assert g.logprobs is None
            continue
        assert len(g.logprobs) == len(g.ids)
        for (gc, gtop), (wc, wtop) in zip(g.logprobs, w.logprobs, strict=True):
            assert gc == pytest.approx(wc, abs=1e-4)
            assert [t for t, _ in gtop] == [t for t, _ in wtop] and len(gtop) == lps[i]
        assert g.logprobs[0][0] <= 0


def test_constrained_and_sampled_rows_share_the_slots(engine):
    msgs = [[{"role": "user", "content": f"Describe item {i} as JSON."}] for i in range(7)]
    params = [DecodeParams(max_new_tokens=10 + 3 * i, temperature=0.8 * (i % 2), seed=i) for i in range(7)]
    cons = [engine.json_constraint() if i in (0, 3, 4) else None for i in range(7)]
    got = engine.generate(msgs, params, constraints=cons)
    for i in (0, 3, 4):
        assert isinstance(json.loads(got[i].text), dict), got[i].text
    free = [i for i in range(7) if cons[i] is None]  # greedy and seeded sampling: same tokens as static
    want = engine.generate_ids(
        [engine.encode(msgs[i]) for i in free], [params[i] for i in free], batching="static"
    )
    assert [got[i].ids for i in free] == [w.ids for w in want]


def test_bad_options_and_rows_are_reported(engine, prompt_ids):
    with pytest.raises(ValueError, match="batching"):
        engine.generate_ids(prompt_ids[:1], DecodeParams(max_new_tokens=2), batching="dynamic")
    slots = engine.slots(2, cache_len=64, segment=8)
    with pytest.raises(ValueError, match="exceeds the 56 positions"):
        slots.submit(Row(0, [1] * 40, DecodeParams(max_new_tokens=20)))
    res = engine.generate_ids([[], prompt_ids[0]], DecodeParams(max_new_tokens=3))
    assert res[0].finish_reason == "error" and res[1].response_tokens == 3


def test_smollm2_continuous_equals_hf_greedy(smollm2_dir):
    """7 prompts of mixed lengths through 3 slots; rows 0, 1 and 3 end at EOS (steps 8, 24, 10)."""
    msgs = [
        "What is the capital of France? Answer with one word.",
        "Say hello.",
        "Is 7 a prime number? Reply yes or no.",
        "Translate 'good morning' into Spanish. Give only the translation.",
    ]
    prompts = [[{"role": "user", "content": m}] for m in msgs] + eval_prompts({"en": [14, 6], "fr": [14]})
    budgets = [24, 32, 12, 24, 6, 20, 16]
    engine = Engine.from_path(smollm2_dir, max_batch=3)
    ids = [engine.encode(p) for p in prompts]
    assert len({len(i) for i in ids}) >= 6
    got = engine.generate_ids(ids, params_for(budgets))
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    for i, (p, budget) in enumerate(zip(ids, budgets, strict=True)):
        want = hf_greedy(hf, [p], budget, 1.1, eos=engine.eos_ids)[0]
        assert got[i].ids == want, f"prompt {i}: {engine.tokenizer.decode(got[i].ids)!r}"
    reasons = [r.finish_reason for r in got]
    assert reasons.count("stop") >= 2 and reasons.count("length") >= 2, reasons


SHARDED = r"""
import sys
import jax
assert jax.device_count() == 8, jax.devices()
from infer.decode import DecodeParams
from infer.engine import Engine
from infer.rows import Row
from models.sharding import make_mesh

path = sys.argv[1]
one = Engine.from_path(path, max_batch=8)
prompts = [one.encode("Once upon a time" + " there" * i) for i in range(11)]
params = [DecodeParams(max_new_tokens=4 + 2 * i, repetition_penalty=1.2) for i in range(11)]
ref = one.generate_ids(prompts, params, batching="static")
sharded = Engine.from_path(path, max_batch=8, mesh=make_mesh(2, 2, 2))
got = sharded.generate_ids(prompts, params)
assert [r.ids for r in got] == [r.ids for r in ref], ([r.ids for r in got], [r.ids for r in ref])
slots = sharded.slots(8, cache_len=128, out_len=32)
for i in range(3):
    slots.submit(Row(i, prompts[i], params[i]))
slots.step()
k = slots.state.cache["k"]  # [L, slots, K, S, H]: slots over data x fsdp, KV heads over tensor
assert k.addressable_shards[0].data.shape == (2, 2, 1, 128, 16), k.addressable_shards[0].data.shape
assert slots.state.seen.addressable_shards[0].data.shape[0] == 2, slots.state.seen.sharding
print("OK")
"""


def test_sharded_slots_keep_cache_sharded_and_tokens(tiny_hf_dir: Path) -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tiny_hf_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_server_scheduler_survives_a_request_that_cannot_enter(engine):
    """infer.batcher.SlotScheduler: a request whose constraint cannot be built gets its error, and the
    worker thread keeps serving the next one (answered as greedy decoding alone)."""
    import asyncio
    import dataclasses

    from infer.batcher import Job, SlotScheduler
    from infer.json_constraint import JsonVocab

    @dataclasses.dataclass
    class BrokenFormat:
        grammar: str = "this is not a grammar"

    ids = engine.encode("Hello there")
    params = DecodeParams(max_new_tokens=6)

    async def serve() -> tuple[object, object]:
        vocab = JsonVocab(engine.tokenizer, engine.cfg.vocab_size, engine.eos_ids)
        sched = SlotScheduler(engine, 2, 256, vocab)
        bad = sched.submit(Job("Hello there", ids, params, BrokenFormat(), False))
        good = sched.submit(Job("Hello there", ids, params, None, False))
        return await asyncio.wait_for(bad.result(), 120), await asyncio.wait_for(good.result(), 120)

    bad, good = asyncio.run(serve())
    assert isinstance(bad, Exception)
    assert good.ids == engine.generate_ids([ids], [params], batching="static")[0].ids


def test_size_buckets_windows_and_prefill_groups():
    from infer.decode import size_bucket
    from infer.slots import prefill_groups, window_size

    assert [size_bucket(n, 16) for n in (1, 16, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385)] == [
        16, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
    ]  # fmt: skip
    assert [window_size(n, 300) for n in (1, 64, 65, 100, 200, 299)] == [64, 64, 96, 128, 256, 300]
    # cost = rows bucket x prompt bucket + 256 per call: [20]*4 + [200]*2 -> 4x24 + 2x256 + 2x256 = 1120,
    # against one call 8x256 + 256 = 2304; [20, 22] -> one call (2x24 + 256 < 2x(24 + 256))
    assert prefill_groups([20, 20, 20, 20, 200, 200]) == [4, 2]
    assert prefill_groups([20, 22]) == [2]
    assert prefill_groups([]) == []


def test_attention_window_reads_only_live_entries(engine, prompt_ids):
    """Slots decode with attention over a window that ends at the cursor (`infer.slots.window_size`): the
    tokens stay those of the static path, and the window really is narrower than the cache (a window that
    leaves out live entries changes the tokens, so the window is not ignored)."""
    import numpy as np

    from infer.decode import RowParams, left_pad

    params = params_for(BUDGETS)
    want = engine.generate_ids(prompt_ids, params, batching="static")
    slots = engine.slots(3, cache_len=512, out_len=32)
    got = slots.run([Row(i, ids, params[i]) for i, ids in enumerate(prompt_ids)])
    assert [r.ids for r in got] == [r.ids for r in want]
    assert slots.windows and max(slots.windows) < 512, slots.windows

    dec, ids = engine.decoder, prompt_ids[:2]
    p = max(len(x) for x in ids)
    tokens, mask = left_pad(ids, p, 2, dec.pad_id)
    row = RowParams.build(params_for([20, 20]), 2)

    def run(window):
        state = dec.prefill(tokens, mask, 256, 32)
        return np.asarray(dec.decode(state, row, 20, window=window).out)

    full = run(None)
    assert (run(p + 20) == full).all()  # the window holds every entry: same tokens, 256 -> p + 20 read
    assert not (run(p) == full).all()  # the longest prompt's first entries left out: other tokens
