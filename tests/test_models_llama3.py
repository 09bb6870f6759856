"""LLaMA-3.x support: `llama3` RoPE scaling, config import/export, tied/untied heads, the Llama-3 chat
format and its end-of-turn token, all against transformers on tiny random models (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from infer.decode import DecodeParams
from infer.engine import Engine, eos_ids_of
from models.checkpoint import export_hf, load_model
from models.config import (
    LlamaConfig,
    RopeScaling,
    UnsupportedModelError,
    from_hf_config,
    preset,
    to_hf_config,
)
from models.modules import rope_inv_freq
from models.tokenizer import ChatTokenizer
from tests.infer_helpers import hf_greedy
from tests.model_helpers import hf_logits, padded_batch, run

# Head dim 32 with LLaMA-3's theta gives rotary wavelengths 6.3, 14.3, 32.4, 73.5, 167, 379, ... positions.
# With an original context of 128 and low/high factors 1/8, wavelengths under 16 are kept (2), those over 128
# divided by the factor (12) and the two in between smoothed: all three regions of the llama3 rule.
ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 8.0,
    "original_max_position_embeddings": 128,
}
VOCAB = 320
SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
]
# The Llama-3 chat format (header / content / <|eot_id|> per message, BOS first), written for these tests.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim }}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHAT = [
    [{"role": "user", "content": "Explain the rules of volleyball in two sentences."}],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Name a colour."},
    ],
    [{"role": "user", "content": "Hi"}],
]


def tiny_llama3_config(**overrides) -> dict:
    hf = dict(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        rope_scaling=dict(ROPE_SCALING),
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=[1, 4, 5],
        pad_token_id=None,
    )
    return {**hf, **overrides}


def _tiny_tokenizer(dst: Path) -> None:
    """A byte-level BPE tokenizer with Llama-3's special tokens and chat format, trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [m["content"] for chat in CHAT for m in chat] + ["assistant user system answer the of in"] * 3
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        additional_special_tokens=SPECIALS[2:5],
    )
    fast.chat_template = LLAMA3_TEMPLATE
    fast.save_pretrained(dst)


def make_llama3_hf(dst: Path, *, seed: int = 0, release_style: bool = True, **overrides) -> Path:
    """A random tiny LlamaForCausalLM with llama3 RoPE scaling, saved with a tiny Llama-3 tokenizer.

    transformers >= 5 writes the scaling as `rope_parameters`; `release_style` rewrites config.json the way
    the released Llama-3.1 checkpoints spell it (`rope_scaling` plus a top-level `rope_theta`).
    """
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(HFLlamaConfig(**tiny_llama3_config(**overrides))).eval()
    model.save_pretrained(dst)
    cfg_path = dst / "config.json"
    hf = json.loads(cfg_path.read_text())
    if release_style:
        params = hf.pop("rope_parameters")
        hf["rope_theta"] = params.pop("rope_theta")
        hf["rope_scaling"] = params
        cfg_path.write_text(json.dumps(hf, indent=2))
    # as Llama-3.1-Instruct's generation_config.json: <|end_of_text|>, <|eom_id|>, <|eot_id|>
    (dst / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 4, 5]}))
    _tiny_tokenizer(dst)
    return dst


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory) -> Path:
    return make_llama3_hf(tmp_path_factory.mktemp("llama3") / "m")


def _hf_inv_freq(hf_cfg: dict) -> np.ndarray:
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, scale = ROPE_INIT_FUNCTIONS["llama3"](HFLlamaConfig(**hf_cfg), "cpu")
    assert scale == 1.0
    return inv.numpy()


@pytest.mark.parametrize("which", ["tiny", "llama3_1_8b", "llama3_2_1b"])
def test_llama3_inverse_frequencies_equal_transformers(which):
    if which == "tiny":
        hf = tiny_llama3_config()
        cfg = from_hf_config(hf | {"model_type": "llama"})
    else:
        cfg = preset(which)
        hf = to_hf_config(cfg)
    ref = _hf_inv_freq(hf)
    got = np.asarray(rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
    np.testing.assert_allclose(got, ref, rtol=3e-7, atol=0)  # within 2 float32 ulps
    plain = np.asarray(rope_inv_freq(cfg.head_dim, cfg.rope_theta))
    ratio = ref / plain
    kept, divided = np.isclose(ratio, 1.0), np.isclose(ratio, 1 / cfg.rope_scaling.factor)
    smoothed = ~kept & ~divided
    assert kept.any() and divided.any() and smoothed.any(), ratio
    if which == "tiny":
        assert (kept.sum(), smoothed.sum(), divided.sum()) == (2, 2, 12)


@pytest.mark.parametrize("tied,release_style", [(False, True), (True, False)], ids=["untied", "tied"])
def test_llama3_tiny_random_parity_padded(tmp_path, tied, release_style):
    """Logits of a tiny random LLaMA-3 (GQA, llama3 RoPE scaling) equal transformers' to 1e-5 on a
    left-padded batch whose rows start at positions 0, 150 and 400 (so every frequency region matters)."""
    d = make_llama3_hf(tmp_path / "m", seed=7 + tied, release_style=release_style, tie_word_embeddings=tied)
    hf_json = json.loads((d / "config.json").read_text())
    assert ("rope_scaling" in hf_json) == release_style
    hm = AutoModelForCausalLM.from_pretrained(d).eval()
    assert hm.config.rope_parameters["rope_type"] == "llama3"
    ours = load_model(d)
    assert ours.cfg.rope_scaling == RopeScaling(8.0, 1.0, 8.0, 128)
    assert ours.cfg.rope_theta == 500000.0 and ours.cfg.tie_embeddings == tied and ours.cfg.num_kv_heads == 2
    assert (ours.lm_head is None) == tied
    toks, mask, pos = padded_batch([24, 17, 6], 24, VOCAB, seed=3)
    pos = np.where(mask == 1, pos + np.array([[0], [150], [400]]), 0)
    ref = hf_logits(hm, toks, mask, pos)
    got = np.asarray(run(ours, toks, pos, mask)[0])
    real = mask.astype(bool)
    diff = float(np.abs(got[real] - ref[real]).max())
    print(f"llama3 parity ({'tied' if tied else 'untied'}): max |logit diff| = {diff:.3g}")
    assert diff <= 1e-5
    # the scaling is measured: the same weights with plain RoPE are far off
    plain = load_model(d)
    plain.cfg = plain.cfg.replace(rope_scaling=None)
    off = float(np.abs(np.asarray(run(plain, toks, pos, mask)[0])[real] - ref[real]).max())
    assert off > 100 * max(diff, 1e-6)


def test_llama3_kv_cache_greedy_decoding_equals_hf_generate(llama3_dir):
    """The serving path (Engine: chat template, prefill + KV-cache steps) gives transformers' greedy tokens,
    stopping on any of generation_config.json's EOS ids."""
    engine = Engine.from_path(llama3_dir)
    assert engine.cfg.rope_scaling is not None and engine.eos_ids == [1, 4, 5]
    prompts = [engine.encode(c) for c in CHAT]
    new = 10
    results = engine.generate_ids(prompts, DecodeParams(max_new_tokens=new))
    hm = AutoModelForCausalLM.from_pretrained(llama3_dir).eval()
    ref = hf_greedy(hm, prompts, new, 1.0, eos=[1, 4, 5], pad_id=2)  # rows cut after their first EOS
    for res, want in zip(results, ref, strict=True):
        assert res.ids == want
        assert res.finish_reason == ("stop" if want and want[-1] in (1, 4, 5) else "length")


def test_llama3_chat_template_and_eot(llama3_dir):
    """BOS first, headers and <|eot_id|> as single special tokens; the loss mask covers the answer and the
    <|eot_id|> closing it; generation stops on <|eot_id|> (an EOS id from generation_config.json)."""
    tok = ChatTokenizer(llama3_dir)
    t = tok.tok
    bos, eot, start, end = (t.convert_tokens_to_ids(s) for s in SPECIALS[0:1] + SPECIALS[5:6] + SPECIALS[2:4])
    prompt = tok.encode_prompt(CHAT[0])
    assert prompt[0] == bos and prompt.count(bos) == 1
    rendered = tok.render(CHAT[0], add_generation_prompt=True)
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Explain the rules of volleyball in two sentences.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert t.decode(prompt) == rendered
    assert prompt.count(start) == 2 and prompt.count(end) == 2 and prompt.count(eot) == 1
    chat = [*CHAT[1], {"role": "assistant", "content": "Rouge."}]
    enc = tok.encode_chat(chat)
    trained = [i for i, m in zip(enc.ids, enc.loss_mask, strict=True) if m]
    assert t.decode(trained) == "Rouge.<|eot_id|>" and trained[-1] == eot
    assert enc.ids[: enc.prompt_len] == tok.encode_prompt(CHAT[1])
    # EOS ids: the tokenizer's <|eot_id|> plus generation_config.json's list
    assert tok.eos_token_id == eot and eos_ids_of(llama3_dir, tok) == sorted({1, 4, eot})

    # a model that always predicts <|eot_id|>: layers add nothing, every embedding is e_0, and the head's
    # column 0 favours <|eot_id|>
    model = load_model(llama3_dir)
    model.layers["o"].set_value(jnp.zeros_like(model.layers["o"][...]))
    model.layers["down"].set_value(jnp.zeros_like(model.layers["down"][...]))
    model.embed.set_value(jnp.zeros_like(model.embed[...]).at[:, 0].set(1.0))
    model.lm_head.set_value(model.lm_head[...].at[0, :].set(0.0).at[0, eot].set(1.0))
    engine = Engine(model, tok, eos_ids_of(llama3_dir, tok), "llama3-tiny")
    (res,) = engine.generate([CHAT[0]], DecodeParams(max_new_tokens=5))
    assert (res.ids, res.finish_reason, res.text) == ([eot], "stop", "")
    (res,) = engine.derive(eos_ids=[1]).generate([CHAT[0]], DecodeParams(max_new_tokens=5))
    assert (res.ids, res.finish_reason) == ([eot] * 5, "length")


def test_llama3_config_round_trip_through_export(llama3_dir, tmp_path):
    """Export writes rope_scaling back (both spellings); the exported directory loads into transformers and
    into our importer as the same model."""
    ours = load_model(llama3_dir)
    dst = export_hf(ours, tmp_path / "export", tokenizer_dir=llama3_dir)
    hf = json.loads((dst / "config.json").read_text())
    assert hf["rope_scaling"] == ROPE_SCALING and hf["rope_theta"] == 500000.0
    assert hf["rope_parameters"] == {**ROPE_SCALING, "rope_theta": 500000.0}
    assert hf["eos_token_id"] == [1, 4, 5] and hf["tie_word_embeddings"] is False
    assert from_hf_config(dst) == ours.cfg
    hm = AutoModelForCausalLM.from_pretrained(dst).eval()
    assert hm.config.rope_parameters == {**ROPE_SCALING, "rope_theta": 500000.0}
    toks, mask, pos = padded_batch([12, 5], 12, VOCAB, seed=4)
    pos = np.where(mask == 1, pos + np.array([[0], [300]]), 0)
    got = np.asarray(run(load_model(dst), toks, pos, mask)[0])
    ref = hf_logits(hm, toks, mask, pos)
    real = mask.astype(bool)
    assert float(np.abs(got[real] - ref[real]).max()) <= 1e-5
    # a model without scaling exports none, and transformers reads plain RoPE
    plain = to_hf_config(preset("tiny"))
    assert plain["rope_scaling"] is None and plain["rope_parameters"]["rope_type"] == "default"


def test_released_llama3_configs_import_as_presets():
    """config.json of Llama-3.1-8B-Instruct and Llama-3.2-1B-Instruct (fields as released) → the presets."""
    common = dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", attention_bias=False,
        mlp_bias=False, attention_dropout=0.0, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
        max_position_embeddings=131072, rms_norm_eps=1e-05, rope_theta=500000.0, vocab_size=128256,
        num_key_value_heads=8, torch_dtype="bfloat16", use_cache=True,
    )  # fmt: skip
    scaling = dict(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )
    llama31_8b = dict(
        common, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_hidden_layers=32,
        rope_scaling={**scaling, "rope_type": "llama3"}, tie_word_embeddings=False,
    )  # fmt: skip
    llama32_1b = dict(
        common, hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_hidden_layers=16,
        head_dim=64, rope_scaling={**scaling, "factor": 32.0, "rope_type": "llama3"}, tie_word_embeddings=True,
    )  # fmt: skip
    assert from_hf_config(llama31_8b) == preset("llama3_1_8b")
    assert from_hf_config(llama32_1b) == preset("llama3_2_1b")
    cfg = preset("llama3_1_8b")
    assert 8.0e9 < cfg.num_params() < 8.1e9 and 70.0e9 < preset("llama3_1_70b").num_params() < 71.0e9
    assert isinstance(cfg, LlamaConfig) and hash(cfg) == hash(from_hf_config(llama31_8b))


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        (
            {"rope_scaling": None, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
            "rope_parameters",
        ),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.low_freq_factor"),
        ({"rope_scaling": {**ROPE_SCALING, "high_freq_factor": 1.0}}, "rope_scaling"),
    ],
)
def test_llama3_rope_fields_are_checked(patch, field):
    hf = {**tiny_llama3_config(), "model_type": "llama", **patch}
    with pytest.raises(UnsupportedModelError, match=rf"field '{field}'"):
        from_hf_config(hf)


def test_llama3_gguf_rope_freqs_is_refused(tmp_path):
    """llama.cpp stores LLaMA-3.1 RoPE scaling as a `rope_freqs.weight` tensor: refused by name, not ignored."""
    import gguf

    from models.checkpoint import open_source

    path = tmp_path / "llama31.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_block_count(1)
    w.add_context_length(1024)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(500000.0)
    w.add_vocab_size(VOCAB)
    w.add_tensor("rope_freqs.weight", np.ones(8, np.float32))
    w.add_tensor("token_embd.weight", np.zeros((VOCAB, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match=r"llama31\.gguf: tensor 'rope_freqs\.weight'"):
        open_source(path)
