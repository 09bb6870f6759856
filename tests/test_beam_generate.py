"""Beam generation pipeline: RunInference around the JAX engine gives infer.main's records."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import generate
from beam_pipelines.io import Output, read_outputs
from evalsuite import data
from infer.decode import DecodeParams


def rows() -> list[dict]:
    out = []
    for lang in ("en", "ru"):
        out += [r.to_row() for r in data.load_eval(lang)[:2]]
    return out


def infer_main_inprocess(model: Path, inp: Path, out: Path) -> int:
    """What `python -m infer.main` runs, in this process (one JAX import for both runs)."""
    from infer.generate_file import GenerateOptions, generate_file

    opts = GenerateOptions(
        model=str(model),
        input=str(inp),
        output=str(out),
        max_new_tokens=4,
        batch_size=4,
        repetition_penalty=1.1,
    )
    generate_file(opts)
    return 0


def test_generate_equals_infer_main(tiny_hf_dir: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.parquet"
    pq.write_table(
        data.instructions_table([r for lang in ("en", "ru") for r in data.load_eval(lang)[:2]]), inp
    )
    ref_path = tmp_path / "ref.parquet"
    params = DecodeParams(max_new_tokens=4, repetition_penalty=1.1)
    handler = generate.EngineHandler(str(tiny_hf_dir), params, batch_size=4)
    out = Output(str(tmp_path / "beam" / "gen"))
    p = BeamTestPipeline()
    gen = generate.build(p, out, handler, rows=rows())
    assert infer_main_inprocess(tiny_hf_dir, inp, ref_path) == 0
    ref = pq.read_table(ref_path).to_pylist()
    assert len(ref) == 4 and all(r["response_tokens"] > 0 for r in ref)
    assert_that(gen, equal_to(ref))
    p.run().wait_until_finish()
    out.commit({})
    got = read_outputs(str(tmp_path / "beam" / "gen"))
    assert sorted(got.to_pylist(), key=lambda r: r["id"]) == sorted(ref, key=lambda r: r["id"])
    assert got.schema.field("item").type == "int32" and got.schema.field("response_tokens").type == "int32"
