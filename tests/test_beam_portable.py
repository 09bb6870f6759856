"""The score and generate pipelines through Beam's portability layer give the DirectRunner's rows.

`PortableRunner` submits the pipeline (as its portable proto) to a job service over gRPC: here Beam's own
Python one (`apache_beam.runners.portability.local_job_service_main`, a subprocess on 127.0.0.1) with the
LOOPBACK environment (the SDK harness that runs our DoFns is this test process). Flink, Spark and Dataflow
Runner v2 take the same path with their own job service and workers (docs/scale.md).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines import generate, score
from beam_pipelines.io import read_outputs
from evalsuite import data
from tests.fake_openai_server import FakeOpenAIServer


@dataclass
class JobService:
    endpoint: str
    log: Path

    def args(self) -> list[str]:
        """The Beam flags that send a pipeline to this job service."""
        return ["--runner=PortableRunner", f"--job_endpoint={self.endpoint}", "--environment_type=LOOPBACK"]

    def jobs_done(self) -> int:
        return self.log.read_text().count("with state DONE")


@pytest.fixture(scope="module")
def job_service(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("job_service") / "job_service.log"
    cmd = [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={port}"]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:  # ready when it accepts connections
            assert proc.poll() is None, f"job service exited {proc.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"job service not up after 60 s: {log.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield JobService(f"localhost:{port}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def by_id(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_score_portable_equals_direct(job_service: JobService, tmp_path: Path) -> None:
    en = data.load_eval("en")
    rows = []
    for lang in ("en", "fr"):
        for r in data.load_eval(lang)[:2]:
            rows.append({**r.to_row(), "response": en[r.item].instruction, "model": "echo"})
        m = next(m for m in data.load_modifiers(lang) if m.modifier_type == "short")
        rows.append({**m.to_row(), "response": f"Answer {m.id}. Short.", "model": "echo"})
    rows[1]["response"] = "XLIT_GARBAGE_ALWAYS"  # the fake judge never answers it: a dead letter
    gens = tmp_path / "gens.parquet"
    pq.write_table(pa.Table.from_pylist(rows), gens)
    with FakeOpenAIServer(seed=1, fault_rate=0.0) as srv:
        args = [
            f"--generations={gens}",
            f"--judge=openai:gpt-3.5-turbo-0125@{srv.base_url}",
            f"--relevance=openai:llama-2-7b-chat@{srv.base_url}",
            "--nocache",  # each run asks the judge itself
            "--max_retries=2",
            "--parse_retries=1",
            "--backoff_s=0.001",
            "--batch_size=4",
        ]
        before = job_service.jobs_done()
        direct = score.run([*args, f"--output={tmp_path / 'direct' / 'scores'}"])
        port = score.run([*args, f"--output={tmp_path / 'portable' / 'scores'}", *job_service.args()])
    assert job_service.jobs_done() == before + 1  # the portable run went through the job service
    for summary in (direct, port):
        assert summary["counters"]["items"] == len(rows) and summary["counters"]["failures"] == 1, summary
        assert summary["counters"]["judge_calls"] > 0
    want = read_outputs(str(tmp_path / "direct" / "scores"))
    got = read_outputs(str(tmp_path / "portable" / "scores"))
    assert len(want) == len(rows) and got.schema == want.schema  # the dead-lettered item keeps its row
    assert by_id(got) == by_id(want)
    dead = [read_outputs(str(tmp_path / d / "scores"), ".deadletter") for d in ("direct", "portable")]
    assert by_id(dead[1]) == by_id(dead[0]) and [r["id"] for r in dead[0].to_pylist()] == [rows[1]["id"]]


def test_generate_portable_equals_direct(job_service: JobService, tiny_hf_dir: Path, tmp_path: Path) -> None:
    args = [
        f"--model={tiny_hf_dir}",
        "--eval=paper",
        "--langs=en,ru",
        "--limit=2",
        "--max_new_tokens=4",
        "--repetition_penalty=1.1",
        "--batch_size=4",
    ]
    before = job_service.jobs_done()
    direct = generate.run([*args, f"--output={tmp_path / 'direct' / 'gen'}"])
    port = generate.run([*args, f"--output={tmp_path / 'portable' / 'gen'}", *job_service.args()])
    assert job_service.jobs_done() == before + 1
    assert "files" in direct and "files" in port
    want = read_outputs(str(tmp_path / "direct" / "gen"))
    got = read_outputs(str(tmp_path / "portable" / "gen"))
    assert len(want) == 4 and all(r["response_tokens"] > 0 and not r["error"] for r in want.to_pylist())
    assert got.schema == want.schema and by_id(got) == by_id(want)
