"""Judge calibration, the run: judge the built-in controls (and rescore a sample with the cache
bypassed) through the judge and relevance models, and write the card (evalsuite.calibration).
The command is `python -m study.calibrate`."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from evalsuite.calibration import (
    CARD_VERSION,
    Thresholds,
    compute_card,
    render_md,
)
from evalsuite.controls import Control, build_controls, controls_hash

# ------------------------------------------------------------------------------------------- running


@dataclasses.dataclass
class Setup:
    """What a calibration run judges with (resolved from --judge/--relevance)."""

    judge: str
    relevance: str = "same"
    per_kind: int = 8
    repeat: int = 8
    seed: int = 0
    judge_prompt: str = "paper"
    cache_dir: str = "~/.cache/xlit/judge"
    max_cost_usd: float | None = 1.0
    concurrency: int = 8
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)


def _judges(setup: Setup) -> Any:
    from study.grid_run import resolve_judges

    judges = resolve_judges(setup.judge, setup.relevance, "none")
    if judges.kind == "none":
        raise ValueError("--judge: a judge is needed (demo, demo:MODEL_DIR or openai[:MODEL[@URL]])")
    return judges


def identity(setup: Setup, controls: list[Control]) -> dict[str, Any]:
    """What a card depends on: reused when all of it matches."""
    j = _judges(setup)
    return {
        "models": j.identity(),
        "demo_model": j.demo_model,
        "judge_prompt": setup.judge_prompt,
        "controls": controls_hash(controls),
        "repeat": setup.repeat,
        "thresholds": setup.thresholds.key(),
        "card_version": CARD_VERSION,
    }


def _rows(controls: list[Control]) -> list[dict[str, Any]]:
    from evalsuite.langid import get_langid

    lid = get_langid()
    rows = []
    for c in controls:
        row = c.to_row()
        row["lang_pred"] = lid.predict(c.response)[0]
        rows.append(row)
    return rows


def _repeat_sample(n: int, total: int) -> list[int]:
    """Indices spread over all controls (every kind), deterministic."""
    n = min(n, total)
    return sorted({int(i) for i in np.linspace(0, total - 1, n)}) if n > 0 else []


def dry_run(setup: Setup) -> dict[str, Any]:
    """Calls still needed (not cached) and their estimated cost, without a key or network."""
    import os

    from chat.client import ChatCache
    from evalsuite.scoring import estimate_llm

    j = _judges(setup)
    specs = j.specs()
    controls = build_controls(setup.per_kind, setup.seed)
    rows = [c.to_row() for c in controls]
    cache_file = Path(os.path.expanduser(setup.cache_dir)) / "chat_cache.sqlite"
    cache = ChatCache(setup.cache_dir) if cache_file.exists() else None
    kw = dict(judge_variant=setup.judge_prompt, judge_schema=j.kind == "demo")
    first = estimate_llm(
        rows, judge=specs["judge"], relevance=specs["relevance"], modifier_judge=None, cache=cache, **kw
    )
    sample = [rows[i] for i in _repeat_sample(setup.repeat, len(rows))]
    again = estimate_llm(
        sample, judge=specs["judge"], relevance=specs["relevance"], modifier_judge=None, cache=None, **kw
    )
    if cache is not None:
        cache.close()
    total = {
        k: sum(e[k] for e in [*first.values(), *again.values()])
        for k in ("calls", "prompt_tokens", "completion_tokens", "cost_usd")
    }
    return {"controls": len(rows), "first_pass": first, "repeatability": again, "total": total}


def run_calibration(setup: Setup, out: str | Path, force: bool = False, log: Any = print) -> dict[str, Any]:
    """Runs (or reuses) the calibration and writes DIR/card.json, card.md, controls.jsonl; returns the card."""
    from chat.client import Budget, ChatCache, ChatRunner
    from evalsuite.scoring import plan_llm, score_rows
    from records.files import atomic_write_text
    from study.judge_server import JudgeServer

    out = Path(out)
    j = _judges(setup)
    controls = build_controls(setup.per_kind, setup.seed)
    ident = identity(setup, controls)
    card_path = out / "card.json"
    if card_path.exists() and not force:
        try:
            old = json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("identity") == ident and old.get("verdict") in ("pass", "fail"):
            log(f"calibration card up to date: {card_path}")
            return old
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    server = None
    url = None
    try:
        if "demo" in j.names.values():
            server = JudgeServer(j.demo_model or "embedded", out / "judge_server.log")
            url = server.start()
        specs = {k: v for k, v in _specs_with_url(j, url).items()}
        cache = ChatCache(setup.cache_dir)
        budget = Budget(setup.max_cost_usd)
        local = url is not None
        kw = dict(
            cache=cache,
            budget=budget,
            concurrency=setup.concurrency,
            **({"timeout_s": 1800, "max_retries": 2, "parse_retries": 0} if local else {}),
        )

        def runners(bypass: bool) -> dict[str, Any]:
            made: dict[Any, ChatRunner] = {}
            res = {}
            for role in ("judge", "relevance"):
                s = specs[role]
                if s is not None:
                    if s not in made:
                        made[s] = ChatRunner(s, bypass_cache=bypass, **kw)
                    res[role] = made[s]
                else:
                    res[role] = None
            return res

        rows = _rows(controls)
        surface = _NoSurface()
        first = runners(False)
        demo = j.kind == "demo"
        log(f"calibration: {len(rows)} controls, judge {j.spec}, relevance {j.names['relevance'] or 'none'}")
        plan = plan_llm(
            rows,
            judge=first["judge"],
            relevance=first["relevance"],
            judge_variant=setup.judge_prompt,
            judge_schema=demo,
        )
        scored = [{**r, **s} for r, s in zip(rows, score_rows(rows, surface, plan), strict=True)]
        idx = _repeat_sample(setup.repeat, len(rows))
        repeats = []
        if idx:
            again = runners(True)
            sample = [rows[i] for i in idx]
            plan2 = plan_llm(
                sample,
                judge=again["judge"],
                relevance=again["relevance"],
                judge_variant=setup.judge_prompt,
                judge_schema=demo,
            )
            rescored = [{**r, **s} for r, s in zip(sample, score_rows(sample, surface, plan2), strict=True)]
            repeats = list(zip([scored[i] for i in idx], rescored, strict=True))
        else:
            again = {}
        calls: dict[str, Any] = {}
        for phase, rs in (("first", first), ("repeat", again)):
            for rn in {id(v): v for v in rs.values() if v is not None}.values():
                roles = "+".join(k for k, v in rs.items() if v is rn)
                st = rn.stats
                calls[f"{phase}:{roles}"] = {
                    "http_calls": st.http_calls,
                    "cache_hits": st.cache_hits,
                    "cost_usd": round(st.cost_usd, 6),
                }
        cache.close()
    finally:
        if server is not None:
            server.stop()
    meta = {
        "judge": {"spec": j.spec, "kind": j.kind, "model": j.names["judge"]},
        "relevance": {"spec": j.names["relevance"]} if j.names["relevance"] else None,
        "identity": ident,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "per_kind": setup.per_kind,
    }
    card = compute_card(
        scored, repeats, setup.thresholds, has_relevance=specs["relevance"] is not None, meta=meta
    )
    card["seconds"] = round(time.time() - t0, 1)
    card["calls"] = calls
    lines = [json.dumps(r, ensure_ascii=False, default=str) for r in scored]
    atomic_write_text("\n".join(lines) + "\n", out / "controls.jsonl")
    atomic_write_text(render_md(card), out / "card.md")
    atomic_write_text(json.dumps(card, indent=1, ensure_ascii=False), card_path)
    return card


class _NoSurface:
    """score_rows needs a surface scorer; calibration computes fastText itself and needs nothing else."""

    def score(self, **_: Any) -> dict[str, Any]:
        return {}


def _specs_with_url(judges: Any, url: str | None) -> dict[str, Any]:
    from chat.client import parse_model_spec

    flags = judges.flags(url)
    return {"judge": parse_model_spec(flags["judge"]), "relevance": parse_model_spec(flags["relevance"])}
