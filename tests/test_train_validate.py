"""Validation while training (train/validate.py): the shipped validation set (size, parallel, disjoint from the
evaluation set and its modifiers), the metrics it computes, a `:runlocal` run that logs them, and the report's
"language correctness vs step" curves drawn from them."""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from train.validate import (
    FIELDS,
    VALIDATION_DIR,
    ValidationError,
    load_validation_set,
    loss_batch,
    should_validate,
    summarize,
    validation_path,
)

LANGS = ("en", "fr", "pt", "ru")
EVAL_DIR = Path(__file__).resolve().parents[1] / "data" / "eval"
MAX_JACCARD = 0.6


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\w+", text))


def _tokens(text: str) -> set[str]:
    return set(_norm(text).split())


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _eval_texts(lang: str) -> list[str]:
    out = []
    for name in (f"alpacaeval_test_subset.{lang}.jsonl", f"modifiers.{lang}.jsonl"):
        for line in (EVAL_DIR / name).read_text(encoding="utf-8").splitlines():
            out += [m["content"] for m in json.loads(line) if m["role"] == "user"]
    return out


def test_validation_set_is_shipped_and_parallel():
    sets = load_validation_set(LANGS)
    assert set(sets) == set(LANGS)
    ids = [it.id for it in sets["en"]]
    assert len(ids) >= 20 and len(set(ids)) == len(ids)
    for lang in LANGS:
        assert [it.id for it in sets[lang]] == ids
        assert all(it.instruction.strip() and it.response.strip() for it in sets[lang])
    for lang in LANGS[1:]:  # translations, not copies
        assert not {it.instruction for it in sets[lang]} & {it.instruction for it in sets["en"]}
    assert [it.id for it in load_validation_set(("fr", "ru"), 2)["ru"]] == ids[:2]
    readme = (VALIDATION_DIR / "README.md").read_text()
    assert "validation." in readme and "xlit" in readme


def test_validation_set_is_in_its_language():
    from evalsuite.langid import get_langid

    lid = get_langid()
    for lang, items in load_validation_set(LANGS).items():
        for it in items:
            for text in (it.instruction, it.response):
                assert lid.predict(text)[0] == lang, (lang, it.id, text)


def test_validation_set_is_disjoint_from_the_evaluation_set_and_modifiers():
    """No validation instruction or response equals (normalised) or nearly equals (token Jaccard ≥ 0.6) an
    instruction of the evaluation set or of its modifiers, in any of the shipped languages."""
    ev = {lang: _eval_texts(lang) for lang in LANGS}
    assert all(len(v) == 113 + 251 for v in ev.values())
    for lang, items in load_validation_set(LANGS).items():
        eval_norm = {_norm(t) for t in ev[lang]}
        eval_tokens = [_tokens(t) for t in ev[lang]]
        for it in items:
            for text in (it.instruction, it.response):
                assert _norm(text) not in eval_norm, (lang, it.id)
                worst = max(_jaccard(_tokens(text), e) for e in eval_tokens)
                assert worst < MAX_JACCARD, (lang, it.id, worst)


def test_near_duplicate_check_catches_a_copy():
    en = _eval_texts("en")[0]
    assert _jaccard(_tokens(en + " Please."), _tokens(en)) >= MAX_JACCARD


def test_missing_or_unparallel_file_is_named(tmp_path):
    with pytest.raises(ValidationError, match=r"validation\.de\.jsonl"):
        load_validation_set(("en", "de"))
    for lang, ids in (("en", ["a", "b"]), ("fr", ["a", "c"])):
        lines = [json.dumps({"id": i, "instruction": "x", "response": "y"}) for i in ids]
        validation_path(lang, tmp_path).write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError, match="parallel"):
        load_validation_set(("en", "fr"), data_dir=tmp_path)
    with pytest.raises(ValidationError, match="empty"):
        load_validation_set(())


def test_should_validate():
    assert [d for d in range(1, 13) if should_validate(d, 5, 12)] == [5, 10, 12]
    assert not any(should_validate(d, 0, 12) for d in range(1, 13))


class _Scorer:
    def score(self, *, lang: str, response: str) -> dict:
        return {
            "lang_correct": response.startswith(lang),
            "code_switch_rate": None if not response else 0.5,
            "spell_ok_rate": 1.0 if "ok" in response else 0.0,
        }


def test_summarize_means_over_items():
    row = summarize("fr", [("fr ok", 4), ("en", 2), ("", 0)], 1.5, _Scorer())
    assert row == {
        "lang": "fr",
        "lang_correct": pytest.approx(1 / 3),
        "code_switch_rate": 0.5,  # the empty answer has no sentence: left out
        "spell_ok_rate": pytest.approx(1 / 3),
        "answer_tokens": 2.0,
        "loss": 1.5,
        "n": 3,
    }
    assert set(FIELDS) <= set(row)


def test_loss_batch_is_the_training_format():
    from models.tokenizer import ChatTokenizer
    from tests.train_helpers import tiny_config
    from train.state import tokenizer_dir

    cfg = tiny_config()
    tok = ChatTokenizer(tokenizer_dir(cfg), cfg.model.chat_template)
    items = load_validation_set(("ru",), 3)["ru"]
    b = loss_batch(tok, items, cfg.data.seq_len, rows=4)
    assert b["inputs"].shape == (4, b["inputs"].shape[1]) and b["inputs"].shape[1] % 16 == 0
    for r, it in enumerate(items):
        enc = tok.encode_chat(it.chat())
        n = min(len(enc.ids) - 1, cfg.data.seq_len)  # longer items are truncated to seq_len, as in training
        assert (
            b["inputs"][r, :n].tolist() == enc.ids[:-1][:n]
            and b["targets"][r, :n].tolist() == enc.ids[1:][:n]
        )
        assert b["weights"][r].sum() == sum(enc.loss_mask[1 : n + 1]) > 0
        assert (b["segment_ids"][r, :n] == 1).all() and not b["segment_ids"][r, n:].any()
    assert not b["weights"][3].any()


# ------------------------------------------------------------------------------------------ trainer


def test_runlocal_run_logs_validation_at_the_configured_steps(tmp_path):
    from tests.train_helpers import tiny_config
    from train.loop import run

    kw = {
        "train.steps": 3,
        "train.validate_every": 2,
        "train.validate_items": 2,
        "train.validate_max_new_tokens": 8,
    }
    out = run(tiny_config(**kw), tmp_path / "w")
    assert out["finished"]
    lines = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if "validation" in x]
    assert [x["step"] for x in val] == [2, 3]  # every 2 steps and the last
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]
    for x in val:
        assert x["validation_s"] > 0
        assert [v["lang"] for v in x["validation"]] == list(LANGS)
        for v in x["validation"]:
            assert set(FIELDS) <= set(v) and v["n"] == 2
            assert 0 <= v["lang_correct"] <= 1 and np.isfinite(v["loss"]) and 1 <= v["answer_tokens"] <= 8
    events = b"".join(p.read_bytes() for p in (tmp_path / "w" / "tb").iterdir())
    assert b"validation/ru/lang_correct" in events and b"validation/seconds" in events
    # validating leaves training alone: the same losses as a run without it
    run(tiny_config(**{**kw, "train.validate_every": 0}), tmp_path / "off")
    off = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert not [x for x in off if "validation" in x]
    assert [x["loss"] for x in off] == [x["loss"] for x in lines if "loss" in x]


def test_validation_is_off_by_default_in_runlocal_and_on_in_the_paper_configs():
    import importlib

    from configs.smollm2 import get_config

    assert get_config("runlocal").train.validate_every == 0
    assert get_config().train.validate_every > 0
    paper = importlib.import_module("configs.llama2_7b_dolly_en_ft").get_config()
    assert paper.train.validate_every == 200 and tuple(paper.train.validate_langs) == LANGS


# ------------------------------------------------------------------------------------------ report


def _val_line(step: int, lr: float) -> dict:
    rows = []
    for k, lang in enumerate(LANGS):
        drop = 0.0 if lang == "en" else min(0.9, lr * 1e3 * step / 10)  # high LR: fewer non-English answers
        rows.append(
            {
                "lang": lang,
                "lang_correct": round(1.0 - drop, 4),
                "code_switch_rate": round(drop / 2, 4),
                "spell_ok_rate": 0.9 - 0.01 * k,
                "answer_tokens": 40.0 + step,
                "loss": 2.0 - 0.01 * step,
                "n": 24,
            }
        )
    return {"step": step, "time": 0.0, "validation": rows, "validation_s": 3.25}


def _add_training_logs(runs: Path) -> dict[str, list[dict]]:
    written = {}
    for d in sorted(runs.iterdir()):
        if not (d / "run.json").exists():
            continue
        info = json.loads((d / "run.json").read_text())
        if info["lr"] is None:
            continue  # untuned: no training
        (d / "train").mkdir()
        lines = []
        for step in range(1, 11):
            lines.append({"step": step, "time": 0.0, "loss": 2.0, "grad_norm": 1.0, "lr": info["lr"]})
            if step % 2 == 0:
                lines.append(_val_line(step, info["lr"]))
        (d / "train" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        written[info["run"]] = [x for x in lines if "validation" in x]
    return written


@pytest.fixture(scope="module")
def val_report(tmp_path_factory):
    from reporting import build as report
    from tests.report_helpers import make_runs

    root = tmp_path_factory.mktemp("val_report")
    runs, ratings = make_runs(root)
    written = _add_training_logs(runs)
    rep = report.build_report(runs, ratings, "judge", 50)
    index = report.write_report(rep, root / "out")
    return root, rep, index, written


def test_report_draws_validation_curves_from_the_metrics_lines(val_report):
    root, rep, index, written = val_report
    anchors = [s.anchor for s in rep.sections]
    assert anchors[:2] == ["lang_vs_lr", "validation_curves"]  # right after the top section
    assert (root / "out" / "validation_curves.png").stat().st_size > 0
    with open(root / "out" / "validation_curves.csv", newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    want = []
    for run, lines in sorted(written.items()):
        lr = json.loads((root / "runs" / run / "run.json").read_text())["lr"]
        for x in lines:
            for v in x["validation"]:
                want.append((run, lr, x["step"], v["lang"], x["validation_s"], v))
    assert len(got) == len(want)
    key = {(r["run"], int(r["step"]), r["lang"]): r for r in got}
    for run, lr, step, lang, seconds, v in want:
        row = key[(run, step, lang)]
        assert float(row["lr"]) == lr and float(row["validation_s"]) == seconds
        for f in FIELDS[1:]:
            assert float(row[f]) == pytest.approx(v[f]), (run, step, lang, f)
    html = index.read_text()
    assert "Language correctness vs training step" in html and 'id="validation_curves"' in html
    last = rep.sections[1].tables[0]
    assert len(last.rows) == len(written) * len(LANGS) and {r[3] for r in last.rows} == {10}


def test_report_without_validation_lines_has_no_curves(tmp_path):
    from reporting import build as report
    from tests.report_helpers import make_runs

    runs, ratings = make_runs(tmp_path)
    rep = report.build_report(runs, ratings, "judge", 20)
    assert "validation_curves" not in [s.anchor for s in rep.sections]


def test_unstack_params_casts_slice_by_slice():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from infer.decode import unstack_params
    from models.config import preset
    from models.modules import Llama

    model = Llama(preset("tiny"), rngs=nnx.Rngs(0))
    same, cast = unstack_params(model), unstack_params(model, jnp.bfloat16)
    assert jax.tree.structure(same) == jax.tree.structure(cast)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(cast), strict=True):
        assert b.dtype == (jnp.bfloat16 if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype)
        assert (np.asarray(a.astype(b.dtype)) == np.asarray(b)).all()
