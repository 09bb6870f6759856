"""Beam translation pipeline with a tiny random M2M100 and a tiny NLLB tokenizer built offline.

No NLLB tokenizer can be downloaded here, so `tiny_nllb` builds one with transformers' NllbTokenizer from a
character vocabulary (BPE without merges) and the four language-code special tokens; the M2M100 model is
random (2 layers, width 16), so translations are gibberish: the tests check structure, ids, languages,
categories and sentence splitting, not quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from fake_openai_server import FakeOpenAIServer

from beam_pipelines import translate
from beam_pipelines.io import Output, metric_totals, read_outputs
from beam_pipelines.tiny_nllb import make_tiny_nllb
from beam_pipelines.translators import ChatTranslatorHandler, Seq2SeqHandler, split_segments


@pytest.fixture(scope="module")
def tiny_nllb(tmp_path_factory) -> Path:
    return make_tiny_nllb(tmp_path_factory.mktemp("tiny_nllb"))


DOLLY = [
    {"instruction": "What is a cat?", "context": "", "response": "A small animal.", "category": "open_qa"},
    {
        "id": "long-1",
        "instruction": "Summarize this.",
        "context": "The first sentence is here. The second one follows! A third?\n\nNew paragraph line.",
        "response": "It has sentences.",
        "category": "summarization",
    },
]


def test_split_segments_keeps_lines_and_limit() -> None:
    text = "One two three. Four five six! Seven eight nine ten eleven twelve.\n\nNext line."
    segs = split_segments(text, lambda s: len(s.split()), 4)
    assert segs == [
        ("One two three.", " "),
        ("Four five six!", " "),
        ("Seven eight nine ten", " "),
        ("eleven twelve.", "\n\n"),
        ("Next line.", ""),
    ]
    assert "".join(a + b for a, b in segs).replace("ten eleven", "ten eleven") == text
    assert split_segments("", len, 5) == []


def test_translate_structure_ids_languages(tiny_nllb: Path, tmp_path: Path) -> None:
    inp = tmp_path / "dolly.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in DOLLY), encoding="utf-8")
    handler = Seq2SeqHandler(str(tiny_nllb), batch_size=8, num_beams=1, max_input_tokens=24, max_new_tokens=6)
    out = Output(str(tmp_path / "dt"))
    p = BeamTestPipeline()
    res = translate.build(
        p, str(inp), out, handler, src="en", tgts=["fr", "ru"], tokenizer=str(tiny_nllb), max_input_tokens=24
    )
    cat_id = translate.record_id(DOLLY[0])
    keys = res["dt"] | beam.Map(lambda r: (r["id"], r["lang"], r["category"], r["translator"]))
    expected = [
        (rid, lang, cat, "source" if lang == "en" else tiny_nllb.name)
        for rid, cat in ((cat_id, "open_qa"), ("long-1", "summarization"))
        for lang in ("en", "fr", "ru")
    ]
    assert_that(keys, equal_to(expected), "Keys")
    src_rows = res["dt"] | beam.Filter(lambda r: r["lang"] == "en")
    assert_that(
        src_rows,
        equal_to(
            [
                {**DOLLY[0], "id": cat_id, "lang": "en", "translator": "source"},
                {**DOLLY[1], "lang": "en", "translator": "source"},
            ]
        ),
        "Source",
    )
    result = p.run()
    result.wait_until_finish()
    counters = metric_totals(result, translate.NS)
    out.commit({})
    # record 1: 1 + 0 + 1 segments; record 2: 1 + 4 (3 sentences, each alone under 24 tokens, + 1 line) + 1
    assert counters["segments"] == 2 * (2 + 6) and counters["items"] == 4 and counters.get("failures", 0) == 0
    rows = read_outputs(str(tmp_path / "dt")).to_pylist()
    long_fr = next(r for r in rows if r["id"] == "long-1" and r["lang"] == "fr")
    assert long_fr["context"].count("\n\n") == 1  # paragraph break kept across segments
    assert all(r["context"] == "" for r in rows if r["id"] == cat_id)
    from train.data import read_corpus

    corpus = read_corpus([str(tmp_path / "dt-00000-of-00001.parquet")], "dolly")
    assert sorted(corpus.by_lang) == ["en", "fr", "ru"]


def test_chat_translator_and_dead_letter(tmp_path: Path) -> None:
    inp = tmp_path / "dolly.jsonl"
    rows = DOLLY + [{"id": "bad", "instruction": "XLIT_GARBAGE_ALWAYS", "response": "x", "category": "c"}]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with FakeOpenAIServer(fault_rate=0.0) as srv:
        handler = ChatTranslatorHandler(
            f"openai:tower@{srv.base_url}", cache_dir=None, max_retries=1, backoff_s=0.0
        )
        with BeamTestPipeline() as p:
            res = translate.build(
                p,
                str(inp),
                Output(str(tmp_path / "c")),
                handler,
                src="en",
                tgts=["pt"],
                tokenizer=None,
                max_input_tokens=512,
            )
            langs = res["dt"] | beam.Map(lambda r: (r["id"], r["lang"], r["translator"]))
            assert_that(
                langs,
                equal_to(
                    [
                        (translate.record_id(DOLLY[0]), "en", "source"),
                        ("long-1", "en", "source"),
                        ("bad", "en", "source"),
                        (translate.record_id(DOLLY[0]), "pt", "tower"),
                        ("long-1", "pt", "tower"),
                    ]
                ),
                "Langs",
            )
            dead = res["dead"] | beam.Map(
                lambda d: (d["id"], d["lang"], d["reason"].startswith("no translation"))
            )
            assert_that(dead, equal_to([("bad", "pt", True)]), "Dead")


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"instruction": "Hi", "response": ', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object, got list"),
        ('{"instruction": "Hi", "context": ""}', "field 'response' missing or not a string"),
        ('{"instruction": 3, "response": "x"}', "field 'instruction' missing or not a string"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(
    tmp_path: Path, line: str, problem: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    inp = tmp_path / "dolly.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in DOLLY)
    inp.write_text(good + "\n" + line + "\n", encoding="utf-8")  # blank line 3, bad line 4
    with pytest.raises(translate.RecordError, match=rf"dolly\.jsonl:4: {problem}"):
        translate.check_dolly_jsonl(str(tmp_path / "*.jsonl"))
    # the CLI stops before starting Beam, with the same message and exit status 2
    out = tmp_path / "dt"
    argv = ["translate", f"--input={inp}", "--model=unused", f"--output={out}"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        translate.cli_main(translate.run)
    assert exit_info.value.code == 2
    assert f"dolly.jsonl:4: {problem}" in capsys.readouterr().err
    assert not list(tmp_path.glob("dt*"))
    inp.write_text(good, encoding="utf-8")
    assert translate.check_dolly_jsonl(str(inp)) == 2
