"""Beam scoring pipeline: same records as evalsuite's scoring, dead letters, schema errors, reruns."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from fake_openai_server import FakeOpenAIServer

from beam_pipelines import score
from beam_pipelines.io import Output, metric_totals, read_outputs
from beam_pipelines.score_fns import NS, LLMConfig
from chat.client import Budget, ChatCache, ChatRunner, parse_model_spec
from evalsuite import data
from evalsuite.scoring import attach_scores, plan_llm, score_rows
from evalsuite.surface import SurfaceScorer
from records.schemas import SchemaError


def gen_rows() -> list[dict]:
    en = data.load_eval("en")
    rows = []
    for lang in data.LANGS:
        for r in data.load_eval(lang)[:3]:
            rows.append({**r.to_row(), "response": en[r.item].instruction, "model": "echo"})
        mods = data.load_modifiers(lang)
        for mtype in ("short", "scientific_style"):
            m = next(m for m in mods if m.modifier_type == mtype)
            rows.append({**m.to_row(), "response": f"Answer {m.id}. Short.", "model": "echo"})
    rows[2]["response"] = "XLIT_GARBAGE_ALWAYS"  # the judge's reply never parses: a dead letter
    return rows


@pytest.fixture()
def gens(tmp_path: Path) -> Path:
    path = tmp_path / "gens.parquet"
    pq.write_table(pa.Table.from_pylist(gen_rows()), path)
    return path


def reference(path: Path, cfg: LLMConfig) -> pa.Table:
    """What evalsuite.score computes (in process, same cache)."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    cache = ChatCache(cfg.cache_dir)
    runners = {}
    for name in ("judge", "relevance"):
        spec = parse_model_spec(getattr(cfg, name))
        runners[name] = ChatRunner(spec, cache=cache, budget=Budget(), backoff_s=0.001, max_retries=8)
    plan = plan_llm(
        rows, judge=runners["judge"], relevance=runners["relevance"], modifier_judge=runners["judge"]
    )
    out = attach_scores(table, score_rows(rows, SurfaceScorer(), plan))
    cache.close()
    return out


def by_id(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["id"])


def test_scores_equal_evalsuite_and_dead_letters(gens: Path, tmp_path: Path) -> None:
    with FakeOpenAIServer(
        seed=3, fault_rate=0.3, fault_kinds=("429", "500", "garbage_body", "garbage_text")
    ) as srv:
        cfg = LLMConfig(
            judge=f"openai:gpt-3.5-turbo-0125@{srv.base_url}",
            relevance=f"openai:llama-2-7b-chat@{srv.base_url}",
            cache_dir=str(tmp_path / "cache"),
            timeout_s=0.3,
            max_retries=8,
            backoff_s=0.001,
            backoff_max_s=0.01,
        )
        out = Output(str(tmp_path / "out" / "scores"))
        p = BeamTestPipeline()
        res = score.build(p, str(gens), out, cfg, batch_size=8)
        dead_ids = res["dead"] | "DeadIds" >> beam.Map(lambda d: (d["id"], d["stage"], d["reason"][:30]))
        assert_that(
            dead_ids, equal_to([(gen_rows()[2]["id"], "llm", "judge: unparseable reply: no J")]), "Dead"
        )
        result = p.run()
        result.wait_until_finish()
        counters = metric_totals(result, NS)
        out.commit({})
        assert srv.stats["requests"] > srv.stats["ok"] > 0  # faults were injected and retried
        ref = reference(gens, cfg)
    assert counters["items"] == 20 and counters["failures"] == 1
    assert counters["judge_calls"] > 0
    got = read_outputs(str(tmp_path / "out" / "scores"))
    assert got.schema == ref.schema
    assert by_id(got.to_pylist()) == by_id(ref.to_pylist())
    dead = read_outputs(str(tmp_path / "out" / "scores"), ".deadletter").to_pylist()
    assert [d["id"] for d in dead] == [gen_rows()[2]["id"]] and "XLIT_GARBAGE_ALWAYS" in dead[0]["record"]


def test_surface_only_records_exact(gens: Path, tmp_path: Path) -> None:
    rows = gen_rows()
    scorer = SurfaceScorer()
    expected = [{**r, **c} for r, c in zip(rows, score_rows(rows, scorer, None), strict=True)]
    with BeamTestPipeline() as p:
        res = score.build(p, str(gens), Output(str(tmp_path / "s")), LLMConfig(cache_dir=None))
        assert_that(res["scores"], equal_to(expected))


def test_schema_mismatch_names_file_column_type(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    rows = [{**r, "response": 7} for r in gen_rows()[:2]]
    pq.write_table(pa.Table.from_pylist(rows), bad)
    with pytest.raises(SchemaError, match=r"bad\.parquet: column 'response' has type int64, expected string"):
        score.build(BeamTestPipeline(), str(bad), Output(str(tmp_path / "x")), LLMConfig(cache_dir=None))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        score.build(
            BeamTestPipeline(), str(tmp_path / "none*.parquet"), Output(str(tmp_path / "x")), LLMConfig()
        )


def test_multiprocessing_rerun_and_failed_run_keeps_output(
    gens: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    prefix = str(tmp_path / "mp" / "scores")
    argv = [f"--generations={gens}", f"--output={prefix}", "--nocache"]
    mp = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    summary = score.run(argv + mp)
    assert summary["counters"]["items"] == 20
    first = read_outputs(prefix)
    assert first.num_rows == 20
    assert score.run(argv) == {"skipped": True}  # complete: not recomputed

    def boom(self, *a, **k):
        raise RuntimeError("worker died")

    monkeypatch.setattr(beam.Pipeline, "run", boom)
    with pytest.raises(RuntimeError, match="worker died"):
        score.run(argv + ["--overwrite"])
    assert read_outputs(prefix).equals(first)  # the failed run replaced nothing
    assert not list((tmp_path / "mp").glob("*.tmp-*"))  # and left no staging folder
