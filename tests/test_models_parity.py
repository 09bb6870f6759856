"""Numerical parity of models.Llama with transformers' LlamaForCausalLM (PyTorch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM, AutoTokenizer

from models import cpu_kernels
from models.checkpoint import load_model
from models.config import preset
from models.modules import Llama, init_cache
from models.sharding import make_mesh
from tests.model_helpers import hf_logits, make_tiny_hf, padded_batch, run

PROMPTS = {
    "en": "Explain the rules of volleyball in two sentences.",
    "fr": "Explique les règles du volley-ball en deux phrases.",
    "pt": "Explique as regras do voleibol em duas frases.",
    "ru": "Объясни правила волейбола в двух предложениях.",
}


@pytest.mark.parametrize(
    "heads,kv_heads,tied",
    [(4, 4, False), (4, 2, False), (4, 1, True), (6, 2, True)],
    ids=["mha-untied", "gqa-untied", "mqa-tied", "gqa-tied"],
)
def test_tiny_random_parity_padded(tmp_path, heads, kv_heads, tied):
    d = make_tiny_hf(
        tmp_path / "m",
        seed=heads * 10 + kv_heads,
        vocab_size=320,
        hidden_size=96 if heads == 6 else 64,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5,
    )
    hm = AutoModelForCausalLM.from_pretrained(d).eval()
    ours = load_model(d)
    assert ours.cfg.tie_embeddings == tied and ours.cfg.num_kv_heads == kv_heads
    toks, mask, pos = padded_batch([9, 5, 1], 9, 320)
    ref = hf_logits(hm, toks, mask, pos)
    got = np.asarray(run(ours, toks, pos, mask)[0])
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], rtol=1e-4, atol=1e-5)


def test_kv_cache_prefill_then_steps_equals_full_forward():
    cfg = preset("tiny")
    model = Llama(cfg, rngs=nnx.Rngs(3))
    toks, mask, pos = padded_batch([12, 7], 12, cfg.vocab_size, seed=1)
    full = np.asarray(run(model, toks, pos, mask)[0])
    cache = init_cache(cfg, 2, 16)
    split = 6
    logits, cache = model(
        jnp.asarray(toks[:, :split]), jnp.asarray(pos[:, :split]), jnp.asarray(mask[:, :split]), cache
    )
    steps = [np.asarray(logits)]
    for t in range(split, 12):
        sl = slice(t, t + 1)
        logits, cache = model(
            jnp.asarray(toks[:, sl]), jnp.asarray(pos[:, sl]), jnp.asarray(mask[:, sl]), cache
        )
        steps.append(np.asarray(logits))
    incremental = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(incremental[real], full[real], rtol=1e-5, atol=1e-6)
    assert int(cache["index"]) == 12


def test_packed_segments_do_not_attend_across_examples():
    cfg = preset("tiny")
    model = Llama(cfg, rngs=nnx.Rngs(0))
    a, b = np.arange(3, 8), np.arange(20, 26)
    packed = np.concatenate([a, b])[None]
    seg = np.array([[1] * 5 + [2] * 6])
    pos = np.array([list(range(5)) + list(range(6))])
    got = np.asarray(run(model, packed, pos, seg)[0])
    alone_b = np.asarray(run(model, b[None], np.arange(6)[None], np.ones((1, 6), np.int32))[0])
    np.testing.assert_allclose(got[0, 5:], alone_b[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "native"])
def test_fused_attention_path_equals_einsum_path_with_padding_and_packing(impl):
    """attention="xla" (jax.nn.dot_product_attention, the code path "cudnn" takes on GPUs) and "native"
    (models/native/train_attention.cc, CPU) give our einsum attention's logits and gradients on real tokens,
    on a left-padded row and a row of two packed examples, and no NaN anywhere (padding queries are never left
    with every key masked for "xla"; "native" gives them 0)."""
    if impl == "native" and preset("tiny").native_attention_unusable() is not None:
        pytest.skip(preset("tiny").native_attention_unusable())
    cfg = preset("tiny")
    ein = Llama(cfg, rngs=nnx.Rngs(5))
    fused = Llama(cfg.replace(attention=impl), rngs=nnx.Rngs(5))
    toks, _, _ = padded_batch([10, 10], 10, cfg.vocab_size, seed=2)
    seg = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]])
    pos = np.array([[0, 0, 0, 0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    real = seg != 0

    def loss_and_grad(model):
        graphdef, state = nnx.split(model)

        def loss(state):
            logits, _ = nnx.merge(graphdef, state)(jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(seg))
            return jnp.sum(jnp.where(jnp.asarray(real)[..., None], logits, 0.0) ** 2), logits

        (val, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
        return np.asarray(logits), float(val), grads

    l_ein, v_ein, g_ein = loss_and_grad(ein)
    l_fused, v_fused, g_fused = loss_and_grad(fused)
    assert np.isfinite(l_fused).all()
    np.testing.assert_allclose(l_fused[real], l_ein[real], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v_fused, v_ein, rtol=1e-5)
    for (path, a), (_, b) in zip(nnx.to_flat_state(g_ein), nnx.to_flat_state(g_fused), strict=True):
        np.testing.assert_allclose(
            np.asarray(b.get_value()), np.asarray(a.get_value()), rtol=1e-4, atol=1e-5, err_msg=str(path)
        )


def test_attention_implementation_is_checked():
    with pytest.raises(ValueError, match="attention='flash'"):
        preset("tiny").replace(attention="flash")


def test_smollm2_real_weights_parity(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.padding_side = "left"
    hm = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    ours = load_model(smollm2_dir)
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS.values()
    ]
    enc = tok(texts, return_tensors="np", padding=True, add_special_tokens=False)
    toks, mask = enc["input_ids"], enc["attention_mask"]
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    ref = hf_logits(hm, toks, mask, pos)
    got = np.asarray(run(ours, toks, pos, mask)[0])
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], rtol=1e-3, atol=1e-3)
    assert (got.argmax(-1)[real] == ref.argmax(-1)[real]).all()


def test_converted_smollm2_greedy_continuation_matches_transformers(smollm2_dir):
    """The directory `make setup` made with models.convert from the GGUF: same greedy tokens in both stacks."""
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.padding_side = "left"
    hm = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    ours = load_model(smollm2_dir)
    graphdef, state = nnx.split(ours)

    @jax.jit
    def step(state, toks, pos, seg, cache):
        return nnx.merge(graphdef, state)(toks, pos, seg, cache)

    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in list(PROMPTS.values())[:3]
    ]
    enc = tok(texts, return_tensors="np", padding=True, add_special_tokens=False)
    toks, mask = enc["input_ids"], enc["attention_mask"]
    new = 12
    with torch.no_grad():
        ref = hm.generate(
            torch.tensor(toks), attention_mask=torch.tensor(mask), max_new_tokens=new, do_sample=False
        )[:, toks.shape[1] :].numpy()
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    cache = init_cache(ours.cfg, 3, toks.shape[1] + new)
    logits, cache = step(state, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(mask), cache)
    last_pos, got = pos[:, -1], []
    for _ in range(new):
        nxt = np.asarray(jnp.argmax(logits[:, -1], axis=-1))
        got.append(nxt)
        last_pos = last_pos + 1
        logits, cache = step(
            state,
            jnp.asarray(nxt[:, None]),
            jnp.asarray(last_pos[:, None]),
            jnp.ones((3, 1), jnp.int32),
            cache,
        )
    got = np.stack(got, axis=1)
    for row in range(3):  # HF pads finished rows with pad (= EOS) tokens; compare up to the first EOS
        n = next((i + 1 for i, t in enumerate(ref[row]) if t == tok.eos_token_id), new)
        assert got[row, :n].tolist() == ref[row, :n].tolist(), (tok.decode(got[row]), tok.decode(ref[row]))


def test_auto_attention_picks_cudnn_only_for_half_precision_on_gpus():
    cfg = preset("tiny").replace(attention="auto", dtype="bfloat16")
    assert cfg.attention_impl("gpu") == "cudnn"
    assert cfg.attention_impl("cpu") == "einsum"
    assert cfg.replace(dtype="float32").attention_impl("gpu") == "einsum"
    assert cfg.replace(head_dim=12).attention_impl("gpu") == "einsum"
    assert preset("tiny").replace(attention="xla").attention_impl("gpu") == "xla"


@pytest.mark.skipif(not cpu_kernels.built(), reason="models/native/libxlit_cpu.so is not built")
def test_auto_attention_takes_the_native_kernel_where_it_runs():
    """auto on CPU: "native" for float32 on one device with head_dim % 16 == 0, else "einsum"; asking for
    "native" where it cannot run is an error naming why."""
    cfg = preset("tiny").replace(attention="auto")  # float32, head_dim 16
    assert cfg.attention_impl("cpu") == "native"
    assert cfg.replace(dtype="bfloat16").attention_impl("cpu") == "einsum"
    assert cfg.replace(head_dim=24, hidden_size=96).attention_impl("cpu") == "einsum"
    mesh = make_mesh(1, -1, 1, devices=jax.devices()[:2]) if len(jax.devices()) > 1 else None
    if mesh is not None:
        with jax.set_mesh(mesh):
            assert cfg.attention_impl("cpu") == "einsum"
    bf16 = Llama(cfg.replace(attention="native", dtype="bfloat16"), rngs=nnx.Rngs(0))
    toks = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="attention=native: the compute dtype is bfloat16"):
        bf16(toks, jnp.arange(4)[None], jnp.ones((1, 4), jnp.int32))
