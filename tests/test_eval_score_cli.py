"""End to end: `python -m evalsuite.score` and `python -m reporting.summary` as subprocesses, the judge
and relevance against the fault-injecting server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_openai_server import CRITERIA_KEYS, FakeOpenAIServer, binary_verdict, judge_stars

from evalsuite import data
from evalsuite.prompts import judge_prompt, relevance_prompt
from evalsuite.records import read_generations
from records.files import RecordError, atomic_write_parquet

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-xlit-e2e-SECRET-987654321"
CRIT = dict(zip(CRITERIA_KEYS, ("language", "fluency", "helpfulness", "factuality", "logic", "harmlessness")))


def run(module, *args, env_extra=None, timeout=240):
    env = {**os.environ, "OPENAI_API_KEY": SECRET, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def echo_452(tmp_path_factory):
    """The 452 evaluation prompts, each answered with the English prompt (as the issue suggests)."""
    en = data.load_eval("en")
    rows = [
        {**r.to_row(), "response": en[r.item].instruction, "model": "echo-en"}
        for lang in data.LANGS
        for r in data.load_eval(lang)
    ]
    path = tmp_path_factory.mktemp("gen") / "echo452.parquet"
    atomic_write_parquet(pa.Table.from_pylist(rows), path)
    return path


def test_surface_metrics_on_452_prompts(echo_452, tmp_path):
    out = tmp_path / "scores.parquet"
    p = run("evalsuite.score", f"--generations={echo_452}", f"--output={out}")
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 452 and summary["judge"] == {"ok": 0, "failed": 0, "skipped": 452}
    t = pq.read_table(out)
    assert t.num_rows == 452 and t.column("id").to_pylist()[:2] == ["paper-en-000", "paper-en-001"]
    rows = t.to_pylist()
    assert {r["lang"]: 0 for r in rows}.keys() == {"en", "fr", "pt", "ru"}
    assert all(r["lang_correct"] == (r["lang"] == "en") for r in rows)  # English echoed everywhere
    assert all(r["lang_pred"] == "en" for r in rows)
    assert all(r["model"] == "echo-en" and r["task"] for r in rows)  # passed through
    assert all(r["relevance_status"] == "skipped" and r["judge_helpfulness_mod"] is None for r in rows)
    en_spell = [r["spell_ok_rate"] for r in rows if r["lang"] == "en"]
    ru_spell = [r["spell_ok_rate"] for r in rows if r["lang"] == "ru"]
    assert min(en_spell) > 0.85 and max(ru_spell) == 0.0  # English words fail the Russian dictionary
    assert "surface metrics: 452 responses" in p.stderr


def judge_rows():
    rows = []
    for lang in data.LANGS:
        for r in data.load_eval(lang)[:12]:
            rows.append({**r.to_row(), "response": f"Answer {r.id}: {r.instruction[:60]}"})
        mods = data.load_modifiers(lang)
        for mtype, k in (("short", 2), ("scientific_style", 2), ("complex_inst", 1)):
            for r in [m for m in mods if m.modifier_type == mtype][:k]:
                rows.append({**r.to_row(), "response": f"Answer {r.id}. Short."})
    rows[5]["response"] = "XLIT_GARBAGE_ALWAYS"
    return rows


def test_judge_end_to_end_with_faults_then_cache_only(tmp_path):
    rows = judge_rows()
    gens = tmp_path / "gens.jsonl"
    gens.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out1, out2 = tmp_path / "s1.parquet", tmp_path / "s2.parquet"
    with FakeOpenAIServer(seed=7, fault_rate=0.4, hang_s=1.0, require_key=SECRET) as srv:
        common = [
            f"--generations={gens}",
            f"--judge=openai:gpt-3.5-turbo-0125@{srv.base_url}",
            f"--relevance=openai:llama-2-7b-chat@{srv.base_url}",
            f"--cache_dir={tmp_path / 'cache'}",
            "--timeout_s=0.5",
            "--backoff_s=0.005",
            "--backoff_max_s=0.02",
            "--max_retries=10",
            "--concurrency=16",
        ]
        p1 = run("evalsuite.score", *common, f"--output={out1}")
        assert p1.returncode == 0, p1.stderr[-3000:]
        calls = srv.stats["requests"]
        faults = calls - srv.stats["ok"]
        print(f"fault share {faults / calls:.3f} of {calls} calls")
        assert faults / calls >= 0.30  # the server really injected faults on >= 30% of calls
        p2 = run("evalsuite.score", *common, f"--output={out2}")
        assert p2.returncode == 0, p2.stderr[-3000:]
        assert srv.stats["requests"] == calls  # second run: cache only, zero HTTP calls
    for text in (p1.stdout, p1.stderr, p2.stdout, p2.stderr, out1.read_bytes().decode("latin-1")):
        assert SECRET not in text
    t1, t2 = pq.read_table(out1).to_pylist(), pq.read_table(out2).to_pylist()
    assert [r["id"] for r in t1] == [r["id"] for r in rows]  # none lost, order kept
    assert t1 == t2
    n_llm_mod = 0
    for src, r in zip(rows, t1):
        assert r["judge_status"] in ("ok", "failed") and r["relevance_status"] in ("ok", "failed")
        if r["judge_status"] == "failed":
            assert r["judge_raw"] and r["judge_error"] and r["judge_helpfulness"] is None
        else:
            stars = judge_stars(judge_prompt(src["messages"][-1]["content"], src["response"]))
            assert {c: r[f"judge_{c}"] for c in CRIT.values()} == {CRIT[k]: v - 1 for k, v in stars.items()}
        if r["relevance_status"] == "ok":
            assert r["relevance"] == binary_verdict(
                relevance_prompt(src["messages"][-1]["content"], src["response"])
            )
        if src["modifier_type"] in ("scientific_style", "complex_inst"):
            n_llm_mod += 1
            assert r["modifier_status"] in ("ok", "failed")
        if src["modifier_type"] == "short":
            assert (r["modifier_ok"], r["modifier_status"]) == (True, "ok")
        if src["modifier_type"] and r["judge_status"] == "ok" and r["modifier_ok"] is not None:
            cap = r["judge_helpfulness"] if r["modifier_ok"] else min(r["judge_helpfulness"], 1)
            assert r["judge_helpfulness_mod"] == cap
    assert n_llm_mod == 12
    garbage = t1[5]
    # the raw reply of the last attempt: the server's refusal (or an injected garbage completion)
    assert garbage["judge_status"] == "failed" and garbage["judge_error"].startswith("unparseable reply")
    assert garbage["judge_raw"] in ("I am sorry, I cannot evaluate this.", "\x00garbage\x00 ]]}{")
    assert garbage["relevance_status"] == "failed"

    # the summary prints every table from the scores
    scored = pq.read_table(out1)
    lrs = pa.array([1e-5 if i % 2 else 1e-4 for i in range(scored.num_rows)])
    with_lr = tmp_path / "with_lr.parquet"
    atomic_write_parquet(scored.append_column("lr", lrs), with_lr)
    js = tmp_path / "tables.json"
    p = run("reporting.summary", f"--scores={with_lr}", "--n_boot=100", f"--output_json={js}")
    assert p.returncode == 0, p.stderr[-2000:]
    for header in (
        "en vs mean(fr,pt,ru)",
        "per language",
        "per task",
        "Task modifiers",
        "Surface metrics",
        "LR chosen",
    ):
        assert header in p.stdout
    tables = json.loads(js.read_text())
    assert {r["criterion"] for r in tables["main_en_vs_nonen"]} == set(CRIT.values())
    assert set(tables["selected_lr"]) == {"with_lr"}


BAD_INPUTS = [
    ('{"id": "a", "lang": "en", "messages": [{"role": "user", "content": "q"}]}', "gens.jsonl:1: field 'response' must be a string (missing)"),
    ('{"id": "a", "lang": "en", "messages": [], "response": "r"}', "gens.jsonl:1: field 'messages' must be a non-empty list"),
    ('{"id": 7, "lang": "en", "messages": [{"role": "user", "content": "q"}], "response": "r"}', "gens.jsonl:1: field 'id' must be a string (int)"),
    ('{"id": "a", "lang": "en", "messages": [{"role": "user", "content": "q"}], "response": null}', "gens.jsonl:1: field 'response' must be a string (null)"),
    ('{"id": "a", "lang": "en", "messages": [{"role": "user", "content": "q"}], "response": "r", "modifier_type": "lang"}', "gens.jsonl:1: modifier_type 'lang' needs field 'modifier_arg'"),
    ('{"id": "a", "lang": "en", "messages": [{"role": "user", "content": "q"}], "response": "r"}\n{"id": "a", "lang": "en", "messages": [{"role": "user", "content": "q"}], "response": "r"}', "gens.jsonl:2: duplicate id 'a' (first at"),
    ('{"id": "a", "lang": "en", "messages": [{"role": "user", "content": "q"}], "response": "r"}\n{"id": "b", oops', "gens.jsonl:2: invalid JSON"),
]  # fmt: skip


@pytest.mark.parametrize("content, message", BAD_INPUTS)
def test_bad_input_names_file_line_and_field(tmp_path, content, message):
    gens = tmp_path / "gens.jsonl"
    gens.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(RecordError) as e:
        read_generations(gens)
    assert message in str(e.value)


def test_bad_input_exits_2_without_output(tmp_path):
    gens = tmp_path / "gens.jsonl"
    gens.write_text(BAD_INPUTS[0][0] + "\n", encoding="utf-8")
    p = run("evalsuite.score", f"--generations={gens}", f"--output={tmp_path / 'o.parquet'}")
    assert p.returncode == 2 and BAD_INPUTS[0][1] in p.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_parquet_missing_column_and_cost_cap(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"id": ["a"], "lang": ["en"], "messages": [[{"role": "user", "content": "q"}]]}), bad
    )
    with pytest.raises(RecordError, match=r"bad\.parquet: missing column\(s\) \['response'\]"):
        read_generations(bad)
    nulls = tmp_path / "nulls.parquet"
    msgs = [[{"role": "user", "content": "q"}]] * 2
    pq.write_table(
        pa.table({"id": ["a", "b"], "lang": ["en", "en"], "messages": msgs, "response": ["r", None]}), nulls
    )
    with pytest.raises(
        RecordError, match=r"nulls\.parquet: row 1: field 'response' must be a string \(null\)"
    ):
        read_generations(nulls)

    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"x{i}",
                    "lang": "en",
                    "messages": [{"role": "user", "content": "q" * 400}],
                    "response": "r" * 400,
                }
            )
            + "\n"
            for i in range(10)
        )
    )
    with FakeOpenAIServer(seed=0, fault_rate=0.0) as srv:
        args = [
            f"--generations={good}",
            f"--output={tmp_path / 'o.parquet'}",
            f"--judge=openai:gpt-4o@{srv.base_url}",
        ]
        args.append(f"--cache_dir={tmp_path / 'c'}")
        est = run("evalsuite.score", *args, "--estimate_only")
        assert est.returncode == 0
        estimate = json.loads(est.stdout.strip().splitlines()[-1])
        assert estimate["estimate"]["judge"]["calls"] == 10 and estimate["estimated_cost_usd"] > 0.001
        capped = run("evalsuite.score", *args, "--max_cost_usd=0.001")
        assert capped.returncode == 2 and "exceeds --max_cost_usd=0.001; nothing was called" in capped.stderr
        assert srv.stats["requests"] == 0
