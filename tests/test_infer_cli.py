"""`python -m infer.main`: output schema, pass-through columns, bad input, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from records.schemas import GENERATION_SCHEMA, validate

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "infer.main", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )


def test_resume_after_sigkill_every_id_once(tiny_hf_dir, tmp_path):
    src = (ROOT / "data/eval/alpacaeval_test_subset.pt.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(src) + "\n", encoding="utf-8")
    out = tmp_path / "gen.parquet"
    args = (
        f"--model={tiny_hf_dir}",
        f"--input={inp}",
        f"--output={out}",
        "--max_new_tokens=8",
        "--batch_size=4",
        "--chunk_size=4",
    )
    proc = cli(*args)
    parts = tmp_path / "gen.parquet.parts"
    deadline = time.time() + 180
    while not (parts.exists() and len(list(parts.glob("part-*.parquet"))) >= 2):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no part written"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done_before = sum(pq.read_table(p).num_rows for p in parts.glob("part-*.parquet"))
    assert 8 <= done_before < 24
    rerun = cli(*args)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log
    assert f"{done_before} already answered" in log
    table = pq.read_table(out)
    validate(table, GENERATION_SCHEMA, str(out))
    ids = table.column("id").to_pylist()
    assert ids == [str(i) for i in range(24)]  # each exactly once, input order
    assert not parts.exists()
    row = table.slice(0, 1).to_pylist()[0]
    assert row["messages"] == json.loads(src[0]) and row["finish_reason"] in ("stop", "length")
    decoding = json.loads(row["decoding"])
    assert decoding["max_new_tokens"] == 8 and row["model"] == Path(tiny_hf_dir).name
    assert decoding["kernels"] == "native"  # --kernels=auto on one CPU device with float32 weights


def test_pass_through_and_bad_lines(tiny_hf_dir, tmp_path):
    inp = tmp_path / "in.jsonl"
    good = {"id": "a", "messages": [{"role": "user", "content": "Hi"}], "lang": "en", "task": "chat"}
    inp.write_text(
        json.dumps(good) + "\n{not json\n" + json.dumps({"id": "b", "prompt": "Bonjour", "lang": "fr"}) + "\n"
    )
    out = tmp_path / "o.parquet"
    bad = cli(f"--model={tiny_hf_dir}", f"--input={inp}", f"--output={out}", "--max_new_tokens=4")
    log = bad.communicate(timeout=300)[0]
    assert bad.returncode != 0 and f"{inp}:2:" in log and not out.exists()
    ok = cli(
        f"--model={tiny_hf_dir}", f"--input={inp}", f"--output={out}", "--max_new_tokens=4", "--skip_bad"
    )
    log = ok.communicate(timeout=300)[0]
    assert ok.returncode == 0, log
    rows = pq.read_table(out).to_pylist()
    assert [(r["id"], r["lang"]) for r in rows] == [("a", "en"), ("b", "fr")]
    assert rows[0]["task"] == "chat" and rows[1]["messages"] == [{"role": "user", "content": "Bonjour"}]
    assert f"{inp}:2:" in (tmp_path / "o.parquet.bad.txt").read_text()
