"""study.demo's summary: the one-screen table and the judge parse-success line, on hand-made rows."""

from __future__ import annotations

from study.demo_steps import judge_rates, summary_table


def row(model: str, lang: str, ok: bool, helpful: int | None, status: str = "ok", **kw) -> dict:
    return {
        "model": model,
        "lang": lang,
        "eval_set": "paper",
        "modifier_type": None,
        "lang_correct": ok,
        "spell_ok_rate": 0.5 if ok else 1.0,
        "relevance": 1 if ok else 0,
        "relevance_status": "ok" if ok else "failed",
        "code_switch_rate": None,
        "judge_status": status,
        "judge_language": 2 if status == "ok" else None,
        "judge_helpfulness": helpful,
        **kw,
    }


def test_summary_table_and_rates():
    rows = [
        row("tuned", "en", True, 2),
        row("tuned", "en", True, 0),
        row("tuned", "fr", False, None, status="failed"),
        {
            **row("tuned", "fr", True, 1),
            "eval_set": "modifiers",
            "modifier_type": "short",
            "modifier_ok": True,
        },
    ]
    lines = summary_table(rows).splitlines()
    assert lines[0].split() == ["run", "lang", "n", "lang_ok", "spell_ok", "relevant", "helpful", "judged"]
    assert lines[2].split() == ["tuned", "en", "2", "1.00", "0.50", "1.00", "1.00", "2/2"]
    assert lines[3].split() == ["tuned", "fr", "1", "0.00", "1.00", "0.00", "-", "0/1"]
    assert lines[4] == "modifiers: 1 responses, fulfilled 1/1 checked"
    assert judge_rates(rows) == "judge replies parsed 3/4 (75%); relevance replies parsed 3/4 (75%)"
    assert judge_rates([{"judge_status": "skipped"}]) == "no judge"
