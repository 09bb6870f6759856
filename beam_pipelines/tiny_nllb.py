"""A tiny random M2M100 with a tiny NLLB tokenizer, built offline — the translation model of tests and benches.

    python -m beam_pipelines.tiny_nllb --out=DIR [--codes=eng_Latn,deu_Latn]

No NLLB tokenizer can be downloaded here, so the tokenizer is transformers' NllbTokenizer over a character
vocabulary (BPE without merges) plus the four language-code special tokens; the M2M100 model is random
(1+1 layers, width 16), so its translations are gibberish. It exercises the translation pipeline's real code
path (tokenizer, sentence splitting under the token limit, batching, language codes) at CPU speed; use
facebook/nllb-200-3.3B (the paper's) or nllb-200-distilled-600M for real translations.
"""

from __future__ import annotations

import argparse
import string
from collections.abc import Sequence
from pathlib import Path

CODES = ["eng_Latn", "fra_Latn", "por_Latn", "rus_Cyrl"]


def make_tiny_nllb(dst: Path, codes: Sequence[str] = CODES) -> Path:
    """Writes the tiny model and its tokenizer to `dst`, with the language-code tokens `codes`."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    chars = (
        "▁"
        + string.ascii_letters
        + string.digits
        + string.punctuation
        + "абвгдеёжзийклмнопрстуфхцчшщъыьэюяéèàçãõ"
    )
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = NllbTokenizer(vocab=vocab, merges=[], additional_special_tokens=list(codes), src_lang=codes[0])
    tok.save_pretrained(dst)
    torch.manual_seed(0)
    cfg = M2M100Config(
        vocab_size=len(tok),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=256,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    M2M100ForConditionalGeneration(cfg).eval().save_pretrained(dst)
    return dst


def main() -> None:
    a = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--out", required=True, help="Directory to write the model and tokenizer to.")
    a.add_argument("--codes", default=",".join(CODES), help="NLLB language codes, the source's first.")
    args = a.parse_args()
    print(make_tiny_nllb(Path(args.out), args.codes.split(",")))


if __name__ == "__main__":
    main()
