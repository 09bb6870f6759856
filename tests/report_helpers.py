"""The runs folder the report tests read (no tests here): five runs with hand-chosen scores (see
tests/test_eval_report.py for the figures computed from them by hand), judge.json, a calibration card and a
human ratings table in the production schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from records.schemas import GENERATION_SCHEMA, INSTRUCTION_SCHEMA, JUDGE_CRITERIA, SCORE_SCHEMA
from reporting.human import HUMAN_SCHEMA

FIELDS: dict[str, pa.Field] = {}
for _schema in (INSTRUCTION_SCHEMA, GENERATION_SCHEMA, SCORE_SCHEMA):
    for _f in _schema:
        FIELDS.setdefault(_f.name, _f)
SCHEMA = pa.schema(list(FIELDS.values()))
TASKS = ("brainstorm", "brainstorm", "calc", "calc")  # items 0-3
ANCHOR, LOW, OTHER, BASE = "tiny-lr0.001", "tiny-lr0.0001", "other-lr0.0001", "tiny-base"
TINY, OTHER_G = "Tiny / Dolly-En / LoRA", "Other / Dolly-En / FT"
RELEVANCE = "openai:llama-2-7b-chat@http://127.0.0.1:9/v1"
DECODE = {"repetition_penalty": 1.2, "max_new_tokens": 512}


def score_row(
    run: str,
    lang: str,
    item: int,
    *,
    language: int = 2,
    help: int = 2,
    status: str = "ok",
    lang_correct: bool = True,
    relevance: int = 1,
    **kw: Any,
) -> dict[str, Any]:
    """One scores.parquet row (SCHEMA): every judge criterion = `help` except language; `kw` overrides."""
    eval_set = kw.pop("eval_set", "paper")
    r = {name: None for name in SCHEMA.names}
    r.update(
        id=f"{eval_set}-{lang}-{item:03d}",
        eval_set=eval_set,
        item=item,
        lang=lang,
        task=TASKS[item % 4],
        messages=[{"role": "user", "content": f"instruction {item}"}],
        response=f"answer {item}",
        prompt_tokens=5,
        response_tokens=7,
        finish_reason="stop",
        model=run,
        decoding="{}",
        expected_lang=lang,
        lang_pred=lang if lang_correct else "en",
        lang_prob=0.9,
        lang_correct=lang_correct,
        spell_ok_rate=0.9,
        relevance=relevance,
        relevance_status="ok",
        judge_status=status,
        judge_error="parse error" if status == "failed" else None,
    )
    if status == "ok":
        r.update({f"judge_{c}": help for c in JUDGE_CRITERIA}, judge_language=language)
    r.update(kw)
    return r


def paper_rows(run: str) -> list[dict[str, Any]]:
    """The 16 paper rows (4 languages × items 0-3) of `run`; ANCHOR's are hand-picked."""
    if run == ANCHOR:
        spec = {  # (judge language, helpfulness) per item; None = failed judge call
            "en": [(2, 2), (2, 1), (2, 2), (2, 0)],
            "fr": [(2, 2), (0, 2), (2, 1), (2, 1)],  # item 1 in the wrong language
            "pt": [(2, 1)] * 4,
            "ru": [(2, 2), (2, 0), (1, 2), None],  # item 3 failed
        }
        out = []
        for lang, items in spec.items():
            for i, s in enumerate(items):
                if s is None:
                    out.append(score_row(run, lang, i, status="failed"))
                else:
                    out.append(score_row(run, lang, i, language=s[0], help=s[1], lang_correct=s[0] > 0))
        return out
    help_ = 1 if run == LOW else 2
    rel = [1, 0, 1, 0] if run == LOW else [1, 1, 1, 1]  # LR too low: relevance drops
    return [
        score_row(run, lang, i, help=help_, relevance=rel[i])
        for lang in ("en", "fr", "pt", "ru")
        for i in range(4)
    ]


def modifier_rows(run: str) -> list[dict[str, Any]]:
    """Modifier rows of `run`; only ANCHOR's have failures."""

    def mod(lang, item, mtype, ok, hmod, **kw):
        return score_row(
            run,
            lang,
            item,
            eval_set="modifiers",
            modifier_type=mtype,
            modifier_arg="de" if mtype == "lang" else None,
            modifier_ok=ok,
            modifier_status="ok",
            judge_helpfulness_mod=hmod,
            **kw,
        )

    if run != ANCHOR:  # every modifier fulfilled: would show 100% if the wrong run were used
        return [mod(lang, i, "short", True, 2) for lang in ("en", "ru") for i in range(2)]
    return [
        mod("en", 0, "short", True, 2),
        mod("en", 1, "short", False, 1),
        mod("ru", 0, "short", True, 2),
        mod("ru", 1, "short", True, 1),
        mod("ru", 2, "short", True, None, status="failed"),
        mod("en", 3, "lang", True, 2),
        mod("en", 4, "lang", False, 1, lang_correct=False),  # fastText decides for lang_XX: excluded
    ]


def human_rows() -> list[dict[str, Any]]:
    """Human ratings of ANCHOR's responses (two annotators on en item 0)."""

    def h(lang, item, help_, annotator="a1", language=2):
        return {
            "run": ANCHOR,
            "id": f"paper-{lang}-{item:03d}",
            "item": item,
            "lang": lang,
            "task": TASKS[item],
            "annotator": annotator,
            **{c: help_ for c in JUDGE_CRITERIA},
            "language": language,
        }

    rows = [h("en", i, v) for i, v in enumerate([1, 1, 2, 0])]
    rows.append(h("en", 0, 2, annotator="a2"))  # second annotator of item 0
    rows += [h("fr", i, 2) for i in range(4)]
    rows.append(h("ru", 3, 1))  # the judge failed on this item: no pair
    return rows


def make_runs(root: Path, judge_kind: str = "real", human: bool = True) -> tuple[Path, Path | None]:
    """root/runs (five runs, judge.json, a calibration card for a real judge) and root/ratings.parquet."""
    runs = root / "runs"
    runs.mkdir()
    models = {"judge": f"{judge_kind}:test", "relevance": RELEVANCE, "modifier_judge": None}
    (runs / "judge.json").write_text(
        json.dumps({"spec": f"{judge_kind}:test", "kind": judge_kind, "note": "t", "models": models})
    )
    if (
        judge_kind == "real"
    ):  # a calibrated judge: its figures are results (see test_untrusted_judge_is_greyed)
        (runs / "calibration").mkdir()
        card = {"verdict": "pass", "failed": [], "judge": {"spec": "real:test", "kind": "real"}}
        (runs / "calibration" / "card.json").write_text(json.dumps(card))
    specs = [(ANCHOR, TINY, 1e-3, True), (LOW, TINY, 1e-4, True), (OTHER, OTHER_G, 1e-4, False)]
    specs += [(BASE, "Tiny (untuned)", None, False), ("pending-lr0.01", OTHER_G, 1e-2, False)]
    for name, group, lr, anchor in specs:
        d = runs / name
        d.mkdir()
        info = {
            "run": name,
            "config": f"configs/{name}.py",
            "config_hash": "0" * 64,
            "label": group,
            "group": group,
            "base_model": "tiny",
            "data": "dolly_en",
            "method": "lora",
            "lr": lr,
            "anchor": anchor,
        }
        if name != BASE:  # BASE: a run.json written before protocols existed
            info.update(protocol="released" if name != OTHER else "paper", decode=DECODE)
        (d / "run.json").write_text(json.dumps(info))
        if name != "pending-lr0.01":
            rows = paper_rows(name) + (modifier_rows(name) if name != BASE else [])
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), d / "scores.parquet")
    (runs / "trainer-workdir").mkdir()  # a folder without run.json is ignored
    ratings = None
    if human:
        ratings = root / "ratings.parquet"
        pq.write_table(pa.Table.from_pylist(human_rows(), schema=HUMAN_SCHEMA), ratings)
    return runs, ratings
