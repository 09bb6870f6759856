"""The evaluation set and its modifiers, translated into new languages (`beam_pipelines.translate --eval_set`).

What is translated (each a record of the translate pipeline, so every translation gets the same quality
`flags`, `source_id`, `translator` and `decoding` provenance as Dolly-DT):
  * every message of the 113 evaluation chats of the source language, id `paper-<src>-NNN.m<j>`;
  * every distinct modifier sentence of the source's modifier set (20 in English), id
    `modifier-<src>-NN` (category: the modifier type label of its first line, e.g. `num_items_2`).
The target's files are then assembled (`write_eval_files`), so the result is an evaluation folder that
`evalsuite.data` reads like the shipped one:
  * `alpacaeval_test_subset.<tgt>.jsonl`: the translated chats, line-aligned with the source;
  * `modifiers.<tgt>.jsonl`: line i = the translation of its base instruction (same evaluation line as in the
    source) + the source's separator + the translation of its modifier sentence, so the base instruction stays
    a prefix of the modifier line, as the loader requires;
  * `modifiers.<tgt>.base`: the evaluation item each modifier line is built on (translations of two
    instructions may coincide, so the loader's longest-prefix search is not relied on);
  * `modifiers.<tgt>.types`: the source's labels carried over unchanged (`num_items_N` keeps its N,
    `lang_XX` its target XX); a `lang_<tgt>` line (a modifier asking for the target language itself) is an
    error: translate from a source whose modifiers do not target it;
  * `tasks.json`: copied (the task ranges are line ranges);
  * with `--eval_items` (a few instructions, e.g. to try a language or a translator), only those evaluation
    lines and the modifier lines built on them, plus `alpacaeval_test_subset.<tgt>.items` and
    `modifiers.<tgt>.items` (the source line index of each line: ids and items stay those of the source);
  * `translation.json`: source folder and language, translator, decoding settings, the number of flagged
    translations per flag with their ids (kept, since every line is needed: review them), and the
    num_items modifier sentences whose translation lost the number N.
The pipeline's own Parquet output (`translation-00000-of-00001.parquet`, sources + translations, with their
provenance columns; flagged ones also in `translation.review-...`) stays next to them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalsuite.data import (
    EVAL_FILE,
    EVAL_ITEMS_FILE,
    MODIFIER_BASE_FILE,
    MODIFIER_ITEMS_FILE,
    MODIFIER_TYPES_FILE,
    MODIFIERS_FILE,
    N_EVAL,
    EvalRecord,
    check_langs,
    default_data_dir,
    load_eval,
    load_modifiers,
)
from records.errors import InputError
from records.files import atomic_write_text

PREFIX = "translation"  # the pipeline's output prefix inside the target folder
SUMMARY = "translation.json"


def modifier_label(r: EvalRecord) -> str:
    """The .types label of a modifier record: num_items_5, lang_de, short, ..."""
    return f"{r.modifier_type}_{r.modifier_arg}" if r.modifier_arg else str(r.modifier_type)


def message_id(r: EvalRecord, j: int) -> str:
    return f"{r.id}.m{j}"


class EvalSource:
    """The source language's evaluation and modifier records, and the translate pipeline's input rows."""

    def __init__(
        self, eval_dir: str | Path | None, src: str, tgts: Sequence[str], items: Sequence[int] | None = None
    ):
        self.dir = Path(eval_dir or default_data_dir())
        self.src = src
        check_langs([src], self.dir, modifiers=True)
        self.eval = load_eval(src, self.dir)
        self.mods = load_modifiers(src, self.dir)
        self.partial = items is not None or len(self.eval) != N_EVAL
        if items is not None:
            missing = sorted(set(items) - {r.item for r in self.eval})
            if missing:
                raise InputError(f"--eval_items: {missing} not in the {src} evaluation set of {self.dir}")
            self.eval = [r for r in self.eval if r.item in set(items)]
            self.mods = [r for r in self.mods if r.base_item in set(items)]
        self.texts: dict[str, str] = {}  # modifier sentence -> its record id
        labels: dict[str, str] = {}
        for r in self.mods:
            if r.modifier_text not in self.texts:
                self.texts[str(r.modifier_text)] = f"modifier-{src}-{len(self.texts):02d}"
                labels[str(r.modifier_text)] = modifier_label(r)
        self.labels = labels
        for tgt in tgts:
            if tgt == src:
                raise InputError(f"--tgt={tgt}: the source language itself")
            clash = [r.item for r in self.mods if r.modifier_type == "lang" and r.modifier_arg == tgt]
            if clash:
                raise InputError(
                    f"{self.dir / MODIFIER_TYPES_FILE.format(lang=src)}: items {clash[:5]}"
                    f"{' ...' if len(clash) > 5 else ''} are lang_{tgt}: translated into {tgt} they would ask "
                    f"for the language they are written in; translate from a source without lang_{tgt} modifiers"
                )

    def rows(self) -> list[dict[str, Any]]:
        """Dolly-like rows (instruction = the text to translate) for the translate pipeline."""
        out = []
        for r in self.eval:
            for j, m in enumerate(r.messages):
                out.append(_row(message_id(r, j), m["content"], "eval", self.src))
        for text, rid in self.texts.items():
            out.append(_row(rid, text, self.labels[text], self.src))
        return out


def _row(rid: str, text: str, category: str, lang: str) -> dict[str, Any]:
    return {"id": rid, "lang": lang, "instruction": text, "context": "", "response": "", "category": category}


def write_eval_files(
    source: EvalSource, translated: list[dict[str, Any]], out_dir: str | Path, tgts: Sequence[str]
) -> dict[str, Any]:
    """Writes each target's evaluation files from the pipeline's translated records (TRANSLATION_SCHEMA rows)
    into `out_dir`, and translation.json; returns that summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_key = {(t["lang"], t["source_id"]): t for t in translated if t.get("translator") != "source"}
    atomic_write_text((source.dir / "tasks.json").read_text(encoding="utf-8"), out / "tasks.json")
    summary: dict[str, Any] = {"source_dir": str(source.dir), "src": source.src, "targets": {}}
    for tgt in tgts:

        def text(rid: str, tgt: str = tgt) -> str:
            rec = by_key.get((tgt, rid))
            if rec is None:
                raise InputError(
                    f"no {tgt} translation of {rid} in {out}: see {PREFIX}.deadletter-*.parquet, or the "
                    "output was made for other --eval_items/--tgt (rerun with --overwrite)"
                )
            return str(rec["instruction"]).strip()

        chats = [
            [{"role": m["role"], "content": text(message_id(r, j))} for j, m in enumerate(r.messages)]
            for r in source.eval
        ]
        chat_of = {r.item: chat for r, chat in zip(source.eval, chats, strict=True)}
        mod_lines, labels = [], []
        for r in source.mods:
            base = chat_of[int(r.base_item or 0)]
            sep = r.instruction[len(str(r.base_instruction)) :]
            sep = sep[: len(sep) - len(sep.lstrip())] or " "
            last = base[-1]["content"] + sep + text(source.texts[str(r.modifier_text)])
            mod_lines.append([*base[:-1], {"role": base[-1]["role"], "content": last}])
            labels.append(modifier_label(r))
        _write_jsonl(out / EVAL_FILE.format(lang=tgt), chats)
        mod_files = (MODIFIERS_FILE, MODIFIER_TYPES_FILE, MODIFIER_BASE_FILE, MODIFIER_ITEMS_FILE)
        for name in mod_files if not source.mods else ():  # no modifier line is built on --eval_items
            (out / name.format(lang=tgt)).unlink(missing_ok=True)
        if source.mods:
            _write_jsonl(out / MODIFIERS_FILE.format(lang=tgt), mod_lines)
            atomic_write_text("\n".join(labels) + "\n", out / MODIFIER_TYPES_FILE.format(lang=tgt))
            bases = "".join(f"{r.base_item}\n" for r in source.mods)  # translations of bases may coincide
            atomic_write_text(bases, out / MODIFIER_BASE_FILE.format(lang=tgt))
        for name, recs_ in ((EVAL_ITEMS_FILE, source.eval), (MODIFIER_ITEMS_FILE, source.mods)):
            path = out / name.format(lang=tgt)
            if source.partial and recs_:
                atomic_write_text("".join(f"{r.item}\n" for r in recs_), path)
            else:
                path.unlink(missing_ok=True)
        recs = [t for (lang, _), t in by_key.items() if lang == tgt]
        flagged: dict[str, list[str]] = {}
        for t in recs:
            for f in t.get("flags") or []:
                flagged.setdefault(f, []).append(t["source_id"])
        lost = [
            t
            for t, label in source.labels.items()
            if (m := re.fullmatch(r"num_items_(\d+)", label)) and m.group(1) not in text(source.texts[t])
        ]
        first = recs[0] if recs else {}
        summary["targets"][tgt] = {
            "files": sorted(p.name for p in out.glob(f"*.{tgt}.*")),
            "items": [r.item for r in source.eval] if source.partial else "all",
            "translator": first.get("translator"),
            "decoding": json.loads(first["decoding"]) if first.get("decoding") else None,
            "translations": len(recs),
            "flagged": {f: sorted(ids) for f, ids in sorted(flagged.items())},
            "flag_counts": {f: len(ids) for f, ids in sorted(flagged.items())},
            "num_items_number_lost": lost,
        }
    atomic_write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", out / SUMMARY)
    return summary


def _write_jsonl(path: Path, chats: list[list[dict[str, str]]]) -> None:
    atomic_write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), path)
