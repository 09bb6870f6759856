"""study.grid end to end on the tiny random config (2 LRs, 4 prompts, fake OpenAI judge): layout of
docs/results.md, a SIGKILL mid-run resumed, a second invocation that reruns nothing, stale detection,
the dry run over the seven paper configs, and bad flags."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_openai_server import FakeOpenAIServer

from records.schemas import GENERATION_SCHEMA, INSTRUCTION_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("smollm2-runlocal-lr0.0001", "smollm2-runlocal-lr0.001")
PAPER_CONFIGS = (
    "llama2_13b_dolly_en_ft",
    "llama2_7b_dolly_en_ft",
    "llama2_13b_lima_en_ft",
    "llama2_13b_dolly_en_lora",
    "llama2_13b_dolly_dt_ft",
    "tower7b_dolly_en_ft",
    "tower7b_dolly_dt_ft",
)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return {**e, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def grid_args(workdir: Path, cache: Path, judge: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "study.grid", "--configs=configs/smollm2.py:runlocal", "--lrs=1e-4,1e-3",
        f"--workdir={workdir}", "--eval=paper", "--langs=en,fr", "--subset=tasks=2", "--max_new_tokens=8",
        f"--judge={judge}", f"--cache_dir={cache}", *extra,
    ]  # fmt: skip


def run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def markers(workdir: Path) -> dict[str, str]:
    return {str(p.relative_to(workdir)): p.read_text() for p in sorted(workdir.glob("*/stages/*.json"))}


@pytest.fixture(scope="module")
def judge():
    with FakeOpenAIServer(seed=0, fault_rate=0.0) as srv:
        yield f"openai:fake-judge@{srv.base_url}"


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory, judge):
    """A grid killed (SIGKILL, whole process group) after the first run's training, then rerun to the end."""
    tmp = tmp_path_factory.mktemp("grid")
    workdir, cache = tmp / "runs", tmp / "cache"
    log = open(tmp / "killed.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        grid_args(workdir, cache, judge), cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    first = workdir / RUNS[0] / "stages" / "train.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists(), (tmp / "killed.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    before = first.read_text()
    assert not (workdir / RUNS[1] / "stages" / "score.json").exists()
    done = run(grid_args(workdir, cache, judge))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"[{RUNS[0]}] train: done (skipped)" in done.stdout
    assert first.read_text() == before  # the finished stage was not rerun
    return workdir, cache


EVAL_FILES = ("tasks.json", "alpacaeval_test_subset.en.jsonl", "alpacaeval_test_subset.fr.jsonl")


def _sha256(rel: str) -> str:
    return hashlib.sha256((ROOT / rel).read_bytes()).hexdigest()


def test_layout(grid_dir):
    workdir, _ = grid_dir
    assert json.loads((workdir / "judge.json").read_text())["kind"] == "real"
    for name, lr, min_lr in ((RUNS[0], 1e-4, 1e-5), (RUNS[1], 1e-3, 1e-4)):
        rd = workdir / name
        meta = json.loads((rd / "run.json").read_text())
        resolved = json.loads((rd / "train" / "config.json").read_text())
        assert (resolved["optimizer"]["lr"], resolved["optimizer"]["min_lr"]) == (lr, min_lr)
        canonical = json.dumps(resolved, sort_keys=True)
        assert meta == {
            "run": name,
            "config": "configs/smollm2.py:runlocal",
            "config_hash": hashlib.sha256(canonical.encode()).hexdigest(),
            "label": f"random-tiny / Dolly-En / LoRA / lr {lr:g}",
            "group": "random-tiny / Dolly-En / LoRA",
            "base_model": "random-tiny",
            "data": "dolly_en",
            "method": "lora",
            "lr": lr,
            "anchor": True,
            "overrides": [],
            "protocol": "released",
            "decode": {"max_new_tokens": 8, "repetition_penalty": 1.2},
            "data_files": {  # sha256 of the training file and of the evaluation files generated on
                "train": {"data/train/dolly_subset.jsonl": _sha256("data/train/dolly_subset.jsonl")},
                "eval": {f"data/eval/{f}": _sha256(f"data/eval/{f}") for f in EVAL_FILES},
            },
        }
        assert (rd / "train" / "done.json").exists() and (rd / "train" / "export" / "config.json").exists()
        assert (
            json.loads((rd / "train" / "done.json").read_text())["data_files"] == meta["data_files"]["train"]
        )
        gens = pq.read_table(rd / "generations.parquet")
        assert gens.num_rows == 4
        for field in [*GENERATION_SCHEMA, *INSTRUCTION_SCHEMA]:
            if field.name != "messages":
                assert gens.schema.field(field.name).type == field.type, field.name
        assert sorted(gens.column("id").to_pylist()) == [
            "paper-en-000", "paper-en-055", "paper-fr-000", "paper-fr-055"
        ]  # fmt: skip
        assert set(gens.column("model").to_pylist()) == {name}
        scores = pq.read_table(rd / "scores.parquet").to_pylist()
        assert [s["judge_status"] for s in scores] == ["ok"] * 4
        assert [s["relevance_status"] for s in scores] == ["ok"] * 4
        for stage in ("train", "generate", "score"):
            m = json.loads((rd / "stages" / f"{stage}.json").read_text())
            assert m["stage"] == stage and len(m["key"]) == 64 and m["seconds"] >= 0 and m["finished_at"]
        assert not list((rd / "stages").glob("*.running.json"))
        assert not (rd / "generations.parquet.parts").exists()


def test_second_invocation_reruns_nothing(grid_dir, judge):
    workdir, cache = grid_dir
    before = markers(workdir)
    mtimes = {p: p.stat().st_mtime_ns for p in workdir.glob("*/*.parquet")}
    again = run(grid_args(workdir, cache, judge))
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done (skipped)") == 6
    assert "running" not in again.stdout
    assert markers(workdir) == before
    assert {p: p.stat().st_mtime_ns for p in workdir.glob("*/*.parquet")} == mtimes


def test_dry_run_marks_changed_inputs_stale(grid_dir, judge):
    workdir, cache = grid_dir
    out = run(grid_args(workdir, cache, judge, "--max_new_tokens=9", "--dry_run"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        ln.split()[0]: ln.split()[1:]
        for ln in out.stdout.splitlines()
        if ln.split() and ln.split()[0] in RUNS
    }
    assert rows == {name: ["released", "1.2", "9", "done", "stale", "stale"] for name in RUNS}
    same = run(grid_args(workdir, cache, judge, "--dry_run"))
    assert "stages: 6 done" in same.stdout
    assert "judge" in same.stdout and "0 calls" in same.stdout  # every reply is cached


def test_dry_run_paper_configs_offline(tmp_path):
    configs = ",".join(f"configs/{c}.py" for c in PAPER_CONFIGS)
    out = run(
        [
            sys.executable,
            "-m",
            "study.grid",
            f"--configs={configs}",
            "--lrs=1e-6,1e-5,1e-4",
            f"--workdir={tmp_path / 'runs'}",
            "--judge=openai:gpt-3.5-turbo-0125",
            f"--cache_dir={tmp_path / 'c'}",
            "--dry_run",
        ]  # fmt: skip
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    rows = [
        ln for ln in lines if ln.split() and ln.split()[0].endswith(("-lr1e-06", "-lr1e-05", "-lr0.0001"))
    ]
    assert len(rows) == 21
    assert all(ln.split()[1:] == ["released", "1.2", "512"] + ["to", "run"] * 3 for ln in rows)
    assert {ln.split()[0].rsplit("-lr", 1)[0] for ln in rows} == set(PAPER_CONFIGS)
    assert "stages: 63 to run" in out.stdout
    est = {}  # job -> (calls, prompt tokens, completion tokens, printed USD)
    for ln in lines:
        m = re.fullmatch(
            r"\s*(\w+)\s+(\d+) calls\s+~\s*(\d+) prompt \+\s*(\d+) completion tokens\s+~\$([\d.]+)", ln
        )
        if m:
            est[m[1]] = (int(m[2]), int(m[3]), int(m[4]), float(m[5]))
    assert sorted(est) == ["judge", "modifier", "relevance"], out.stdout
    # each of the 21 runs × 1456 prompts (452 evaluation + 1004 modifier) is judged and checked for relevance
    assert est["judge"][0] == est["relevance"][0] == 21 * 1456 and est["modifier"][0] % 21 == 0
    # a reply is assumed 80 tokens for the 6-criterion judge, 4 for a 0/1 verdict
    assert est["judge"][2] == 80 * est["judge"][0]
    assert est["relevance"][2] == 4 * est["relevance"][0] and est["modifier"][2] == 4 * est["modifier"][0]
    # each prompt quotes a not-yet-generated response of max_new_tokens = 512 tokens (3.5 bytes a token)
    assert all(prompt > calls * 512 for calls, prompt, _, _ in est.values())
    # gpt-3.5-turbo-0125 costs $0.50 per million prompt tokens and $1.50 per million completion tokens
    # (OpenAI's price list); today's numbers, by hand:
    #   judge      31,706,136 × 0.50 + 2,446,080 × 1.50 = 15,853,068.0 + 3,669,120 = 19,522,188.0 µ$
    #   relevance  21,694,239 × 0.50 +   122,304 × 1.50 = 10,847,119.5 +   183,456 = 11,030,575.5 µ$
    #   modifier    2,631,741 × 0.50 +    14,448 × 1.50 =  1,315,870.5 +    21,672 =  1,337,542.5 µ$
    #   total 31,890,306 µ$ ≈ $31.89
    usd = {job: (prompt * 0.50 + completion * 1.50) / 1e6 for job, (_, prompt, completion, _) in est.items()}
    for job, (*_, printed) in est.items():
        assert printed == pytest.approx(usd[job], abs=0.005), job
    assert f"total estimated cost: ~${sum(usd.values()):.2f}" in out.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "c").exists()  # nothing written


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--configs=configs/nope.py", "--configs: config file 'configs/nope.py' does not exist"),
        ("--lrs=1e-4,fast", "--lrs: cannot read 'fast' as a learning rate"),
    ],
)
def test_bad_flags_exit_2(tmp_path, flag, message):
    args = [sys.executable, "-m", "study.grid", "--configs=configs/smollm2.py", "--lrs=1e-4", "--dry_run"]
    key = flag.split("=")[0]
    args = [a for a in args if not a.startswith(key + "=")] + [flag, f"--workdir={tmp_path}"]
    out = run(args)
    assert out.returncode == 2
    assert f"error: {message}" in out.stderr


def test_bad_values_name_the_flag():
    from study import grid_plan as gp

    cases = [
        (lambda: gp.parse_subset("tasks=x"), "--subset: 'tasks=x': 'x' is not an integer"),
        (lambda: gp.parse_subset("items=3"), "--subset: 'items=3': expected tasks=N"),
        (
            lambda: gp.load_config("configs/smollm2.py", ["train.stepz=3"]),
            "--set=train.stepz=3: the config has no key",
        ),
        (
            lambda: gp.load_config("configs/smollm2.py", ["train.steps=many"]),
            "--set=train.steps=many: cannot read 'many' as int",
        ),
        (
            lambda: gp.load_config("configs/smollm2.py:bogus"),
            "--configs: configs/smollm2.py:bogus: ValueError: unknown config",
        ),
        (lambda: gp.parse_lrs(["-1"]), "--lrs: learning rate '-1' must be a positive number"),
        (lambda: gp.select_records(["paper"], ["de"], {}), "--langs: ['de']: expected some of en,fr,pt,ru"),
    ]
    for call, message in cases:
        with pytest.raises(gp.GridError) as e:
            call()
        assert str(e.value).startswith(message), str(e.value)


def test_subset_is_task_balanced_and_aligned():
    from study import grid_plan as gp

    recs = gp.select_records(["paper", "modifiers"], ["en", "ru"], gp.parse_subset("tasks=6,modifiers=2"))
    assert len(recs) == 2 * (6 + 2)
    paper = [r for r in recs if r.eval_set == "paper"]
    assert len({r.task for r in paper}) == 6
    assert [r.item for r in paper if r.lang == "en"] == [r.item for r in paper if r.lang == "ru"]
    mods = [r for r in recs if r.eval_set == "modifiers" and r.lang == "en"]
    assert [r.modifier_type for r in mods] == ["num_items", "short"]


def test_dry_run_decodes_each_run_by_its_protocol_and_config_lr_grid(tmp_path):
    """Seven released configs + their :paper variants in one call, no --lrs: every config trains its own LR
    grid (FT 1e-6/1e-5/1e-4, LoRA 1e-5/1e-4/1e-3) and decodes with its protocol's penalty (1.2 / 1.1)."""
    specs = [f"configs/{c}.py" for c in PAPER_CONFIGS] + [f"configs/{c}.py:paper" for c in PAPER_CONFIGS]
    out = run(
        [
            sys.executable,
            "-m",
            "study.grid",
            f"--configs={','.join(specs)}",
            f"--workdir={tmp_path / 'runs'}",
            f"--cache_dir={tmp_path / 'c'}",
            "--dry_run",
        ]  # fmt: skip
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {ln.split()[0]: ln.split()[1:4] for ln in out.stdout.splitlines() if "-lr" in ln}
    assert len(rows) == 2 * 7 * 3
    for name, (protocol, penalty, tokens) in rows.items():
        paper = "-paper-" in name
        assert (protocol, penalty, tokens) == (
            "paper" if paper else "released",
            "1.1" if paper else "1.2",
            "512",
        )
    ft = {n.rsplit("-lr", 1)[1] for n in rows if n.startswith("llama2_13b_dolly_en_ft-lr")}
    lora = {n.rsplit("-lr", 1)[1] for n in rows if n.startswith("llama2_13b_dolly_en_lora-lr")}
    assert ft == {"1e-06", "1e-05", "0.0001"} and lora == {"1e-05", "0.0001", "0.001"}


def test_config_arguments_with_commas_and_own_lrs():
    from study import grid_plan as gp

    specs = gp.split_config_list(
        "configs/smollm2.py:ft,lima@1e-4,configs/smollm2.py:ft@1e-5+1e-3,configs/a.py"
    )
    assert specs == ["configs/smollm2.py:ft,lima@1e-4", "configs/smollm2.py:ft@1e-5+1e-3", "configs/a.py"]
    runs = gp.plan_runs(specs[:2], None, ["train.steps=3"], include_base=True)
    # one untuned run: the two configs differ only in training data
    assert [r.name for r in runs] == [
        "smollm2-ft-lima-base",
        "smollm2-ft-lima-lr0.0001",
        "smollm2-ft-lr1e-05",
        "smollm2-ft-lr0.001",
    ]
    lima = runs[1].cfg
    assert lima.data.format == "lima" and lima.data.paths == ("data/train/lima.en.jsonl",)
    assert not lima.lora.enabled and lima.train.steps == 3
    # --set list values: items joined with '+', numbers stay numbers
    cfg = gp.load_config("configs/smollm2.py", ["lr_grid=1e-5+2e-4", "data.paths=a.jsonl+b.jsonl"])
    assert cfg.lr_grid == (1e-5, 2e-4) and cfg.data.paths == ("a.jsonl", "b.jsonl")


def test_relevance_defaults_to_the_papers_model_when_configured():
    from study.grid_run import resolve_judges, resolve_relevance

    spec, note = resolve_relevance("paper", env={})
    assert spec == "same" and "LLaMA-2-chat-7B is not configured" in note
    spec, note = resolve_relevance(
        "paper", env={"XLIT_RELEVANCE": "openai:llama-2-7b-chat@http://127.0.0.1:9/v1"}
    )
    assert spec == "openai:llama-2-7b-chat@http://127.0.0.1:9/v1" and "LLaMA-2-chat-7B" in note
    j = resolve_judges("openai:gpt-3.5-turbo-0125", "openai:llama-2-7b-chat@http://127.0.0.1:9/v1", "same")
    assert j.meta()["relevance_model"] == "openai:llama-2-7b-chat@http://127.0.0.1:9/v1"
