"""Two JAX processes on 127.0.0.1 (4 CPU devices each, one 2×2×2 (data, fsdp, tensor) mesh over all 8) against
one process with 8 devices: the same parameters after training steps, a checkpoint written by the pair that
resumes in one process, and the same greedy tokens from sharded decoding.

The pair runs the trainer's own loop (`train.loop.run`, what `python -m train.main --distributed` runs after
`jax.distributed.initialize`), so each host's loader yields only its rows of the global batch
(`train.state.local_rows`) and `put_batch` assembles the global array from the two halves
(`jax.make_array_from_process_local_data`). The workers are this module run as a script:
    python -m tests.test_multihost pair PROCESS_ID PORT OUT_DIR MODEL_DIR   (XLA_FLAGS: 4 devices)
    python -m tests.test_multihost single OUT_DIR MODEL_DIR                  (XLA_FLAGS: 8 devices)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.train_helpers import compile_cache_env, tiny_config

ROOT = Path(__file__).resolve().parents[1]
STEPS, ROWS, SEQ = 3, 4, 128  # the pair stops after step 2; one process resumes its checkpoint to step 3
PROMPTS = [
    [{"role": "user", "content": "How do I wrap a present neatly?"}],
    [{"role": "user", "content": "Como embrulhar um presente? Explique passo a passo."}],
    "Once upon a time",
]
NEW_TOKENS = 12
# Tolerance, pair vs one process (fp32). Both sides run the same SPMD program on the same 2×2×2 mesh; only
# the transport of the collectives differs (gloo between the processes, in-process copies otherwise). A
# reduction that added its partial sums in another order would move a value by a few ulps (~1e-7
# relative); Adam's update (lr·m/√v, |update| ≤ ~lr = 1e-3) passes that on as ~1e-10, far below 1e-6.
# Measured: bitwise equal. One step moves the weights by ~lr = 1e-3 (asserted: > 100 × ATOL), so a
# wrong or missing row, a host's share counted twice or a skipped step cannot pass.
ATOL = 1e-6


def _config():
    """Tiny random model, shipped Dolly subset, 4 rows × 128 tokens (one row per data×fsdp shard)."""
    return tiny_config(
        "ft",
        **{
            "optimizer.lr": 1e-3,
            "train.steps": STEPS,
            "train.grad_accum": 1,
            "data.batch_tokens": ROWS * SEQ,
            "data.seq_len": SEQ,
            "checkpoint.save_every": 1,
            "checkpoint.keep": STEPS,
            "mesh.data": 2,
            "mesh.fsdp": 2,
            "mesh.tensor": 2,
        },
    )


def _decode(model_dir: str) -> list[list[int]]:
    from infer.decode import DecodeParams
    from infer.engine import Engine
    from models.sharding import make_mesh

    engine = Engine.from_path(model_dir, max_batch=4, mesh=make_mesh(2, 2, 2))
    q = engine.decoder.params["layers"][0]["q"]
    assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape != q.shape
    return [r.ids for r in engine.generate(PROMPTS, DecodeParams(max_new_tokens=NEW_TOKENS))]


def _worker(argv: list[str]) -> None:
    import jax

    from models.sharding import make_mesh
    from train.loop import run
    from train.state import local_rows

    if argv[0] == "pair":
        pid, port, out, model_dir = int(argv[1]), int(argv[2]), Path(argv[3]), argv[4]
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=2,
            process_id=pid,
            initialization_timeout=120,
        )
        assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
        rows = local_rows(make_mesh(2, 2, 2), ROWS).tolist()  # the rows this host's loader yields
        summary = run(_config(), out / "pair", stop_after=2)
        assert summary == {"finished": False, "steps": 2}, summary
        tokens = _decode(model_dir)
        (out / f"pair{pid}.json").write_text(json.dumps({"rows": rows, "tokens": tokens}))
        jax.distributed.shutdown()
    else:
        out, model_dir = Path(argv[1]), argv[2]
        assert (jax.process_count(), jax.device_count()) == (1, 8)
        rows = local_rows(make_mesh(2, 2, 2), ROWS).tolist()
        ref = run(_config(), out / "single")  # steps 1..3 without a stop
        resumed = run(_config(), out / "pair")  # the pair's checkpoint 2, resumed here to step 3
        assert ref["finished"] and resumed["finished"] and ref["steps"] == resumed["steps"] == STEPS
        (out / "single.json").write_text(json.dumps({"rows": rows, "tokens": _decode(model_dir)}))
    print("OK", argv[0])


# ------------------------------------------------------------------------------------------ the runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # gRPC must not proxy 127.0.0.1
    return {
        **env,
        **compile_cache_env(),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }


def _run_workers(cmds: list[list[str]], env: dict[str, str], logs: list[Path], timeout: float) -> None:
    """Starts the commands together; all must exit 0 before `timeout`. On the first failure or at the
    deadline every child still running is killed (a lone process of the pair would wait for its peer)."""
    procs = []
    try:
        for cmd, log in zip(cmds, logs, strict=True):
            with log.open("w") as f:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    if codes != [0] * len(procs):
        tails = "\n".join(
            f"--- {log.name} (exit {c})\n{log.read_text()[-3000:]}" for log, c in zip(logs, codes)
        )
        pytest.fail(f"worker(s) failed or timed out after {timeout:.0f} s: {codes}\n{tails}")


@dataclass
class Runs:
    out: Path
    pair: list[dict]
    single: dict


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_hf_dir: Path) -> Runs:
    out = tmp_path_factory.mktemp("multihost")
    me = [sys.executable, "-m", "tests.test_multihost"]
    port = _free_port()
    pair = [[*me, "pair", str(i), str(port), str(out), str(tiny_hf_dir)] for i in (0, 1)]
    _run_workers(pair, _env(4), [out / "pair0.log", out / "pair1.log"], timeout=420)
    _run_workers([[*me, "single", str(out), str(tiny_hf_dir)]], _env(8), [out / "single.log"], timeout=420)
    return Runs(
        out,
        [json.loads((out / f"pair{i}.json").read_text()) for i in (0, 1)],
        json.loads((out / "single.json").read_text()),
    )


def _checkpoint(workdir: Path, step: int) -> tuple[dict, dict]:
    """(saved state as numpy arrays, data position) of one checkpoint, read here in one 1-device process."""
    import jax
    import orbax.checkpoint as ocp

    where = workdir / "checkpoints" / str(step)
    with ocp.PyTreeCheckpointer() as c:
        tree = c.metadata(where / "state").item_metadata.tree
        state = c.restore(
            where / "state",
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree),
        )
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as c:
        return state, c.restore(where / "data")


def _max_diff(a: dict, b: dict) -> float:
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and all(x.shape == y.shape for x, y in zip(la, lb))
    return max(float(np.max(np.abs(x - y))) for x, y in zip(la, lb))


def _losses(workdir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


# ------------------------------------------------------------------------------------------ the tests


def test_each_host_holds_its_own_rows(runs: Runs) -> None:
    # 2×2×2 mesh, devices in process order: data index 0 is process 0's 4 devices, so rows 0-1 are its own
    assert [p["rows"] for p in runs.pair] == [[0, 1], [2, 3]]
    assert runs.single["rows"] == [0, 1, 2, 3]


def test_pair_steps_equal_one_process(runs: Runs) -> None:
    for step in (1, 2):
        pair, pair_data = _checkpoint(runs.out / "pair", step)
        one, one_data = _checkpoint(runs.out / "single", step)
        assert int(pair["step"]) == int(one["step"]) == step
        assert pair_data == one_data  # the same position in the data: both sides consumed the same batches
        assert _max_diff(pair["params"], one["params"]) <= ATOL, step
        assert _max_diff(pair["opt_state"], one["opt_state"]) <= ATOL, step
    # a step moves the weights by far more than the tolerance
    p1, p2 = (
        _checkpoint(runs.out / "single", 1)[0]["params"],
        _checkpoint(runs.out / "single", 2)[0]["params"],
    )
    assert _max_diff(p1, p2) > 100 * ATOL
    pair_loss, one_loss = dict(_losses(runs.out / "pair")), dict(_losses(runs.out / "single"))
    for step in (1, 2):
        assert abs(pair_loss[step] - one_loss[step]) <= 1e-5 * one_loss[step], (pair_loss, one_loss)


def test_pair_checkpoint_resumes_in_one_process(runs: Runs) -> None:
    # checkpoint 3 of the pair's workdir was written by one process after resuming the pair's checkpoint 2;
    # it matches the one-process run that never stopped: weights, optimizer state, RNG and data position
    resumed, resumed_data = _checkpoint(runs.out / "pair", STEPS)
    ref, ref_data = _checkpoint(runs.out / "single", STEPS)
    assert int(resumed["step"]) == STEPS
    assert resumed_data == ref_data
    np.testing.assert_array_equal(resumed["rng"], ref["rng"])
    assert _max_diff(resumed["params"], ref["params"]) <= ATOL
    assert _max_diff(resumed["opt_state"], ref["opt_state"]) <= ATOL
    losses = _losses(runs.out / "pair")
    assert [s for s, _ in losses] == [1, 2, 3]
    assert abs(losses[-1][1] - dict(_losses(runs.out / "single"))[3]) <= 1e-5 * losses[-1][1]


def test_pair_decodes_the_same_tokens(runs: Runs) -> None:
    want = runs.single["tokens"]
    assert len(want) == len(PROMPTS) and all(len(t) == NEW_TOKENS for t in want)  # random model: no EOS
    assert runs.pair[0]["tokens"] == runs.pair[1]["tokens"] == want


def test_loader_yields_only_the_requested_rows() -> None:
    """A host's rows are those rows of the global batch, and asking for them moves the position the same."""
    from train.data import Loader, read_corpus

    class Enc:
        def __init__(self, messages):
            text = " ".join(m["content"] for m in messages)[:60]
            self.ids = [1] + [3 + ord(c) % 200 for c in text]
            self.loss_mask = [0] * (len(self.ids) // 2) + [1] * (len(self.ids) - len(self.ids) // 2)

    corpus = read_corpus([str(ROOT / "data/train/dolly_subset.jsonl")], "dolly")
    make = lambda: Loader(corpus, Enc, seq_len=64, rows=ROWS, grad_accum=2, seed=0)  # noqa: E731
    whole, part = make(), make()
    for _ in range(3):
        full, mine = whole.next_batch(), part.next_batch([2, 3])
        assert mine["inputs"].shape == (2, 2, 64)
        for k in full:
            np.testing.assert_array_equal(mine[k], full[k][:, 2:])
        assert part.state == whole.state


if __name__ == "__main__":
    _worker(sys.argv[1:])
