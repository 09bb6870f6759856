"""Executing a grid: train → generate → score per run, each stage a subprocess, skipped when done.

Stages run stage by stage over all runs (every train, then every generation, then every scoring), so a
demo judge server only lives during scoring. Each stage is the project's own CLI in a subprocess
(`train.main`, `infer.main`, `evalsuite.score`): memory is returned between stages, a crashing stage does
not take the grid down, and this process never imports JAX's runtime state or loads weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from absl import logging

from chat.client import DEFAULT_CACHE_DIR, ChatCache, LLMConfigError, ModelSpec, parse_model_spec
from evalsuite.data import instructions_table
from evalsuite.scoring import estimate_llm
from records.errors import InputError
from records.files import atomic_write_parquet, atomic_write_text, read_table
from records.schemas import INSTRUCTION_SCHEMA
from study import grid_plan as gp
from study.judge_server import JudgeServer, demo_model_name

SCORE_FORMAT = 3  # part of the score key: bump when the requests evalsuite.score makes change
DEMO_NOTE = (
    "demo judge (not a real judge): a small local model ({model}) served by infer.server and decoded under "
    "a JSON schema; its scores only show that the pipeline runs end to end, they say nothing about quality"
)


@dataclasses.dataclass
class GridOptions:
    configs: Sequence[str]
    lrs: Sequence[float] | None = None  # None: each config's own (gp.config_lrs)
    workdir: str = "runs"
    judge: str = "none"  # none | demo[:MODEL] | openai[:MODEL[@BASE_URL]]
    relevance: str = (
        "paper"  # paper ($XLIT_RELEVANCE, else the judge's model, noted) | same | none | demo | openai:...
    )
    modifier_judge: str = "same"
    eval_sets: Sequence[str] = ("paper", "modifiers")
    langs: Sequence[str] = ()  # () = every language of eval_dir
    eval_dir: str | None = None  # evaluation folder (None: the shipped data/eval); docs/languages.md
    spelling: str = "require"  # evalsuite.score --spelling: require | skip
    subset: str = ""
    # None: each run's protocol (config `decode`: released 1.2, paper 1.1); a value overrides every run
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    batch_size: int = 16
    include_base: bool = False
    overrides: Sequence[str] = ()
    anchor: str = ""
    judge_prompt: str = "paper"
    cache_dir: str = DEFAULT_CACHE_DIR
    max_cost_usd: float | None = None
    concurrency: int = 8
    dry_run: bool = False


@dataclasses.dataclass
class StageResult:
    run: str
    stage: str
    status: str  # skipped | ran | failed | blocked
    seconds: float = 0.0
    detail: str = ""


class StageError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------- judges


@dataclasses.dataclass
class Judges:
    """The LLM models of the score stage, resolved from --judge/--relevance/--modifier_judge."""

    kind: str  # none | demo | real
    spec: str  # judge.json "spec"
    demo_model: str | None  # the model the demo server loads
    names: dict[str, str | None]  # judge/relevance/modifier_judge → "demo" | spec string | None
    relevance_note: str = ""  # how the relevance model was chosen (shown in judge.json, dry run, report)

    def identity(self) -> dict[str, str | None]:
        """What the score key depends on (a demo server's port does not count)."""
        return dict(self.names)

    def flags(self, demo_url: str | None) -> dict[str, str]:
        out = {}
        for role, name in self.names.items():
            if name is None:
                out[role] = "none"
            elif name == "demo":
                out[role] = f"openai:{demo_model_name(self.demo_model)}@{demo_url or 'http://127.0.0.1:0/v1'}"
            else:
                out[role] = name
        return out

    def specs(self) -> dict[str, ModelSpec | None]:
        return {k: parse_model_spec(v) for k, v in self.flags(None).items()}

    def meta(self) -> dict[str, Any]:
        note = {
            "none": "no judge: judge columns are null (surface metrics only)",
            "demo": DEMO_NOTE.format(model=self.demo_model),
            "real": "LLM judge over the OpenAI API (the paper used gpt-3.5-turbo-0125)",
        }[self.kind]
        return {
            "spec": self.spec,
            "kind": self.kind,
            "note": note,
            "models": self.identity(),
            "relevance_model": self.names["relevance"],
            "relevance_note": self.relevance_note,
        }


PAPER_RELEVANCE = "LLaMA-2-chat-7B"  # the paper's relevance model (Sec. 3 and Appendix B; Table 3 says 13B)
RELEVANCE_ENV = "XLIT_RELEVANCE"


def resolve_relevance(relevance: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """`--relevance=paper` (the default) → the endpoint in $XLIT_RELEVANCE (e.g. LLaMA-2-7B-chat served by
    `infer.server`, as `openai:llama-2-7b-chat@http://127.0.0.1:8001/v1`) when set, else the judge's model,
    with a note saying so. Returns (spec, note)."""
    if relevance.strip() != "paper":
        return relevance, ""
    value = (os.environ if env is None else env).get(RELEVANCE_ENV, "").strip()
    if value:
        return value, f"relevance by ${RELEVANCE_ENV} = {value} (the paper used {PAPER_RELEVANCE})"
    return "same", (
        f"relevance scored by the judge's model: the paper's {PAPER_RELEVANCE} is not configured "
        f"(serve it and set ${RELEVANCE_ENV}=openai:MODEL@URL, or pass --relevance)"
    )


def resolve_judges(judge: str, relevance: str, modifier_judge: str) -> Judges:
    relevance, rel_note = resolve_relevance(relevance)

    def one(flag: str, value: str, same: str | None) -> str | None:
        v = value.strip()
        if v == "same":
            return same
        if v.lower() in ("", "none"):
            return None
        if v == "demo" or v.startswith("demo:"):
            return "demo"
        try:
            spec = parse_model_spec(v)
        except LLMConfigError as e:
            raise gp.GridError(f"--{flag}: {e} (or demo[:MODEL_DIR])") from None
        return str(spec)

    j = one("judge", judge, None)
    demo_model = None
    for v in (judge, relevance, modifier_judge):
        if v.strip().startswith("demo"):
            demo_model = v.strip().partition(":")[2] or "embedded"
    names = {
        "judge": j,
        "relevance": one("relevance", relevance, j),
        "modifier_judge": one("modifier_judge", modifier_judge, j),
    }
    kind = "none" if j is None else "demo" if j == "demo" else "real"
    spec = "none" if j is None else f"demo:{demo_model_name(demo_model)}" if j == "demo" else j
    if names["relevance"] is None:
        rel_note = "relevance not scored"
    return Judges(kind, spec, demo_model, names, rel_note)


# --------------------------------------------------------------------------------------------- stages


def _fmt_override(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))
    return repr(value) if isinstance(value, float) else str(value)


def _get(cfg: Any, key: str) -> Any:
    for p in key.split("."):
        cfg = cfg[p]
    return cfg


def decoding(run: gp.RunSpec, opts: GridOptions) -> dict[str, Any]:
    """How a run is decoded: its config's protocol settings, unless a grid flag overrides them."""
    d = run.cfg.decode
    return {
        "max_new_tokens": d.max_new_tokens if opts.max_new_tokens is None else opts.max_new_tokens,
        "repetition_penalty": d.repetition_penalty
        if opts.repetition_penalty is None
        else opts.repetition_penalty,
        "template": run.cfg.model.chat_template,
        "dtype": run.cfg.model.dtype,
    }


class Grid:
    def __init__(self, opts: GridOptions):
        self.opts = opts
        self.workdir = Path(opts.workdir)
        self.runs = gp.plan_runs(
            list(opts.configs),
            list(opts.lrs) if opts.lrs else None,
            list(opts.overrides),
            opts.include_base,
            opts.anchor,
        )
        for r in self.runs:
            dec = decoding(r, opts)
            r.meta["decode"] = {k: dec[k] for k in ("repetition_penalty", "max_new_tokens")}
            if dec["repetition_penalty"] != r.cfg.decode.repetition_penalty:
                r.meta["decode_note"] = (
                    f"repetition penalty {dec['repetition_penalty']} set by the grid, not the "
                    f"{r.cfg.protocol} protocol's {r.cfg.decode.repetition_penalty}"
                )
        self.records = gp.select_records(
            opts.eval_sets, opts.langs, gp.parse_subset(opts.subset), opts.eval_dir
        )
        if not opts.langs:  # every language of the evaluation folder
            self.opts = opts = dataclasses.replace(
                opts, langs=tuple(dict.fromkeys(r.lang for r in self.records))
            )
        check_scorable(self.records, opts)
        self.prompts_hash = gp.prompts_hash(self.records)
        self.judges = resolve_judges(opts.judge, opts.relevance, opts.modifier_judge)
        self.server: JudgeServer | None = None
        for r in self.runs:
            if not r.trains and not r.cfg.model.init_from:
                raise gp.GridError(f"--include_base: {r.config} has no base model (model.init_from is empty)")

    # ---------------------------------------------------------------------------------------- keys

    def keys(self, run: gp.RunSpec) -> dict[str, str | None]:
        o = self.opts
        train = gp.stage_key("train", run.config_hash, {}) if run.trains else None
        gen_inputs = {
            "train": train,
            "model": None if run.trains else run.cfg.model.init_from,
            "prompts": self.prompts_hash,
            "decoding": decoding(run, o),
        }
        generate = gp.stage_key("generate", run.config_hash, gen_inputs)
        score_inputs = {
            "generate": generate,
            "models": self.judges.identity(),
            "judge_prompt": o.judge_prompt,
            "judge_schema": self.judges.kind == "demo",
            "format": SCORE_FORMAT,
        }
        if o.eval_dir or o.spelling != "require":  # thresholds of added languages; spelling skipped
            score_inputs.update(eval_dir=o.eval_dir, spelling=o.spelling)
        return {
            "train": train,
            "generate": generate,
            "score": gp.stage_key("score", run.config_hash, score_inputs),
        }

    def statuses(self, run: gp.RunSpec) -> dict[str, str]:
        rd = gp.RunDir(self.workdir, run.name)
        return {s: ("-" if k is None else rd.status(s, k)) for s, k in self.keys(run).items()}

    # ---------------------------------------------------------------------------------------- io

    def _run_cmd(self, cmd: list[str], log: Path, what: str) -> str:
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "a") as f:
            f.write(f"\n=== {gp.now()} {' '.join(cmd)}\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
        if rc != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-15:])
            raise StageError(f"{what} failed (exit {rc}); log {log}:\n{tail}")
        return log.read_text(errors="replace")

    # ---------------------------------------------------------------------------------------- train

    def train(self, run: gp.RunSpec, key: str) -> dict[str, Any]:
        rd = gp.RunDir(self.workdir, run.name)
        cfg_path = rd.train / "config.json"
        want = json.loads(gp.config_json(run.cfg))
        if cfg_path.exists() and json.loads(cfg_path.read_text()) != want:
            logging.warning("%s: train/ holds another config; starting it again", run.name)
            shutil.rmtree(rd.train)
        cmd = [sys.executable, "-m", "train.main", f"--config={run.config}", f"--workdir={rd.train}"]
        keys = ["optimizer.lr", "optimizer.min_lr"] + [o.partition("=")[0] for o in run.overrides]
        cmd += [f"--config.{k}={_fmt_override(_get(run.cfg, k))}" for k in dict.fromkeys(keys)]
        self._run_cmd(cmd, rd.stages / "train.log", f"{run.name}/train")
        if json.loads(cfg_path.read_text()) != want:
            raise StageError(
                f"{run.name}/train: the trainer resolved another config than the grid ({cfg_path})"
            )
        done = json.loads((rd.train / "done.json").read_text())
        return {k: done.get(k) for k in ("steps", "final_loss", "wall_s", "export", "data_files")}

    # ---------------------------------------------------------------------------------------- generate

    def generate(self, run: gp.RunSpec, key: str, fresh: bool) -> dict[str, Any]:
        rd = gp.RunDir(self.workdir, run.name)
        parts = rd.generations.with_name(rd.generations.name + ".parts")
        if fresh:  # outputs of other inputs: never mix them into these generations
            rd.generations.unlink(missing_ok=True)
            shutil.rmtree(parts, ignore_errors=True)
        atomic_write_parquet(instructions_table(list(self.records)), rd.prompts)
        model = str(rd.train / "export") if run.trains else run.cfg.model.init_from
        o, dec = self.opts, decoding(run, self.opts)
        cmd = [
            sys.executable, "-m", "infer.main", f"--model={model}", f"--input={rd.prompts}",
            f"--output={rd.generations}", f"--max_new_tokens={dec['max_new_tokens']}",
            f"--repetition_penalty={dec['repetition_penalty']}", f"--batch_size={o.batch_size}",
            f"--template={run.cfg.model.chat_template}", f"--dtype={run.cfg.model.dtype}", f"--model_name={run.name}",
        ]  # fmt: skip
        self._run_cmd(cmd, rd.stages / "generate.log", f"{run.name}/generate")
        table = _typed_generations(read_table(rd.generations))
        atomic_write_parquet(table, rd.generations)
        finish = table.column("finish_reason").to_pylist()
        return {
            "rows": table.num_rows,
            "response_tokens": sum(table.column("response_tokens").to_pylist()),
            "finish_reasons": {r: finish.count(r) for r in sorted(set(finish), key=str)},
            "model": model,
        }

    # ---------------------------------------------------------------------------------------- score

    def score(self, run: gp.RunSpec, key: str) -> dict[str, Any]:
        rd = gp.RunDir(self.workdir, run.name)
        url = None
        if "demo" in self.judges.names.values():
            if self.server is None:
                server = JudgeServer(self.judges.demo_model or "embedded", self.workdir / "judge_server.log")
                try:
                    server.start()
                except RuntimeError as e:
                    raise StageError(str(e)) from None
                self.server = server
            url = self.server.base_url
        flags = self.judges.flags(url)
        o = self.opts
        cmd = [
            sys.executable, "-m", "evalsuite.score", f"--generations={rd.generations}", f"--output={rd.scores}",
            f"--judge={flags['judge']}", f"--relevance={flags['relevance']}",
            f"--modifier_judge={flags['modifier_judge']}", f"--judge_prompt={o.judge_prompt}",
            f"--cache_dir={o.cache_dir}", f"--concurrency={o.concurrency}",
        ]  # fmt: skip
        if o.eval_dir:
            cmd.append(f"--eval_dir={o.eval_dir}")
        if o.spelling != "require":
            cmd.append(f"--spelling={o.spelling}")
        if self.judges.kind == "demo":
            cmd.append("--judge_schema")
        if url is not None:  # a CPU server answers a batch in minutes; a timed-out request would be re-sent
            cmd += ["--timeout_s=1800", "--max_retries=2", "--parse_retries=0"]  # greedy: same reply again
        if o.max_cost_usd is not None:
            cmd.append(f"--max_cost_usd={o.max_cost_usd}")
        text = self._run_cmd(cmd, rd.stages / "score.log", f"{run.name}/score")
        summary: dict[str, Any] = {}
        for line in reversed(text.splitlines()):
            if line.startswith("{") and '"rows"' in line:
                summary = json.loads(line)
                break
        demo = f"demo:{demo_model_name(self.judges.demo_model)}"
        models = {k: (demo if v == "demo" else v) for k, v in self.judges.identity().items()}
        return {"summary": summary, "models": models}  # read by the report (relevance model per run)

    # ---------------------------------------------------------------------------------------- driver

    def run(self) -> list[StageResult]:
        """Runs every stage that is not done; returns what happened per run and stage."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(self.judges.meta(), indent=1), self.workdir / "judge.json")
        hashes = gp.FileHashes()
        for run in self.runs:
            o = self.opts
            run.meta["data_files"] = gp.data_files(run, o.eval_sets, o.langs, o.eval_dir, hashes)
            gp.RunDir(self.workdir, run.name).write_run_json(run.meta)
        results: list[StageResult] = []
        failed: set[str] = set()
        try:
            for stage in gp.STAGES:
                for run in self.runs:
                    results.append(self._stage(run, stage, failed))
        finally:
            if self.server is not None:
                self.server.stop()
                self.server = None
        return results

    def _stage(self, run: gp.RunSpec, stage: str, failed: set[str]) -> StageResult:
        key = self.keys(run)[stage]
        if key is None:
            return StageResult(run.name, stage, "skipped", detail="base model: no training")
        if run.name in failed:
            return StageResult(run.name, stage, "blocked", detail="an earlier stage failed")
        rd = gp.RunDir(self.workdir, run.name)
        status = rd.status(stage, key)
        if status == "done":
            print(f"[{run.name}] {stage}: done (skipped)", flush=True)
            return StageResult(run.name, stage, "skipped", detail="done")
        running = rd.running(stage)
        fresh = status == "stale" or (running is not None and running != key)
        print(
            f"[{run.name}] {stage}: {'resuming' if running == key else 'running'} (log {rd.stages / stage}.log)",
            flush=True,
        )
        (rd.stages / f"{stage}.json").unlink(missing_ok=True)
        rd.start(stage, key)
        t0 = time.time()
        try:
            if stage == "train":
                extra = self.train(run, key)
            elif stage == "generate":
                extra = self.generate(run, key, fresh)
            else:
                extra = self.score(run, key)
        except (StageError, OSError, json.JSONDecodeError) as e:
            failed.add(run.name)
            print(f"[{run.name}] {stage}: FAILED: {e}", file=sys.stderr, flush=True)
            return StageResult(run.name, stage, "failed", time.time() - t0, str(e))
        dt = time.time() - t0
        rd.finish(stage, key, dt, {"run": run.name, **extra})
        print(f"[{run.name}] {stage}: done in {dt:.1f}s", flush=True)
        return StageResult(run.name, stage, "ran", dt)

    # ---------------------------------------------------------------------------------------- dry run

    def estimate(self) -> dict[str, dict[str, float]]:
        """LLM calls/tokens/cost still needed for every score stage not done (no key, no network)."""
        specs = self.judges.specs()
        if not any(specs.values()):
            return {}
        cache_file = Path(os.path.expanduser(self.opts.cache_dir)) / "chat_cache.sqlite"
        cache = ChatCache(self.opts.cache_dir) if cache_file.exists() else None

        def planned(run: gp.RunSpec) -> list[dict[str, Any]]:
            filler = "x" * int(decoding(run, self.opts)["max_new_tokens"] * 3.5)  # estimate_tokens() = budget
            return [{**r.to_row(), "response": filler} for r in self.records]

        zero = {"calls": 0.0, "prompt_tokens": 0.0, "completion_tokens": 0.0, "cost_usd": 0.0}
        roles = (("judge", "judge"), ("relevance", "relevance"), ("modifier", "modifier_judge"))
        total = {name: dict(zero) for name, role in roles if specs[role] is not None}
        for run in self.runs:
            st = self.statuses(run)
            if st["score"] == "done":
                continue
            rows = (
                read_table(gp.RunDir(self.workdir, run.name).generations).to_pylist()
                if st["generate"] == "done"
                else planned(run)
            )
            est = estimate_llm(
                rows,
                judge=specs["judge"],
                relevance=specs["relevance"],
                modifier_judge=specs["modifier_judge"],
                judge_variant=self.opts.judge_prompt,
                judge_schema=self.judges.kind == "demo",
                cache=cache,
            )
            for name, e in est.items():
                for k, v in e.items():
                    total[name][k] += v
        if cache is not None:
            cache.close()
        return total

    def dry_run_text(self) -> str:
        o = self.opts
        lines = [
            f"grid: {len(self.runs)} runs × {len(gp.STAGES)} stages in {self.workdir}/; "
            f"{len(self.records)} prompts per run (eval={','.join(o.eval_sets)}, langs={','.join(o.langs)}, "
            f"subset={o.subset or 'all'}); decoding per run from its protocol"
            + ("" if o.max_new_tokens is None else f", max_new_tokens={o.max_new_tokens} (--max_new_tokens)")
            + (
                ""
                if o.repetition_penalty is None
                else f", penalty {o.repetition_penalty} (--repetition_penalty)"
            ),
            f"judge: {self.judges.spec} ({self.judges.kind}); relevance: {self.judges.names['relevance'] or 'none'}; "
            f"modifier judge: {self.judges.names['modifier_judge'] or 'none'}",
            *([f"relevance: {self.judges.relevance_note}"] if self.judges.relevance_note else []),
            "",
            f"{'run':<48}{'protocol':<10}{'penalty':>8} {'tokens':>6}  {'train':<10}{'generate':<10}{'score':<10}",
        ]
        counts: dict[str, int] = {}
        for run in self.runs:
            st = self.statuses(run)
            for v in st.values():
                counts[v] = counts.get(v, 0) + 1
            dec = decoding(run, o)
            lines.append(
                f"{run.name:<48}{run.cfg.protocol:<10}{dec['repetition_penalty']:>8g} {dec['max_new_tokens']:>6}  "
                f"{st['train']:<10}{st['generate']:<10}{st['score']:<10}"
            )
        lines.append("stages: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k != "-"))
        est = self.estimate()
        if est:
            lines.append(
                "\nLLM calls still to make (responses not generated yet are assumed max_new_tokens long):"
            )
            for name, e in est.items():
                lines.append(
                    f"  {name:<10} {int(e['calls']):>7} calls  ~{int(e['prompt_tokens']):>10} prompt + "
                    f"{int(e['completion_tokens']):>8} completion tokens  ~${e['cost_usd']:.2f}"
                )
            lines.append(f"  total estimated cost: ~${sum(e['cost_usd'] for e in est.values()):.2f}")
        else:
            lines.append("\nno LLM judge or relevance model: no calls, cost $0")
        return "\n".join(lines)


def check_scorable(records: Sequence[Any], opts: GridOptions) -> None:
    """Before any training: every language the responses should be in has a fastText label and a Hunspell
    dictionary (unless --spelling=skip); GridError naming the Debian package otherwise."""
    from evalsuite.surface import SurfaceScorer

    try:
        SurfaceScorer(spelling=opts.spelling).check_rows([r.to_row() for r in records])
    except InputError as e:
        raise gp.GridError(str(e)) from None


def _typed_generations(table: pa.Table) -> pa.Table:
    """Instruction columns passed through infer.main cast back to INSTRUCTION_SCHEMA types."""
    for field in INSTRUCTION_SCHEMA:
        if field.name in table.column_names and field.name != "messages":
            i = table.schema.get_field_index(field.name)
            table = table.set_column(i, field, table.column(field.name).cast(field.type))
    return table
