"""Planning a grid (docs/results.md): configs × LRs → runs, run.json, config hashes, data-file hashes, stage
keys. The run directory itself (paths, markers, run.json) is `records.rundir`.

Nothing here loads weights or imports the trainer; `study.grid_run` executes the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from evalsuite.data import (
    EVAL_FILE,
    MODIFIER_TYPES,
    MODIFIER_TYPES_FILE,
    MODIFIERS_FILE,
    EvalRecord,
    default_data_dir,
    eval_langs,
    load_eval,
    load_modifiers,
    load_tasks,
    modifier_langs,
)
from records.errors import InputError
from records.files import sha256_file
from records.rundir import RunDir, now  # noqa: F401  (re-exported: gp.RunDir, gp.now)

STAGES = ("train", "generate", "score")
ANCHOR_STEMS = ("llama2_13b_dolly_en_ft", "anchor")
# display names of known base models (model.init_from → name); anything else: the directory name
BASE_NAMES = {
    "embedded": "SmolLM2-135M",
    "llama-2-13b": "LLaMA-2-13B",
    "llama-2-7b": "LLaMA-2-7B",
    "towerbase-7b": "Tower-7B",
}
DATA_NAMES = {"dolly_en": "Dolly-En", "dolly_dt": "Dolly-DT", "lima_en": "LIMA-En"}
# modifier types taken first by `modifiers=M` (programmatic checks first: they need no LLM)
MODIFIER_ORDER = (
    "num_items",
    "short",
    "markdown_template",
    "lang",
    "cap_template",
    "long",
    "arrow_template",
    "html_template",
    "simple_style",
    "scientific_style",
    "complex_inst",
)


assert sorted(MODIFIER_ORDER) == sorted(MODIFIER_TYPES)


class GridError(InputError):
    """Bad grid input (config file, LR, subset, override); the message names the flag or file."""


# ------------------------------------------------------------------------------------------- configs


def split_config_spec(spec: str) -> tuple[str, str]:
    """'configs/a.py:runlocal' -> ('configs/a.py', 'runlocal'); an '@LR+LR' suffix (split_lr_suffix) is dropped."""
    path, _, args = split_lr_suffix(spec)[0].partition(":")
    return path, args


def split_lr_suffix(spec: str) -> tuple[str, list[str] | None]:
    """'configs/a.py:ft@1e-5+1e-4' -> ('configs/a.py:ft', ['1e-5', '1e-4']); no '@' -> (spec, None)."""
    head, at, tail = spec.partition("@")
    if not at:
        return spec, None
    lrs = [x for x in tail.split("+") if x]
    if not lrs:
        raise GridError(f"--configs: {spec!r}: expected LRs after '@', e.g. @1e-5+1e-4")
    return head, lrs


def split_config_list(text: str | Sequence[str]) -> list[str]:
    """`--configs` text → config specs. Commas separate configs *and* a config's own arguments
    (`configs/smollm2.py:ft,lima`), so a new spec starts only at an item that names a `.py` file:
    'configs/a.py:ft,lima,configs/b.py' -> ['configs/a.py:ft,lima', 'configs/b.py']."""
    items = [x.strip() for x in (text.split(",") if isinstance(text, str) else text)]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if ".py" in item.partition(":")[0] or not out:
            out.append(item)
        else:
            out[-1] += "," + item
    return out


def _parse_value(old: Any, text: str, where: str) -> Any:
    try:
        if isinstance(old, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        if isinstance(old, int):
            return int(text)
        if isinstance(old, float):
            return float(text)
        if isinstance(old, (tuple, list)):  # "a+b" → ("a", "b"); numbers stay numbers: "1e-5+1e-4"
            items = [x for x in text.split("+") if x]
            if old and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in old):
                return tuple(float(x) for x in items)
            return tuple(items)
        return text
    except ValueError:
        raise GridError(f"{where}: cannot read {text!r} as {type(old).__name__}") from None


def apply_overrides(cfg: ConfigDict, overrides: Sequence[str]) -> None:
    """`key.path=value` (from --set); the value takes the type of the config's current value."""
    for ov in overrides:
        key, eq, text = ov.partition("=")
        where = f"--set={ov}"
        if not eq or not key:
            raise GridError(f"{where}: expected KEY=VALUE, e.g. train.steps=4")
        parts = key.split(".")
        node = cfg
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], ConfigDict):
                raise GridError(f"{where}: the config has no section {p!r}")
            node = node[p]
        leaf = parts[-1]
        if leaf not in node:
            raise GridError(f"{where}: the config has no key {key!r}")
        node[leaf] = _parse_value(node[leaf], text, where)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """`path[:args][@LRS]` → the config get_config(args) returns, with --set overrides applied."""
    path, args = split_config_spec(spec)
    p = Path(path)
    if not p.is_file() or p.suffix != ".py":
        raise GridError(f"--configs: config file {path!r} does not exist (expected configs/NAME.py)")
    mod_spec = importlib.util.spec_from_file_location(f"_grid_config_{p.stem}", p)
    module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
    try:
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        if not hasattr(module, "get_config"):
            raise GridError(f"--configs: {path} has no get_config()")
        cfg = module.get_config(args or None)
    except GridError:
        raise
    except Exception as e:
        raise GridError(f"--configs: {spec}: {type(e).__name__}: {e}") from None
    apply_overrides(cfg, overrides)
    return cfg


def config_json(cfg: ConfigDict) -> str:
    return cfg.to_json_best_effort(sort_keys=True)


def sha256(obj: Any) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_lrs(values: Sequence[str]) -> list[float]:
    lrs = []
    for v in values:
        try:
            lr = float(v)
        except ValueError:
            raise GridError(f"--lrs: cannot read {v!r} as a learning rate (e.g. 1e-5)") from None
        if not math.isfinite(lr) or lr <= 0:
            raise GridError(f"--lrs: learning rate {v!r} must be a positive number")
        lrs.append(lr)
    if len(set(lrs)) != len(lrs):
        raise GridError(f"--lrs: repeated learning rate in {list(values)}")
    return lrs


def with_lr(cfg: ConfigDict, lr: float) -> ConfigDict:
    """A copy with optimizer.lr = lr and min_lr scaled to keep the config's lr/min_lr ratio."""
    out = ConfigDict(cfg.to_dict())
    ratio = cfg.optimizer.min_lr / cfg.optimizer.lr
    out.optimizer.lr = lr
    out.optimizer.min_lr = float(f"{lr * ratio:.12g}")
    return out


# ------------------------------------------------------------------------------------------- runs


@dataclasses.dataclass
class RunSpec:
    name: str
    config: str  # path[:args] as given
    cfg: ConfigDict  # resolved (LR applied)
    config_hash: str
    method: str  # ft | lora | none
    lr: float | None
    overrides: tuple[str, ...]
    meta: dict[str, Any]  # run.json (records.rundir.RunMeta; validated when written)

    @property
    def trains(self) -> bool:
        return self.method != "none"


def data_name(cfg: ConfigDict) -> str:
    if cfg.data.format == "lima":
        return "lima_en"
    return "dolly_dt" if len(cfg.data.paths) > 1 else "dolly_en"


def base_model_name(cfg: ConfigDict) -> str:
    src = cfg.model.init_from
    if not src:
        return f"random-{cfg.model.preset}"
    key = src if src == "embedded" else Path(os.path.expanduser(src)).name
    return BASE_NAMES.get(key, key)


def run_name(stem: str, args: str, lr: float | None) -> str:
    parts = [stem] + [a for a in args.split(",") if a]
    return "-".join(parts) + ("-base" if lr is None else f"-lr{lr!r}")


def make_run(spec: str, lr: float | None, overrides: Sequence[str], anchor: bool) -> RunSpec:
    """One run of the grid: a config at one LR, or (lr None) the config's untuned base model."""
    cfg = load_config(spec, overrides)
    path, args = split_config_spec(spec)
    stem = Path(path).stem
    base = base_model_name(cfg)
    if lr is None:
        method, chash = "none", sha256({"base_of": json.loads(config_json(cfg))})
        group = label = f"{base} (untuned)"
    else:
        cfg = with_lr(cfg, lr)
        method, chash = ("lora" if cfg.lora.enabled else "ft"), sha256(config_json(cfg))
        group = f"{base} / {DATA_NAMES.get(data_name(cfg), data_name(cfg))} / {method.upper() if method == 'ft' else 'LoRA'}"
        label = f"{group} / lr {lr:g}"
    name = run_name(stem, args, lr)
    meta = {
        "run": name,
        "config": spec,
        "protocol": cfg.protocol,
        "decode": dict(cfg.decode),
        "config_hash": chash,
        "label": label,
        "group": group,
        "base_model": base,
        "data": data_name(cfg),
        "method": method,
        "lr": lr,
        "anchor": bool(anchor and lr is not None),
        "overrides": list(overrides),
    }
    return RunSpec(name, spec, cfg, chash, method, lr, tuple(overrides), meta)


def config_lrs(spec: str, lrs: Sequence[float] | None, overrides: Sequence[str] = ()) -> list[float]:
    """The LRs of one config: its `@LR+LR` suffix, else --lrs, else the config's own `lr_grid`."""
    _, own = split_lr_suffix(spec)
    if own is not None:
        return parse_lrs(own)
    if lrs:
        return list(lrs)
    return parse_lrs([repr(x) for x in load_config(spec, overrides).lr_grid])


def plan_runs(
    configs: Sequence[str],
    lrs: Sequence[float] | None,
    overrides: Sequence[str],
    include_base: bool,
    anchor: str = "",
) -> list[RunSpec]:
    """Every config × its LRs (config_lrs) (+ one base run per config with include_base), in order."""
    if not configs:
        raise GridError("--configs: give at least one config file")
    stems = [Path(split_config_spec(c)[0]).stem for c in configs]
    if anchor:
        anchor = split_lr_suffix(anchor)[0]
    configs_plain = [split_lr_suffix(c)[0] for c in configs]
    if anchor:
        anchor_spec = anchor
    else:
        anchor_spec = next((c for c, s in zip(configs_plain, stems) if s in ANCHOR_STEMS), configs_plain[0])
    runs = []
    bases: set[str] = set()
    for spec, plain in zip(configs, configs_plain):
        if include_base:
            base = make_run(plain, None, overrides, False)
            same = sha256([base.cfg.model.to_dict(), base.cfg.decode.to_dict()])
            if same not in bases:  # configs differing only in training share one untuned run
                bases.add(same)
                runs.append(base)
        for lr in config_lrs(spec, lrs, overrides):
            runs.append(make_run(plain, lr, overrides, plain == anchor_spec))
    seen: dict[str, str] = {}
    for r in runs:
        if r.name in seen:
            raise GridError(f"--configs: {r.config} and {seen[r.name]} both give run name {r.name!r}")
        seen[r.name] = r.config
    return runs


# ------------------------------------------------------------------------------------------- prompts


def parse_subset(text: str) -> dict[str, int]:
    """'' or 'all' → {}; 'tasks=8,per_task=1,modifiers=4' → counts (see select_records)."""
    if text.strip() in ("", "all"):
        return {}
    out = {}
    for part in text.split(","):
        key, eq, val = part.strip().partition("=")
        if key not in ("tasks", "per_task", "modifiers") or not eq:
            raise GridError(f"--subset: {part!r}: expected tasks=N, per_task=K, modifiers=M or all")
        try:
            out[key] = int(val)
        except ValueError:
            raise GridError(f"--subset: {part!r}: {val!r} is not an integer") from None
        if out[key] < 0:
            raise GridError(f"--subset: {part!r} must not be negative")
    return out


def select_records(
    eval_sets: Sequence[str], langs: Sequence[str], subset: dict[str, int], eval_dir: str | None = None
) -> list[EvalRecord]:
    """The instructions to generate for: whole sets, or a task-balanced subset aligned across languages.

    tasks=N: N of the 25 tasks, evenly spread; per_task=K: the first K items of each (default 1);
    modifiers=M: M modifier items per language with distinct types (MODIFIER_ORDER). Same items in every
    language.
    """
    bad = [s for s in eval_sets if s not in ("paper", "modifiers")]
    if bad or not eval_sets:
        raise GridError(f"--eval: {bad or eval_sets}: expected paper and/or modifiers")
    have = modifier_langs(eval_dir) if "modifiers" in eval_sets else eval_langs(eval_dir)
    langs = list(langs) or list(have)  # default: every language of the evaluation folder
    bad = [x for x in langs if x not in have]
    if bad or not langs:
        raise GridError(
            f"--langs: {bad or langs}: expected some of {','.join(have)} (the languages of "
            f"{eval_dir or 'the shipped data/eval'}; add one: docs/languages.md)"
        )
    items: list[int] | None = None
    mod_items: list[int] | None = None
    if subset:
        tasks = load_tasks(eval_dir)
        n = min(subset.get("tasks", len(tasks)), len(tasks))
        k = subset.get("per_task", 1)
        chosen = [tasks[i * len(tasks) // n] for i in range(n)] if n else []
        items = [i for t in chosen for i in range(t.first, min(t.last, t.first + k - 1) + 1)]
        mods = load_modifiers(langs[0], eval_dir)
        mod_items = []
        for mtype in MODIFIER_ORDER[: subset.get("modifiers", 0)]:
            mod_items += [next(r.item for r in mods if r.modifier_type == mtype)]
    out: list[EvalRecord] = []
    for lang in langs:
        if "paper" in eval_sets:
            recs = load_eval(lang, eval_dir)
            out += recs if items is None else _by_item(recs, items)
        if "modifiers" in eval_sets:
            recs = load_modifiers(lang, eval_dir)
            out += recs if mod_items is None else _by_item(recs, mod_items)
    if not out:
        raise GridError("--subset/--eval/--langs select no instruction")
    return out


def _by_item(recs: list[EvalRecord], items: list[int]) -> list[EvalRecord]:
    """The records of `items`, in that order (by item, not position: a partial set lacks some lines)."""
    of = {r.item: r for r in recs}
    return [of[i] for i in items if i in of]


def prompts_hash(records: Sequence[EvalRecord]) -> str:
    return sha256([[r.id, r.messages] for r in records])


# ------------------------------------------------------------------------------------------- markers


def stage_key(stage: str, config_hash: str, inputs: dict[str, Any]) -> str:
    """Hash of config_hash + the stage's inputs and parameters (docs/results.md)."""
    return sha256({"stage": stage, "config_hash": config_hash, "inputs": inputs})


# ------------------------------------------------------------------------------------------- data files

REPO = Path(__file__).resolve().parents[1]


class FileHashes:
    """sha256 of files, each read once per grid (a Dolly-DT grid names the same files in many runs)."""

    def __init__(self) -> None:
        self._done: dict[Path, str | None] = {}

    def __call__(self, path: str | os.PathLike) -> str | None:
        """The file's sha256, or None when it does not exist (the stage that reads it fails, naming it)."""
        p = Path(path).resolve()
        if p not in self._done:
            self._done[p] = sha256_file(p) if p.is_file() else None
        return self._done[p]


def train_files(cfg: ConfigDict) -> list[str]:
    """The training files a config names: data.paths as given, a `lang=` prefix dropped, each once; a hub
    dataset as `hub:<name>` (train.data reads the same)."""
    paths = [re.sub(r"^[a-z]{2,3}=", "", str(p)) for p in cfg.data.paths]
    if cfg.data.hub_dataset:
        paths.append(f"hub:{cfg.data.hub_dataset}")
    return list(dict.fromkeys(paths))


def eval_files(eval_sets: Sequence[str], langs: Sequence[str], eval_dir: str | None = None) -> list[Path]:
    """The evaluation files that select_records reads (evalsuite.data.load_eval / load_modifiers)."""
    root = Path(eval_dir) if eval_dir else default_data_dir()
    files = [root / "tasks.json"]
    for lang in langs:
        files.append(root / EVAL_FILE.format(lang=lang))  # modifiers are matched to the evaluation set too
        if "modifiers" in eval_sets:
            files += [root / MODIFIERS_FILE.format(lang=lang), root / MODIFIER_TYPES_FILE.format(lang=lang)]
    return files


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it, else as is."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def data_files(
    run: RunSpec,
    eval_sets: Sequence[str],
    langs: Sequence[str],
    eval_dir: str | None = None,
    hashes: FileHashes | None = None,
) -> dict[str, dict[str, str | None]]:
    """run.json "data_files" (records.rundir.DataFiles): sha256 of the run's training files (none for an
    untuned base model) and of the evaluation files it generates on."""
    hashes = hashes or FileHashes()
    train = {}
    if run.trains:
        train = {p: (None if p.startswith("hub:") else hashes(p)) for p in train_files(run.cfg)}
    evals = eval_files(eval_sets, langs, eval_dir)
    return {"train": train, "eval": {_shown(p): hashes(p) for p in evals}}
