"""Shared helpers for the tests/test_infer_*.py files: evaluation prompts and HF reference generation."""

from __future__ import annotations

import json
from pathlib import Path

import torch

EVAL = Path(__file__).resolve().parents[1] / "data" / "eval"


def eval_prompts(per_lang: dict[str, list[int]]) -> list[list[dict[str, str]]]:
    """Chat message lists from data/eval/alpacaeval_test_subset.<lang>.jsonl at the given 0-based lines."""
    out = []
    for lang, lines in per_lang.items():
        rows = (EVAL / f"alpacaeval_test_subset.{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        out += [json.loads(rows[i]) for i in lines]
    return out


def hf_greedy(model, prompts: list[list[int]], max_new: int, penalty: float, eos=None, pad_id: int = 0):
    """transformers generate(do_sample=False, repetition_penalty=...) on a left-padded batch.

    Padding uses `pad_id` (not EOS): HF's repetition penalty also penalises the pad ids in input_ids,
    so padding with EOS would change the EOS logit of padded rows only.
    """
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kw = {} if eos is None else {"eos_token_id": eos}
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            repetition_penalty=penalty,
            max_new_tokens=max_new,
            pad_token_id=pad_id,
            top_k=None,
            top_p=None,
            temperature=None,
            **kw,
        )
    res = []
    stop = set(
        eos if isinstance(eos, list) else [eos] if eos is not None else [model.generation_config.eos_token_id]
    )
    for row in out[:, width:].tolist():
        for k, t in enumerate(row):
            if t in stop:
                row = row[: k + 1]
                break
        res.append(row)
    return res
