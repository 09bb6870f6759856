"""Beam generation pipeline: RunInference around the JAX engine gives infer.main's records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import generate
from beam_pipelines.io import Output, read_outputs
from evalsuite import data
from infer.decode import DecodeParams

ROOT = Path(__file__).resolve().parents[1]


def rows() -> list[dict]:
    out = []
    for lang in ("en", "ru"):
        out += [r.to_row() for r in data.load_eval(lang)[:3]]
    return out


def test_generate_equals_infer_main(tiny_hf_dir: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.parquet"
    pq.write_table(
        data.instructions_table([r for lang in ("en", "ru") for r in data.load_eval(lang)[:3]]), inp
    )
    ref_path = tmp_path / "ref.parquet"
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infer.main",
            f"--model={tiny_hf_dir}",
            f"--input={inp}",
            f"--output={ref_path}",
            "--max_new_tokens=5",
            "--batch_size=4",
        ],
        cwd=ROOT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    params = DecodeParams(max_new_tokens=5, repetition_penalty=1.1)
    handler = generate.EngineHandler(str(tiny_hf_dir), params, batch_size=4)
    out = Output(str(tmp_path / "beam" / "gen"))
    p = BeamTestPipeline()
    gen = generate.build(p, out, handler, rows=rows())
    log, _ = cli.communicate(timeout=300)
    assert cli.returncode == 0, log[-3000:]
    ref = pq.read_table(ref_path).to_pylist()
    assert len(ref) == 6 and all(r["response_tokens"] > 0 for r in ref)
    assert_that(gen, equal_to(ref))
    p.run().wait_until_finish()
    out.commit({})
    got = read_outputs(str(tmp_path / "beam" / "gen"))
    assert sorted(got.to_pylist(), key=lambda r: r["id"]) == sorted(ref, key=lambda r: r["id"])
    assert got.schema.field("item").type == "int32" and got.schema.field("response_tokens").type == "int32"
