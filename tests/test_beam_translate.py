"""Beam translation pipeline with a tiny random M2M100 and a tiny NLLB tokenizer built offline.

No NLLB tokenizer can be downloaded here, so `tiny_nllb` builds one with transformers' NllbTokenizer from a
character vocabulary (BPE without merges) and the four language-code special tokens; the M2M100 model is
random (2 layers, width 16), so translations are gibberish: the tests check structure, ids, languages,
categories and sentence splitting, not quality.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from fake_openai_server import FakeOpenAIServer

from beam_pipelines import quality, translate
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


def provenance(rid: str) -> dict:
    """The provenance columns of a source row."""
    return {"source_id": rid, "decoding": None, "flags": []}


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
    # joining segment + separator gives the text back, and a translation of each segment keeps the lines
    assert "".join(a + b for a, b in segs) == text
    assert "".join(a.upper() + b for a, b in segs) == text.upper()
    assert all(len(a.split()) <= 4 for a, _ in segs)
    padded = split_segments("  Lead. Two words here now ok.\n", lambda s: len(s.split()), 3)
    assert padded == [("Lead.", " "), ("Two words here", " "), ("now ok.", "")]
    assert split_segments("", len, 5) == []


def test_translate_structure_ids_languages(tiny_nllb: Path, tmp_path: Path) -> None:
    inp = tmp_path / "dolly.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in DOLLY), encoding="utf-8")
    handler = Seq2SeqHandler(str(tiny_nllb), batch_size=8, num_beams=1, max_input_tokens=24, max_new_tokens=6)
    out = Output(str(tmp_path / "dt"))
    p = BeamTestPipeline()
    res = translate.build(
        p,
        str(inp),
        out,
        handler,
        src="en",
        tgts=["fr", "ru"],
        tokenizer=str(tiny_nllb),
        max_input_tokens=24,
        keep_flagged=True,  # the random model's gibberish is flagged: keep it to check the structure
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
                {**DOLLY[0], "id": cat_id, "lang": "en", "translator": "source", **provenance(cat_id)},
                {**DOLLY[1], "lang": "en", "translator": "source", **provenance("long-1")},
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
    decoding = json.dumps(handler.decoding(), sort_keys=True)
    for r in rows:
        assert r["source_id"] == r["id"]
        assert r["decoding"] == (None if r["lang"] == "en" else decoding)
    assert json.loads(decoding)["model"] == str(tiny_nllb) and json.loads(decoding)["num_beams"] == 1
    # 6 new tokens per segment of a ~100-character source: far below the length band
    assert "length_ratio" in long_fr["flags"]
    review = read_outputs(str(tmp_path / "dt"), ".review").to_pylist()
    assert sorted((r["id"], r["lang"]) for r in review) == sorted(
        (r["id"], r["lang"]) for r in rows if r["flags"]
    )
    from train.data import read_corpus

    corpus = read_corpus([str(tmp_path / "dt-00000-of-00001.parquet")], "dolly", keep_flagged=True)
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
                keep_flagged=True,  # the fake server answers in English: flagged, kept here
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
            review = res["review"] | beam.Map(lambda r: (r["id"], "wrong_lang" in r["flags"], r["decoding"]))
            decoding = json.dumps(handler.decoding(), sort_keys=True)
            assert_that(
                review,
                equal_to([(translate.record_id(DOLLY[0]), True, decoding), ("long-1", True, decoding)]),
                "Review",
            )


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


# Translation quality flags: a stub translator with fixed outputs (real French unless said otherwise).
QUALITY = {  # id -> (source instruction, source response, translation or None = copy the source)
    "good-1": (
        (
            "What is the capital of France?",
            "The capital of France is Paris, a large city on the river Seine.",
        ),
        (
            "Quelle est la capitale de la France ?",
            "La capitale de la France est Paris, une grande ville au bord de la Seine.",
        ),
    ),
    "good-2": (
        (
            "Give me a tip for learning a language.",
            "Read a little every day and speak with native speakers as often as you can.",
        ),
        (
            "Donne-moi un conseil pour apprendre une langue.",
            "Lis un peu chaque jour et parle avec des locuteurs natifs aussi souvent que possible.",
        ),
    ),
    "wrong-lang": (  # German instead of French
        (
            "Why do cats sleep so much?",
            "Cats sleep a lot because they save their energy for hunting at night.",
        ),
        (
            "Warum schlafen Katzen so viel?",
            "Katzen schlafen viel, weil sie ihre Energie für die Jagd in der Nacht sparen.",
        ),
    ),
    "copied": (
        (
            "Name a famous painting by Leonardo da Vinci.",
            "The Mona Lisa is his most famous painting, kept at the Louvre in Paris.",
        ),
        None,
    ),
    "repeated": (
        (
            "Describe a morning at the farm.",
            "The rooster sings at dawn. The farmer feeds the cows. Then the children collect the eggs.",
        ),
        (
            "Décris une matinée à la ferme.",
            "Le coq chante à l'aube. Le coq chante à l'aube. Le coq chante à l'aube.",
        ),
    ),
    "truncated": (
        (
            "Explain photosynthesis in one sentence.",
            "Plants use sunlight, water and carbon dioxide to make sugar and release oxygen into the air.",
        ),
        ("Explique la photosynthèse en une phrase.", "Les plantes."),
    ),
}
EXPECTED_FLAGS = {
    "good-1": [],
    "good-2": [],
    "wrong-lang": ["wrong_lang"],
    "copied": ["wrong_lang", "copy"],  # an untranslated English record is also in the wrong language
    "repeated": ["repeat"],
    "truncated": ["length_ratio"],
}


class _Table(dict):
    pass


class StubTranslator(ModelHandler[dict, PredictionResult, Any]):
    """Translates each segment by table lookup; a segment not in the table is copied."""

    name = "stub-mt"

    def __init__(self, table: dict[str, str]):
        super().__init__()
        self.table = table

    def decoding(self) -> dict[str, Any]:
        return {"model": "stub-mt", "num_beams": 1}

    def load_model(self) -> dict[str, str]:
        return _Table(self.table)  # RunInference keeps a weak reference to the model: no plain dict

    def run_inference(
        self, batch: Sequence[dict], model: dict[str, str], inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        return [PredictionResult(ex, model.get(ex["text"], ex["text"])) for ex in batch]


def run_stub_translation(tmp_path: Path, prefix: str, keep_flagged: bool) -> dict[str, int]:
    inp = tmp_path / "quality.jsonl"
    rows = [
        {"id": rid, "instruction": s[0], "context": "", "response": s[1], "category": "open_qa"}
        for rid, (s, _) in QUALITY.items()
    ]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    table = {a: b for s, t in QUALITY.values() if t for a, b in zip(s, t, strict=True)}
    out = Output(str(tmp_path / prefix))
    p = BeamTestPipeline()
    translate.build(
        p,
        str(inp),
        out,
        StubTranslator(table),
        src="en",
        tgts=["fr"],
        tokenizer=None,
        max_input_tokens=512,
        keep_flagged=keep_flagged,
    )
    result = p.run()
    result.wait_until_finish()
    out.commit({})
    return metric_totals(result, translate.NS)


def test_quality_flags_review_file_and_training_exclusion(tmp_path: Path) -> None:
    from train.data import read_corpus

    counters = run_stub_translation(tmp_path, "dt", keep_flagged=False)
    flagged = {k: v for k, v in EXPECTED_FLAGS.items() if v}
    assert counters["checked"] == len(QUALITY) and counters["flagged"] == len(flagged)
    assert {f: counters.get(f"flag_{f}", 0) for f in quality.FLAGS} == {
        "wrong_lang": 2,
        "length_ratio": 1,
        "copy": 1,
        "repeat": 1,
    }
    main = read_outputs(str(tmp_path / "dt")).to_pylist()
    review = read_outputs(str(tmp_path / "dt"), ".review").to_pylist()
    # the review file holds exactly the flagged translations, with their flags; the main output the rest
    assert {r["id"]: r["flags"] for r in review} == flagged
    assert all(r["lang"] == "fr" and r["translator"] == "stub-mt" for r in review)
    assert sorted((r["id"], r["lang"]) for r in main) == sorted(
        [(rid, "en") for rid in QUALITY] + [("good-1", "fr"), ("good-2", "fr")]
    )
    for r in main + review:
        assert r["source_id"] == r["id"]
        if r["lang"] == "fr":
            assert json.loads(r["decoding"]) == {"model": "stub-mt", "num_beams": 1}
        else:
            assert r["decoding"] is None and r["flags"] == [] and r["translator"] == "source"
    good = next(r for r in main if r["id"] == "good-1" and r["lang"] == "fr")
    assert (good["instruction"], good["response"]) == QUALITY["good-1"][1] and good["flags"] == []

    # --keep_flagged: the flagged translations stay in the main output, marked (and in the review file)
    counters_kept = run_stub_translation(tmp_path, "kept", keep_flagged=True)
    assert counters_kept == counters
    kept = read_outputs(str(tmp_path / "kept")).to_pylist()
    assert {r["id"]: r["flags"] for r in kept if r["lang"] == "fr"} == EXPECTED_FLAGS
    assert {r["id"] for r in read_outputs(str(tmp_path / "kept"), ".review").to_pylist()} == set(flagged)

    # the trainer skips flagged records by default and counts them; data.keep_flagged trains on them
    c = read_corpus([str(tmp_path / "dt-00000-of-00001.parquet")], "dolly")
    assert (len(c.by_lang["en"]), len(c.by_lang["fr"])) == (len(QUALITY), 2)
    assert c.stats == {
        "records": len(QUALITY) + 2,
        "empty_response_skipped": 0,
        "translation_flagged_skipped": 0,
    }
    kept_file = str(tmp_path / "kept-00000-of-00001.parquet")
    c = read_corpus([kept_file], "dolly")
    assert (len(c.by_lang["en"]), len(c.by_lang["fr"])) == (len(QUALITY), 2)
    assert c.stats["translation_flagged_skipped"] == len(flagged) and c.stats["records"] == len(QUALITY) + 2
    assert {r.where for r in c.by_lang["fr"]} == {
        f"{kept_file}:row {i}" for i, r in enumerate(kept) if r["lang"] == "fr" and not r["flags"]
    }
    c = read_corpus([kept_file], "dolly", keep_flagged=True)
    assert len(c.by_lang["fr"]) == len(QUALITY) and c.stats["translation_flagged_kept"] == len(flagged)


@pytest.mark.parametrize(
    "src, out, repeated",
    [
        ("a b c d e f g h i j k l", "the the the the the the the the the the", True),  # word loop
        ("One. Two. Three. Four.", "Un. Un. Un. Deux.", True),  # a sentence 3 times
        (
            "- one cup\n- one cup\n- one cup",
            "- une tasse\n- une tasse\n- une tasse",
            False,
        ),  # as in the source
        (
            "I like the cat and the dog and the bird in the garden",
            "I like the cat and I like the cat and I like the cat and I like",
            True,
        ),
        (
            "The cat sat on the mat. It was warm.",
            "Le chat était assis sur le tapis. Il faisait chaud.",
            False,
        ),
    ],
)
def test_repeat_flag(src: str, out: str, repeated: bool) -> None:
    assert quality.is_repeated(src, out) is repeated


def test_copy_and_length_ratio() -> None:
    src = "The Mona Lisa is his most famous painting, kept at the Louvre."
    assert quality.is_copy(src, "the mona lisa is his most famous painting kept at the louvre")
    assert quality.is_copy(src, src.replace("Louvre", "Louvre museum"))  # near-identical (ratio >= 0.9)
    assert not quality.is_copy(src, "La Joconde est son tableau le plus célèbre, conservé au Louvre.")
    assert not quality.is_copy("Paris.", "Paris.")  # too short to tell
    assert quality.length_ratio("short", "much longer text") is None  # source under 40 characters
    assert quality.length_ratio("x" * 40, "y" * 100) == 2.5
    with pytest.raises(ValueError, match="LO,HI"):
        translate.parse_band("2")
    assert translate.parse_band("0.4,2.5") == (0.4, 2.5)
