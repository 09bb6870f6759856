"""Decoding on a 2×2×2 (data, fsdp, tensor) mesh of 8 fake CPU devices gives the single-device tokens.

Runs in a subprocess: the device count is fixed when XLA starts (the main pytest process has one device).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys
import jax
assert jax.device_count() == 8, jax.devices()
from infer.decode import DecodeParams, left_pad
from infer.engine import Engine
from models.sharding import make_mesh

path = sys.argv[1]
prompts = [
    [{"role": "user", "content": "How do I wrap a present neatly?"}],
    [{"role": "user", "content": "Comment emballer un cadeau proprement ? Donne trois étapes courtes."}],
    [{"role": "user", "content": "Como embrulhar um presente?"}],
    [{"role": "user", "content": "Как аккуратно упаковать подарок? Объясни подробно, шаг за шагом."}],
    "Once upon a time",
]
params = DecodeParams(max_new_tokens=12, repetition_penalty=1.2)
one = Engine.from_path(path, max_batch=8)
ref = one.generate(prompts, params)
sharded = Engine.from_path(path, max_batch=8, mesh=make_mesh(2, 2, 2))
q = sharded.decoder.params["layers"][0]["q"]  # held [N, H, D] (out first): heads on tensor, embed on fsdp
assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape == (2, 16, 32), q.sharding
got = sharded.generate(prompts, params)
assert [r.ids for r in got] == [r.ids for r in ref], ([r.ids for r in got], [r.ids for r in ref])
assert all(r.response_tokens == 12 or r.finish_reason == "stop" for r in got)
tokens, mask = left_pad([one.encode(p) for p in prompts[:4]], 128, 8, one.tokenizer.pad_token_id)
state = sharded.decoder.prefill(tokens, mask, 144, 16)
k = state.cache["k"]  # [L, B, K, S, H]: batch over data x fsdp, kv heads over tensor
assert k.addressable_shards[0].data.shape == (2, 2, 1, 144, 16), k.addressable_shards[0].data.shape
print("OK", [len(r.ids) for r in got])
"""


def test_sharded_decode_equals_single_device(tiny_hf_dir: Path) -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_hf_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
