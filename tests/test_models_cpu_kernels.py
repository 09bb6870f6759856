"""The native CPU kernels (models/cpu_kernels.py, models/native/*.cc: decoding's and the no-cache causal
attention's) against float64 numpy sums, and the choice between them and XLA's in `infer.decode.Decoder`."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.decode import DecodeKernels, DecodeParams, Decoder, native_unusable, resolve_kernels
from infer.engine import Engine
from models.cpu_kernels import (
    PANEL,
    Packed,
    built,
    cache_attention,
    causal_attention_bwd,
    causal_attention_fwd,
    pack,
    pack_weight,
    packed_dense,
    packed_matmul,
)
from models.dense import to_out_first
from models.lora import PROJ_EQ
from tests.infer_helpers import eval_prompts

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the native kernels are CPU-only")


def test_library_is_built():
    assert built(), "models/native/libxlit_cpu.so missing: `make native` (part of `make setup`)"


@pytest.mark.skipif(bool(os.environ.get("XLIT_NATIVE_ISA")), reason="already running under a capped ISA")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_every_build_gives_the_same_sums(isa):
    """The kernels' narrower builds (models/native/parallel.h PickIsa; capped by XLIT_NATIVE_ISA) pass the
    float64 checks below too: this process runs the widest build the CPU has, a child runs the capped one."""
    env = {**os.environ, "XLIT_NATIVE_ISA": isa}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "equals_float64"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def test_an_unknown_isa_cap_is_an_error():
    code = "import models.cpu_kernels as c; c.require()"
    env = {**os.environ, "XLIT_NATIVE_ISA": "avx9"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "XLIT_NATIVE_ISA='avx9'" in run.stderr and "avx2, generic" in run.stderr


# rows: 1 (batch-1 decode), 3, 5, 7 and 13 (not a multiple of the AVX-512 build's 8-row block, the AVX2 build's
# 3 or the baseline's 6: every tail size 1-7 occurs in one build or another), 16, 300 (past one 256-row work
# unit: two units per panel, so a unit's prefetch may fall on its own panel or the next); columns: 32 (one
# panel, nothing to prefetch), 40 and 200 (zero-padded last panel), 1536
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(1, 576, 1536), (3, 17, 64), (5, 3, 40), (7, 33, 96), (13, 64, 200), (16, 576, 32), (300, 96, 96)],
)
def test_packed_matmul_equals_float64_sums(m, k, n):
    rng = np.random.default_rng(m * 1000 + n)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w_t = rng.standard_normal((n, k), dtype=np.float32)  # output axis first, as `to_out_first` holds it
    ref = x.astype(np.float64) @ w_t.astype(np.float64).T
    p = pack(jnp.asarray(w_t), 1)
    assert p.panels.shape == (-(-n // PANEL), k, PANEL) and p.out_shape == (n,)
    got = np.asarray(jax.jit(packed_matmul)(jnp.asarray(x), p.panels))
    assert got.shape == (m, p.panels.shape[0] * PANEL)
    # float32 sums of k products: error within a few ulps of the sum of |terms|
    bound = (
        4 * k * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ np.abs(w_t).T.astype(np.float64))
    )
    assert np.all(np.abs(got[:, :n] - ref) <= bound + 1e-30)
    assert np.all(got[:, n:] == 0), "padded columns must be zero"


@pytest.mark.parametrize("name", sorted(PROJ_EQ))
def test_packed_dense_is_the_projection_einsum(name):
    eq = PROJ_EQ[name]
    letters = {"b": 2, "t": 3, "d": 64, "n": 4, "k": 2, "h": 16, "f": 96}
    xs, ws = eq.split("->")[0].split(",")
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal([letters[c] for c in xs], dtype=np.float32)
    w = rng.standard_normal([letters[c] for c in ws], dtype=np.float32)  # as the model stores it
    ref = np.einsum(eq, x.astype(np.float64), w.astype(np.float64))
    got = np.asarray(packed_dense(eq, jnp.asarray(x), pack_weight(eq, jnp.asarray(w))))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    via_out_first = pack(to_out_first(eq, jnp.asarray(w)), sum(c not in xs for c in ws))
    assert isinstance(via_out_first, Packed)
    np.testing.assert_array_equal(np.asarray(packed_dense(eq, jnp.asarray(x), via_out_first)), got)


def _attention_reference(q, kc, vc, layer, start, mask, scale):
    """models.modules._decode_attention's sums in float64: masked logits, softmax over the window, x values."""
    w = mask.shape[1]
    k = kc[layer][:, :, start : start + w].astype(np.float64)
    v = vc[layer][:, :, start : start + w].astype(np.float64)
    logits = np.einsum("bkgh,bksh->bkgs", q.astype(np.float64), k) * scale
    logits = np.where(mask[:, None, None, :], logits, -1e30)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bkgs,bksh->bkgh", p / p.sum(-1, keepdims=True), v)


# (L, B, K, G, S, H, W, start, layer): the whole cache; a window from slot 17; one row, one head; a window of
# 37 (slots past the last full block of 4, 8 or 16 at every vector width) with H = 48 (value vectors past the
# last group of 4 in the AVX2 and AVX-512 builds)
@pytest.mark.parametrize(
    "dims",
    [
        (3, 4, 3, 3, 40, 64, 40, 0, 1),
        (2, 5, 2, 2, 50, 16, 20, 17, 0),
        (1, 1, 1, 1, 8, 32, 8, 0, 0),
        (2, 3, 1, 4, 64, 48, 37, 5, 1),
    ],
)
def test_cache_attention_equals_float64_softmax(dims):
    n_layers, b, k, g, s, h, w, start, layer = dims
    rng = np.random.default_rng(sum(dims))
    q = rng.standard_normal((b, k, g, h), dtype=np.float32)
    kc = rng.standard_normal((n_layers, b, k, s, h), dtype=np.float32)
    vc = rng.standard_normal((n_layers, b, k, s, h), dtype=np.float32)
    mask = rng.random((b, w)) < 0.7
    mask[0] = False  # nothing visible: the uniform mean of the window's values, as the einsum path gives
    fn = jax.jit(cache_attention, static_argnums=(3, 6))
    got = np.asarray(fn(q, kc, vc, layer, jnp.int32(start), mask, h**-0.5))
    np.testing.assert_allclose(got, _attention_reference(q, kc, vc, layer, start, mask, h**-0.5), atol=2e-6)
    np.testing.assert_allclose(
        got[0], vc[layer][0, :, start : start + w].mean(1)[:, None, :].repeat(g, 1), atol=2e-6
    )


def _causal_reference(q, k, v, mask, d_out, scale):
    """Float64 attention of q [B,T,K,G,H] over k, v [B,T,K,H] under mask [B,T,T], and its gradients written
    with the softmax Jacobian (dS = P ⊙ (dP − rowsum(dP ⊙ P))), not the kernels' rowsum(dO ⊙ O) form."""
    q, k, v, d_out = (x.astype(np.float64) for x in (q, k, v, d_out))
    logits = np.einsum("btkgh,bskh->bkgts", q, k) * scale
    m = mask[:, None, None]
    seen = m.any(-1, keepdims=True)
    logits = np.where(m, logits, -np.inf)
    p = np.exp(logits - np.where(seen, logits.max(-1, keepdims=True), 0.0))
    p = np.where(seen, p / np.where(seen, p.sum(-1, keepdims=True), 1.0), 0.0)
    out = np.einsum("bkgts,bskh->btkgh", p, v)
    dp = np.einsum("btkgh,bskh->bkgts", d_out, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
    dq = np.einsum("bkgts,bskh->btkgh", ds, k)
    dk = np.einsum("bkgts,btkgh->bskh", ds, q)
    dv = np.einsum("bkgts,btkgh->bskh", p, d_out)
    return out, dq, dk, dv


# (B, T, K, G, H): two packed examples and padding; T past the last 4-row group and the 32-key padding;
# one block exactly; G = 1 with H = 64 (the first of 4 ragged blocks), H = 48 (a vector past the last pair
# of the AVX2 and baseline builds); a single token
@pytest.mark.parametrize(
    "dims", [(2, 37, 2, 3, 16), (1, 32, 1, 2, 32), (1, 100, 3, 1, 64), (2, 70, 1, 2, 48), (1, 1, 1, 1, 16)]
)
def test_causal_attention_equals_float64_sums(dims):
    b, t, kh, g, h = dims
    rng = np.random.default_rng(sum(dims))
    q = rng.standard_normal((b, t, kh, g, h), dtype=np.float32)
    k = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    v = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    seg = np.ones((b, t), np.int32)
    seg[0, t // 3 :] = 2  # row 0: two packed examples
    seg[-1, t - t // 4 :] = 0  # last row ends in padding (none when t < 4)
    pos = np.arange(t)
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0) & (pos[None, :] <= pos[:, None])
    d_out = rng.standard_normal(q.shape, dtype=np.float32) * (seg != 0)[:, :, None, None, None]
    scale = h**-0.5
    out, lse = jax.jit(causal_attention_fwd, static_argnums=4)(q, k, v, mask, scale)
    grads = jax.jit(causal_attention_bwd, static_argnums=7)(q, k, v, mask, out, lse, d_out, scale)
    want = _causal_reference(q, k, v, mask, d_out, scale)
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out, *grads), want, strict=True):
        got = np.asarray(got)
        assert got.shape == ref.shape, name
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()), err_msg=name)
    padding = seg == 0  # queries that see no key: output 0, log-sum-exp -1e30
    assert np.all(np.asarray(out)[padding] == 0)
    assert np.all(np.asarray(lse).transpose(0, 2, 1)[padding] == -1e30)


@pytest.fixture(scope="module")
def engines(tiny_hf_dir) -> dict[DecodeKernels, Engine]:
    return {
        m: Engine.from_path(tiny_hf_dir, max_batch=8, kernels=m)
        for m in (DecodeKernels.NATIVE, DecodeKernels.XLA)
    }


def test_auto_takes_the_native_kernels_and_xla_stays_selectable(tiny_hf_dir, engines):
    assert Engine.from_path(tiny_hf_dir, max_batch=2).decoder.kernels is DecodeKernels.NATIVE
    assert engines[DecodeKernels.XLA].decoder.kernels is DecodeKernels.XLA
    packed = engines[DecodeKernels.NATIVE].decoder.params
    assert isinstance(packed["layers"][0]["gate"], Packed) and isinstance(packed["lm_head"], Packed)
    assert not isinstance(engines[DecodeKernels.XLA].decoder.params["layers"][0]["gate"], Packed)


def test_native_and_xla_decode_the_same_tokens(engines):
    prompts = eval_prompts({"en": [0, 4], "fr": [1], "ru": [3, 15]})
    params = DecodeParams(max_new_tokens=12, repetition_penalty=1.1)
    a, b = (engines[m].generate(prompts, params) for m in (DecodeKernels.NATIVE, DecodeKernels.XLA))
    assert [r.ids for r in a] == [r.ids for r in b]
    ids = [engines[DecodeKernels.XLA].encode(p) for p in prompts[:2]]
    states = []
    for m in (DecodeKernels.NATIVE, DecodeKernels.XLA):
        dec: Decoder = engines[m].decoder
        tok = np.zeros((2, 64), np.int32)
        mask = np.zeros((2, 64), np.int32)
        for i, row in enumerate(ids):
            tok[i, -len(row) :], mask[i, -len(row) :] = row[-64:], 1
        states.append(np.asarray(dec.prefill(tok, mask, 80, 16).logits))
    np.testing.assert_allclose(states[0], states[1], rtol=1e-4, atol=1e-4)


def test_native_refuses_what_it_cannot_decode(tiny_hf_dir, monkeypatch):
    from models.checkpoint import load_model

    bf16 = load_model(tiny_hf_dir, dtype="bfloat16", param_dtype="bfloat16")
    assert "float32" in native_unusable(bf16, None, None)
    with pytest.raises(ValueError, match="kernels=native: .*float32"):
        resolve_kernels(DecodeKernels.NATIVE, bf16, None, None)
    assert resolve_kernels(DecodeKernels.AUTO, bf16, None, None) is DecodeKernels.XLA

    f32 = load_model(tiny_hf_dir)
    assert native_unusable(f32, None, None) is None
    assert "float32" in native_unusable(f32, None, jnp.bfloat16)  # decoding cast to bf16
    monkeypatch.setattr("infer.decode.native_built", lambda: False)
    assert "make native" in native_unusable(f32, None, None)
    assert resolve_kernels(DecodeKernels.AUTO, f32, None, None) is DecodeKernels.XLA
