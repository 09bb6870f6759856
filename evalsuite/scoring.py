"""Scoring a table of generations in one process: surface metrics, then the LLM-based metrics.

`score_table` is what `python -m evalsuite.score` runs; the Beam pipeline can call `SurfaceScorer.score`
per record and `LLMPlan` per batch instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from absl import logging

from chat.client import ChatCache, ChatOutcome, ChatRequest, ChatRunner, Estimator, ModelSpec
from evalsuite.judge import binary_schema_format, judge_columns, judge_request, task_text
from evalsuite.modifiers import LLM_TYPES, helpfulness_with_modifier, modifier_request
from evalsuite.records import score_columns
from evalsuite.relevance import relevance_columns, relevance_request
from evalsuite.surface import SurfaceScorer
from records.schemas import SCORE_SCHEMA, SchemaError, validate


@dataclasses.dataclass
class LLMJob:
    name: str  # judge | relevance | modifier
    runner: ChatRunner | Estimator  # an Estimator plans and estimates only
    rows: list[int]
    requests: list[ChatRequest]


@dataclasses.dataclass
class LLMPlan:
    jobs: list[LLMJob]

    def estimate(self) -> dict[str, dict[str, float]]:
        return {job.name: job.runner.estimate(job.requests) for job in self.jobs}

    def run(self) -> dict[str, dict[int, ChatOutcome]]:
        return {
            job.name: dict(zip(job.rows, job.runner.run(job.requests, desc=job.name)))  # type: ignore[union-attr]
            for job in self.jobs
        }


def _instruction_base(row: dict[str, Any]) -> str:
    """The modifier sentence of a modifier row: the instruction minus base_instruction (if given)."""
    task = task_text(row["messages"])
    base = row.get("base_instruction")
    return task[len(base) :].strip() if base and task.startswith(base) else ""


def plan_llm(
    rows: Sequence[dict[str, Any]],
    *,
    judge: ChatRunner | None = None,
    relevance: ChatRunner | None = None,
    modifier_judge: ChatRunner | None = None,
    judge_variant: str = "paper",
    judge_schema: bool = False,
) -> LLMPlan:
    """All LLM requests for `rows`, grouped per metric (runners, or Estimators for an estimate only).

    judge_schema: for a small local demo judge, every request asks for a JSON schema (judge_schema_format,
    binary_schema_format) that infer.server decodes exactly; real judges keep the paper's JSON mode / text.
    """
    jobs = []
    if judge is not None:
        reqs = [
            judge_request(task_text(r["messages"]), r["response"], judge_variant, schema=judge_schema)
            for r in rows
        ]
        jobs.append(LLMJob("judge", judge, list(range(len(rows))), reqs))
    if relevance is not None:
        reqs = [relevance_request(task_text(r["messages"]), r["response"]) for r in rows]
        jobs.append(LLMJob("relevance", relevance, list(range(len(rows))), reqs))
    if modifier_judge is not None:
        idx = [i for i, r in enumerate(rows) if r.get("modifier_type") in LLM_TYPES]
        reqs = [
            modifier_request(
                rows[i]["modifier_type"],
                task_text(rows[i]["messages"]),
                rows[i]["response"],
                _instruction_base(rows[i]),
            )
            for i in idx
        ]
        jobs.append(LLMJob("modifier", modifier_judge, idx, reqs))
    if judge_schema:  # the demo judge: the 0/1 prompts also decode under a schema ({"verdict": 0|1})
        for job in jobs:
            if job.name != "judge":
                for r in job.requests:
                    r.params = {**r.params, "response_format": binary_schema_format()}
    return LLMPlan(jobs)


def estimate_llm(
    rows: Sequence[dict[str, Any]],
    *,
    judge: ModelSpec | None,
    relevance: ModelSpec | None,
    modifier_judge: ModelSpec | None,
    judge_variant: str = "paper",
    judge_schema: bool = False,
    cache: ChatCache | None = None,
    price_per_mtok: tuple[float, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Uncached calls, tokens and USD per metric for scoring `rows`, without a client, key or network."""
    specs = {s for s in (judge, relevance, modifier_judge) if s is not None}
    est = {s: Estimator(s, cache=cache, price_per_mtok=price_per_mtok) for s in specs}
    plan = plan_llm(
        rows,
        judge=est.get(judge),  # type: ignore[arg-type]
        relevance=est.get(relevance),  # type: ignore[arg-type]
        modifier_judge=est.get(modifier_judge),  # type: ignore[arg-type]
        judge_variant=judge_variant,
        judge_schema=judge_schema,
    )
    return plan.estimate()


def score_rows(
    rows: Sequence[dict[str, Any]], surface: SurfaceScorer, plan: LLMPlan | None = None
) -> list[dict[str, Any]]:
    """Score columns (score_columns()) for each row, in order."""
    t0 = time.perf_counter()
    out = [
        surface.score(
            lang=r["lang"],
            response=r["response"],
            modifier_type=r.get("modifier_type"),
            modifier_arg=r.get("modifier_arg"),
        )
        for r in rows
    ]
    dt = time.perf_counter() - t0
    logging.info(
        "surface metrics: %d responses in %.2fs (%.0f responses/s)", len(rows), dt, len(rows) / max(dt, 1e-9)
    )
    results = plan.run() if plan is not None else {}
    judged, rel, mod = results.get("judge"), results.get("relevance"), results.get("modifier")
    for i, cols in enumerate(out):
        cols.update(judge_columns(judged.get(i) if judged is not None else None))
        cols.update(relevance_columns(rel.get(i) if rel is not None else None))
        if mod is not None and i in mod:
            o = mod[i]
            cols.update(
                modifier_ok=bool(o.value) if o.status == "ok" else None,
                modifier_status=o.status,
                modifier_detail=o.raw if o.status == "ok" else f"{o.error}; raw: {o.raw!r}",
            )
        cols["judge_helpfulness_mod"] = (
            helpfulness_with_modifier(cols["judge_helpfulness"], cols["modifier_ok"])
            if rows[i].get("modifier_type")
            else None
        )
    return out


def attach_scores(table: pa.Table, scores: Sequence[dict[str, Any]], source: str = "scores") -> pa.Table:
    """`table` (score columns it already had are replaced) plus the score columns, typed as SCORE_SCHEMA."""
    names = score_columns()
    replaced = [n for n in names if n in table.column_names]
    if replaced:
        logging.warning("input already has score columns %s; they are replaced", replaced)
        table = table.drop_columns(replaced)
    for name in names:
        field = SCORE_SCHEMA.field(name)
        table = table.append_column(field, pa.array([s[name] for s in scores], type=field.type))
    try:
        validate(table, SCORE_SCHEMA, source)
    except SchemaError as e:
        raise SchemaError(f"{e} (the input's id/lang columns must be strings)") from None
    return table
