"""DoFns of the scoring pipeline: surface metrics per record, LLM metrics per batch (evalsuite's runner)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

NS = "xlit.score"
DEAD = "dead"
SURFACE_KEY = "_surface"


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """What evalsuite.score's flags say about the LLM metrics (picklable; runners are built in setup)."""

    judge: str = "none"
    relevance: str = "none"
    modifier_judge: str = "same"
    judge_prompt: str = "paper"
    cache_dir: str | None = "~/.cache/xlit/judge"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 6
    parse_retries: int = 2
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    concurrency: int = 8
    max_cost_usd: float | None = None
    price_per_mtok: tuple[float, float] | None = None
    retry_failed: bool = False


def dead_letter(row: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    keep = {k: v for k, v in row.items() if k != SURFACE_KEY}
    return {
        "id": str(row.get("id")),
        "stage": stage,
        "reason": reason,
        "record": json.dumps(keep, ensure_ascii=False, default=str),
    }


class SurfaceFn(beam.DoFn):
    """fastText language id, code-switching, Hunspell, programmatic modifier checks (loaded in setup)."""

    def __init__(
        self,
        lid_model: str | None,
        dict_dirs: tuple[str, ...],
        min_chars: int,
        eval_dir: str | None = None,
        spelling: str = "require",
    ):
        self.args = (lid_model, tuple(dict_dirs), min_chars)
        self.kwargs = {"eval_dir": eval_dir, "spelling": spelling}
        self.items = Metrics.counter(NS, "items")
        self.failures = Metrics.counter(NS, "failures")

    def setup(self) -> None:
        from evalsuite.surface import SurfaceScorer

        self.scorer = SurfaceScorer(*self.args, **self.kwargs)

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        self.items.inc()
        try:
            cols = self.scorer.score(
                lang=row["lang"],
                response=row["response"],
                modifier_type=row.get("modifier_type"),
                modifier_arg=row.get("modifier_arg"),
            )
        except (ValueError, TypeError, KeyError) as e:
            self.failures.inc()
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(row, "surface", f"{type(e).__name__}: {e}"))
            return
        yield {**row, SURFACE_KEY: cols}


class _Precomputed:
    """Stands in for SurfaceScorer in evalsuite.scoring.score_rows: returns the columns SurfaceFn made."""

    def __init__(self, rows: list[dict[str, Any]]):
        self._it = iter([r[SURFACE_KEY] for r in rows])

    def score(self, **_: Any) -> dict[str, Any]:
        return dict(next(self._it))


class LLMScoreFn(beam.DoFn):
    """Judge, relevance and modifier-judge calls for a batch, through evalsuite's ChatRunner.

    One ChatCache (sqlite, shared across processes), one Budget and one runner per model per DoFn
    instance; retries, backoff and the cost cap are the runner's. Rows whose judge or relevance call still
    failed go to the dead-letter output as well (with the reason) -- the main output keeps them with
    status "failed", exactly as evalsuite.score does.
    """

    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        self.failures = Metrics.counter(NS, "failures")
        self.calls = Metrics.counter(NS, "judge_calls")
        self.hits = Metrics.counter(NS, "cache_hits")
        self.llm_failed = Metrics.counter(NS, "llm_failed")

    def setup(self) -> None:
        from chat.client import Budget, ChatCache, ChatRunner, parse_model_spec

        c = self.cfg
        self.judge = parse_model_spec(c.judge)
        self.rel = parse_model_spec(c.relevance)
        self.mod = self.judge if c.modifier_judge == "same" else parse_model_spec(c.modifier_judge)
        specs = {s for s in (self.judge, self.rel, self.mod) if s is not None}
        self.cache = ChatCache(c.cache_dir) if c.cache_dir and specs else None
        self.budget = Budget(c.max_cost_usd)
        self.runners = {
            s: ChatRunner(
                s,
                cache=self.cache,
                api_key_env=c.api_key_env,
                timeout_s=c.timeout_s,
                max_retries=c.max_retries,
                parse_retries=c.parse_retries,
                backoff_s=c.backoff_s,
                backoff_max_s=c.backoff_max_s,
                concurrency=c.concurrency,
                budget=self.budget,
                price_per_mtok=c.price_per_mtok,
                retry_failed=c.retry_failed,
            )
            for s in specs
        }

    def teardown(self) -> None:
        if getattr(self, "cache", None) is not None:
            self.cache.close()

    def process(self, batch: list[dict[str, Any]]) -> Iterator[Any]:
        from evalsuite.scoring import plan_llm, score_rows

        before = {s: (r.stats.http_calls, r.stats.cache_hits) for s, r in self.runners.items()}
        plan = plan_llm(
            batch,
            judge=self.runners.get(self.judge),
            relevance=self.runners.get(self.rel),
            modifier_judge=self.runners.get(self.mod),
            judge_variant=self.cfg.judge_prompt,
        )
        scores = score_rows(batch, _Precomputed(batch), plan)
        for s, r in self.runners.items():
            self.calls.inc(r.stats.http_calls - before[s][0])
            self.hits.inc(r.stats.cache_hits - before[s][1])
        for row, cols in zip(batch, scores, strict=True):
            out = {k: v for k, v in row.items() if k != SURFACE_KEY}
            out.update(cols)
            reasons = []
            if cols["judge_status"] == "failed":
                reasons.append(f"judge: {cols['judge_error']}")
            if cols["relevance_status"] == "failed":
                reasons.append(f"relevance: unparseable or no reply; raw: {cols['relevance_raw']!r}")
            if cols.get("modifier_status") == "failed":
                reasons.append(f"modifier: {cols['modifier_detail']}")
            if reasons:
                self.failures.inc()
                yield beam.pvalue.TaggedOutput(DEAD, dead_letter(out, "llm", "; ".join(reasons)))
            yield out
