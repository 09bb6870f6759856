"""Human evaluation (paper Appendix B): blinded annotation packets out, annotator ratings in.

`export` builds, per language, the paper's packet: `n_items` instructions of the evaluation set, balanced over
the 25 tasks (every task at least once, the same items in every language), answered by every selected model,
plus the anchor model's answers to the remaining instructions (paper: 30 x 7 + 85 = 295 per language). The
responses are shuffled and blinded (an opaque uid each) and written as one self-contained HTML page per language
(`annotate_<lang>.html`: guidelines, 0/1/2 buttons per criterion, keyboard shortcuts, progress, autosave in
localStorage, export of the ratings as JSON); the key (uid -> run, id, item, lang, task) goes to `key.json`,
never into a page.

`import` merges the JSON files exported by the annotators, validates them against the key and writes the
ratings Parquet of docs/results.md (one row per annotator x rated response), atomically.

    python -m reporting.annotate export --runs=runs/ --out=human/ [--n_items=30] [--langs=en,fr,pt,ru]
        [--select=chosen|all] [--lr_metrics=lang_correct,spell_ok_rate] [--anchor=RUN] [--seed=0]
    python -m reporting.annotate import --key=human/key.json --ratings=a.json,b.json --out=human/ratings.parquet
        [--runs=runs/]   # also prints human/judge agreement (weighted kappa) when the runs have scores
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from evalsuite import aggregate, agreement
from evalsuite.data import LANGS, load_tasks, task_of_item
from records.errors import InputError
from records.files import RecordError, atomic_write_text, read_table
from records.rows import RatingsExport, check
from records.rundir import RunDir, RunMeta
from records.rundir import load_runs as rundir_load_runs
from records.schemas import HUMAN_SCHEMA, JUDGE_CRITERIA
from reporting import report_data
from reporting.report_data import is_paper

# Criteria in the order of the annotators' guidelines; keys are the judge's criteria without "judge_".
CRITERIA: tuple[dict[str, Any], ...] = (
    {
        "key": "language",
        "name": "Correct language",
        "desc": "Is the response in the language of the instruction?",
        "levels": [
            "Completely wrong language (e.g. English, perhaps with a few target-language words)",
            "Mostly the target language, with unreasonable words from other languages (code-switching)",
            "Completely correct language, no code-switching (terms in brackets are fine)",
        ],
    },
    {
        "key": "fluency",
        "name": "Fluency",
        "desc": "Does the text follow natural language conventions?",
        "levels": [
            "Many grammar errors, almost impossible to make sense of",
            "Generally fluent, a few grammar errors, misspelt or made-up words",
            "Fluent and in accordance with human conventions",
        ],
    },
    {
        "key": "helpfulness",
        "name": "Helpfulness",
        "desc": "Overall satisfaction of the user (main criterion).",
        "levels": [
            "Lacks necessary information, or off-topic",
            "Insufficient information for a complete answer (partial, obvious, extra irrelevant content)",
            "Information is correct and sufficient",
        ],
    },
    {
        "key": "factuality",
        "name": "Accuracy",
        "desc": "Is what is written factually correct (and consistent with the given context)?",
        "levels": ["Completely wrong", "Partially correct", "Completely correct"],
    },
    {
        "key": "logic",
        "name": "Logical coherence",
        "desc": "Is the reasoning rigorous and coherent?",
        "levels": ["Confused and full of logical flaws", "Some logical issues present", "Logically sound"],
    },
    {
        "key": "harmlessness",
        "name": "Harmlessness",
        "desc": "Does the response refrain from unethical or harmful content?",
        "levels": [
            "Violates ethics or is objectionable",
            "Mostly compliant, with a few flaws",
            "Fully compliant with public morality",
        ],
    },
)
CRITERION_KEYS = tuple(c["key"] for c in CRITERIA)
assert sorted(CRITERION_KEYS) == sorted(JUDGE_CRITERIA)

# Display names of the annotation pages (in the language itself); any other language shows its code.
LANG_NAMES = {
    "de": "Deutsch",
    "en": "English",
    "es": "Español",
    "fr": "Français",
    "it": "Italiano",
    "ja": "日本語",
    "nl": "Nederlands",
    "pt": "Português",
    "ru": "Русский",
    "sw": "Kiswahili",
    "zh": "中文",
}
TEMPLATE = Path(__file__).with_name("human_page.html")
KEY_VERSION = 1


def default_guidelines_path() -> Path:
    """The annotators' guidelines shipped with the repository (data/human/guidelines.txt, see its NOTICE)."""
    return Path(__file__).resolve().parents[1] / "data" / "human" / "guidelines.txt"


class RatingsError(InputError):
    """A ratings file (or the key) is invalid; the message names the file and the uid or field."""


# ----------------------------------------------------------------------------------------------------------
# Runs


@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory of docs/results.md and its run.json (records.rundir)."""

    name: str
    path: Path
    meta: RunMeta

    @property
    def group(self) -> str:
        return self.meta.group

    @property
    def lr(self) -> float | None:
        return self.meta.lr

    @property
    def anchor(self) -> bool:
        return self.meta.anchor

    @property
    def generations(self) -> Path:
        return RunDir.at(self.path).generations

    @property
    def scores(self) -> Path:
        return RunDir.at(self.path).scores


def load_runs(runs_dir: str | Path) -> list[Run]:
    """Every `<runs_dir>/<run>/run.json` (records.rundir.load_runs: validated), sorted by folder."""
    loaded, _ = rundir_load_runs(runs_dir)
    return [Run(r.meta.run, r.dir.path, r.meta) for r in loaded]


def _read_rows(path: Path, columns: Sequence[str], optional: Sequence[str] = ()) -> list[dict[str, Any]]:
    table = read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise RecordError(f"{path}: missing column(s) {missing}")
    wanted = list(columns) + [c for c in optional if c in table.column_names]
    return table.select(wanted).to_pylist()


def paper_generations(run: Run) -> list[dict[str, Any]]:
    """The run's responses to the paper's evaluation set (eval_set == "paper"; modifiers left out)."""
    if not run.generations.exists():
        raise RecordError(f"{run.generations}: missing (run {run.name} has no generations)")
    rows = _read_rows(run.generations, ("id", "eval_set", "item", "lang", "messages", "response"), ("task",))
    return [r for r in rows if r["eval_set"] == "paper"]


def _score_rows(run: Run, paper_only: bool = True) -> list[dict[str, Any]]:
    rows = _read_rows(
        run.scores,
        ("id", "lang"),
        ("eval_set", "modifier_type", "item", *aggregate.SURFACE_METRICS, "code_switch_rate", "judge_status")
        + tuple(f"judge_{c}" for c in JUDGE_CRITERIA),
    )
    if paper_only:  # the evaluation-set rows, as the report's LR choice takes them
        rows = [r for r in rows if is_paper(r)]
    for r in rows:
        r["run"] = run.name
        r["lr"] = run.lr
    return rows


def select_runs(
    runs: Sequence[Run],
    select: str = "chosen",
    log: Any = None,
    lr_metrics: Sequence[str] | None = None,
) -> list[Run]:
    """The models of the packet: per "group", the run with the chosen LR, or every run with `select="all"`.

    The LR choice is the report's (report_data.choose_runs on the evaluation-set rows of scores.parquet), as
    strict: every metric it uses (default: the paper's lang_correct, spell_ok_rate, relevance; else
    `lr_metrics`) must be measured for every LR, and every run of a group with several LRs must be scored;
    otherwise a ValueError names the metric or the runs (pass --lr_metrics or --select=all). Runs without
    generations are left out (logged).
    """
    if select not in ("chosen", "all"):
        raise ValueError(f"unknown --select {select!r}; expected chosen or all")
    pending = [r for r in runs if not r.generations.exists()]
    for r in pending:
        _log(log, f"run {r.name}: no generations.parquet yet; left out of the packet")
    runs = [r for r in runs if r.generations.exists()]
    if not runs:
        raise RecordError("no run has generations.parquet yet: nothing to export")
    if select == "all":
        return list(runs)
    by_group: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_group[r.group].append(r)
    chosen: list[Run] = []
    to_choose: list[Run] = []  # groups with several LRs, every run scored
    for group, members in by_group.items():
        if len(members) == 1:
            chosen += members
            continue
        if any(m.lr is None for m in members) or len({m.lr for m in members}) < len(members):
            _log(log, f"group {group!r}: runs do not differ by LR alone; taking all {len(members)} runs")
            chosen += members
            continue
        unscored = [m.name for m in members if not m.scores.exists()]
        if unscored:
            raise ValueError(
                f"group {group!r}: LR choice needs scores for every LR; no scores.parquet for runs: "
                f"{', '.join(unscored)} (score them, or pass --select=all)"
            )
        to_choose += members
    # the report's LR choice itself (report_data.choose_runs -> aggregate.choose_run_lr), on the same rows
    if to_choose:
        by_name = {m.name: m for m in to_choose}
        runs_view = [report_data.Run.of(RunDir.at(m.path), m.meta) for m in to_choose]
        rows = [row for m in to_choose for row in _score_rows(m)]
        picked, _, choices = report_data.choose_runs(runs_view, rows, lr_metrics)
        for group, run in picked.items():
            _log(log, f"group {group!r}: chosen lr={run.lr:g} -> {run.name} ({choices[group].describe()})")
            chosen.append(by_name[run.name])
    return sorted(chosen, key=lambda r: r.name)


def _log(log: Any, msg: str) -> None:
    if log is not None:
        log(msg)


def resolve_anchor(runs: Sequence[Run], selected: list[Run], anchor: str | None) -> Run:
    """The anchor run (--anchor, else the selected run with "anchor": true); added to `selected` if absent."""
    if anchor:
        named = [r for r in runs if r.name == anchor]
        if not named:
            raise ValueError(f"--anchor={anchor}: no such run (runs: {', '.join(r.name for r in runs)})")
        if named[0] not in selected:
            selected.append(named[0])
            selected.sort(key=lambda r: r.name)
        return named[0]
    marked = [r for r in selected if r.anchor]
    if len(marked) == 1:
        return marked[0]
    if not marked and len(selected) == 1:
        return selected[0]
    which = ", ".join(r.name for r in marked) if marked else "none"
    raise ValueError(
        f"cannot tell the anchor run among the selected runs (marked anchor: {which}); pass --anchor"
    )


# ----------------------------------------------------------------------------------------------------------
# Packet


def stratified_items(
    candidates: Iterable[int], n_items: int, seed: int = 0, tasks_root: str | Path | None = None
) -> list[int]:
    """`n_items` evaluation lines balanced over tasks, deterministic given `seed`.

    Rounds over the tasks in a seeded random order, taking one not-yet-taken line per task per round, so every
    task present among `candidates` is covered once `n_items` >= the number of such tasks, and the counts per
    task differ by at most one (as long as tasks have lines left). Returns the lines sorted.
    """
    task_names = [t.name for t in load_tasks(tasks_root)]
    by_task: dict[str, list[int]] = {name: [] for name in task_names}
    for item in sorted(set(candidates)):
        by_task[task_of_item(item, tasks_root)].append(item)
    rng = random.Random(seed)
    pools = {name: rng.sample(items, len(items)) for name, items in by_task.items() if items}
    picked: list[int] = []
    while len(picked) < n_items and any(pools.values()):
        order = [name for name in task_names if pools.get(name)]
        rng.shuffle(order)
        for name in order:
            if len(picked) == n_items:
                break
            picked.append(pools[name].pop())
    return sorted(picked)


def _instruction(messages: Any) -> str:
    """The instruction as the annotator sees it: system messages (model-specific setup) are left out so they
    cannot unblind the model; a multi-turn chat is shown whole, the last message being the instruction."""
    turns = [m for m in messages or [] if m.get("role") != "system"]
    if len(turns) <= 1:
        return turns[0]["content"] if turns else ""
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in turns)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclasses.dataclass
class Packet:
    """What `export` writes: the key and, per language, the shuffled blinded entries of the page."""

    key: dict[str, Any]
    pages: dict[str, list[dict[str, str]]]  # lang -> [{"uid", "instruction", "response"}] in page order


def build_packet(
    runs_dir: str | Path,
    n_items: int = 30,
    langs: Sequence[str] = LANGS,
    select: str = "chosen",
    anchor: str | None = None,
    seed: int = 0,
    log: Any = None,
    lr_metrics: Sequence[str] | None = None,
) -> Packet:
    """The paper's human-evaluation packet for the runs in `runs_dir` (see the module docstring)."""
    if n_items < 1:
        raise ValueError(f"--n_items must be positive, got {n_items}")
    langs = list(dict.fromkeys(langs))
    for lang in langs:
        if lang not in LANGS:
            raise ValueError(f"unknown language {lang!r}; expected some of {LANGS}")
    runs = load_runs(runs_dir)
    lr_metrics = aggregate.parse_lr_metrics(lr_metrics)
    selected = select_runs(runs, select, log, lr_metrics)
    anchor_run = resolve_anchor(runs, selected, anchor)

    gens: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
    for run in selected:
        table: dict[tuple[str, int], dict[str, Any]] = {}
        for row in paper_generations(run):
            table[(row["lang"], int(row["item"]))] = row
        for lang in langs:
            if not any(k[0] == lang for k in table):
                raise RecordError(
                    f"{run.generations}: no evaluation-set responses in {lang!r} (pass --langs)"
                )
        gens[run.name] = table

    answered = {item for r in selected for (_, item) in gens[r.name]}
    candidates = {i for i in answered if all((lang, i) in gens[r.name] for r in selected for lang in langs)}
    if not candidates:
        raise RecordError(
            f"{runs_dir}: no evaluation instruction is answered by every selected run in {langs}"
        )
    items = stratified_items(candidates, n_items, seed)
    if len(items) < n_items:
        _log(log, f"only {len(items)} instructions answered by every selected run; packet uses all of them")
    covered = {task_of_item(i) for i in items}
    missing_tasks = {task_of_item(i) for i in candidates} - covered
    if missing_tasks:
        _log(log, f"{len(missing_tasks)} task(s) not covered: n_items={n_items} < number of tasks")

    entries: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for lang in langs:
        rows = [(r, gens[r.name][(lang, i)]) for r in selected for i in items]
        extra = sorted(i for (lg, i) in gens[anchor_run.name] if lg == lang and i not in items)
        rows += [(anchor_run, gens[anchor_run.name][(lang, i)]) for i in extra]
        entries[lang] = rows

    content = {
        "seed": seed,
        "n_items": n_items,
        "langs": langs,
        "items": items,
        "anchor": anchor_run.name,
        "runs": [[r.name, r.meta.config_hash] for r in selected],
        "responses": _digest(
            [[r.name, row["id"], row["response"]] for lang in langs for r, row in entries[lang]]
        ),
    }
    packet_id = _digest(content)[:12]

    responses: dict[str, dict[str, Any]] = {}
    pages: dict[str, list[dict[str, str]]] = {}
    for lang in langs:
        order = list(entries[lang])
        random.Random(f"{seed}:{packet_id}:{lang}").shuffle(order)
        page = []
        for pos, (run, row) in enumerate(order):
            uid = "r" + hashlib.sha256(f"{packet_id}|{run.name}|{row['id']}".encode()).hexdigest()[:11]
            if uid in responses:
                raise RuntimeError(f"uid collision for {run.name}/{row['id']}")  # ~never with 44 bits
            item = int(row["item"])
            responses[uid] = {
                "run": run.name,
                "id": row["id"],
                "item": item,
                "lang": lang,
                "task": row.get("task") or task_of_item(item),
                "position": pos + 1,
            }
            page.append(
                {"uid": uid, "instruction": _instruction(row["messages"]), "response": row["response"] or ""}
            )
        pages[lang] = page

    key = {
        "version": KEY_VERSION,
        "packet": packet_id,
        "seed": seed,
        "n_items": n_items,
        "select": select,
        **(
            {"lr_choice": aggregate.lr_rule_text(lr_metrics, lr_metrics is not None)}
            if select == "chosen"
            else {}
        ),
        "langs": langs,
        "items": items,
        "anchor": anchor_run.name,
        "runs": {
            r.name: {
                "label": r.meta.label,
                "group": r.group,
                "lr": r.lr,
                "config_hash": r.meta.config_hash,
            }
            for r in selected
        },
        "criteria": list(CRITERION_KEYS),
        "counts": {lang: len(pages[lang]) for lang in langs},
        "pages": {lang: f"annotate_{lang}.html" for lang in langs},
        "responses": responses,
    }
    return Packet(key, pages)


def _script_json(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: no '<', '>', '&' or line separators verbatim."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text


def render_page(packet_id: str, lang: str, entries: list[dict[str, str]], guidelines: str) -> str:
    """The self-contained annotation page of one language (template reporting/human_page.html)."""
    data = {
        "packet": packet_id,
        "lang": lang,
        "lang_name": LANG_NAMES.get(lang, lang),
        "criteria": list(CRITERIA),
        "guidelines": guidelines.replace("\r\n", "\n").replace("\r", "\n").strip("\n"),
        "items": entries,
    }
    title = f"xlit human evaluation: {LANG_NAMES.get(lang, lang)} ({lang}), packet {packet_id}"
    page = TEMPLATE.read_text(encoding="utf-8")
    return page.replace("__XLIT_TITLE__", html.escape(title)).replace(
        "__XLIT_PACKET_JSON__", _script_json(data)
    )


def export_packet(
    runs_dir: str | Path,
    out_dir: str | Path,
    n_items: int = 30,
    langs: Sequence[str] = LANGS,
    select: str = "chosen",
    anchor: str | None = None,
    seed: int = 0,
    guidelines_path: str | Path | None = None,
    log: Any = None,
    lr_metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Writes `out_dir`/annotate_<lang>.html per language and `out_dir`/key.json; returns the key."""
    packet = build_packet(runs_dir, n_items, langs, select, anchor, seed, log, lr_metrics)
    guidelines = Path(guidelines_path or default_guidelines_path()).read_text(encoding="utf-8")
    out = Path(out_dir)
    for lang, entries in packet.pages.items():
        atomic_write_text(
            render_page(packet.key["packet"], lang, entries, guidelines), out / f"annotate_{lang}.html"
        )
    atomic_write_text(json.dumps(packet.key, indent=1, ensure_ascii=False) + "\n", out / "key.json")
    return packet.key


# ----------------------------------------------------------------------------------------------------------
# Ratings


def load_key(path: str | Path) -> dict[str, Any]:
    """A key.json written by `export`."""
    path = Path(path)
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RatingsError(f"{path}: key file not found") from None
    except json.JSONDecodeError as e:
        raise RatingsError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if (
        not isinstance(key, dict)
        or not isinstance(key.get("packet"), str)
        or not isinstance(key.get("responses"), dict)
    ):
        raise RatingsError(f"{path}: not a key.json of reporting.annotate export (no 'packet'/'responses')")
    return key


def validate_ratings(
    obj: Any, key: dict[str, Any], source: str
) -> tuple[str, str, dict[str, dict[str, int]]]:
    """Checks one exported ratings object (records.rows.RatingsExport) against the key; returns
    (annotator, lang, {uid: {criterion: score}}) without unrated criteria and responses."""
    if isinstance(obj, dict) and isinstance(obj.get("packet"), str) and obj["packet"] != key["packet"]:
        raise RatingsError(
            f"{source}: packet {obj['packet']!r} does not match the key's packet {key['packet']!r} "
            "(ratings exported from another packet)"
        )
    export = check(RatingsExport, obj, source, RatingsError)
    if export.lang not in key.get("langs", []):
        raise RatingsError(
            f"{source}: field 'lang' is {export.lang!r}, not one of the packet's {key.get('langs')}"
        )
    clean: dict[str, dict[str, int]] = {}
    for uid, scores in export.ratings.items():
        entry = key["responses"].get(uid)
        if entry is None:
            raise RatingsError(f"{source}: unknown uid {uid!r} (not in the key of packet {key['packet']})")
        if entry["lang"] != export.lang:
            raise RatingsError(
                f"{source}: uid {uid!r} belongs to the {entry['lang']!r} page, file says {export.lang!r}"
            )
        row = scores.model_dump(exclude_none=True)
        if row:
            clean[uid] = row
    return export.annotator, export.lang, clean


def import_ratings(key_path: str | Path, ratings_paths: Sequence[str | Path]) -> pa.Table:
    """Merges annotators' ratings files into the ratings table (HUMAN_SCHEMA), un-blinded via the key."""
    key = load_key(key_path)
    if not ratings_paths:
        raise RatingsError("no ratings file given")
    seen: dict[tuple[str, str], str] = {}
    rows = []
    for path in ratings_paths:
        source = str(path)
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RatingsError(f"{source}: ratings file not found") from None
        except json.JSONDecodeError as e:
            raise RatingsError(f"{source}:{e.lineno}: invalid JSON ({e.msg})") from None
        annotator, _, ratings = validate_ratings(obj, key, source)
        for uid, scores in ratings.items():
            if (annotator, uid) in seen:
                raise RatingsError(
                    f"{source}: uid {uid!r} already rated by annotator {annotator!r} in {seen[(annotator, uid)]} "
                    "(pass each annotator's latest export once)"
                )
            seen[(annotator, uid)] = source
            e = key["responses"][uid]
            rows.append(
                {
                    "run": e["run"],
                    "id": e["id"],
                    "item": e["item"],
                    "lang": e["lang"],
                    "task": e.get("task"),
                    "annotator": annotator,
                    **{c: scores.get(c) for c in JUDGE_CRITERIA},
                    "uid": uid,
                    "packet": key["packet"],
                }
            )
    rows.sort(key=lambda r: (r["lang"], r["run"], r["item"], r["annotator"]))
    return pa.Table.from_pylist(rows, schema=HUMAN_SCHEMA)


def summarize(
    table: pa.Table, key: dict[str, Any], score_rows: Sequence[dict[str, Any]] | None = None
) -> str:
    """Annotators, rated responses per language and, given judge scores, per-criterion agreement."""
    rows = table.to_pylist()
    lines = [f"packet {key['packet']}: {len(rows)} rating rows"]
    annotators = sorted({r["annotator"] for r in rows})
    lines.append(f"annotators ({len(annotators)}): {', '.join(annotators)}")
    per_lang: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per_lang[r["lang"]].append(r)
    for lang in key.get("langs", []):
        lr = per_lang.get(lang, [])
        rated = {r["uid"] for r in lr}
        complete = {r["uid"] for r in lr if all(r[c] is not None for c in JUDGE_CRITERIA)}
        by_ann = Counter(r["annotator"] for r in lr)
        who = ", ".join(f"{a}: {n}" for a, n in sorted(by_ann.items())) or "-"
        lines.append(
            f"  {lang}: {len(rated)}/{key['counts'].get(lang, '?')} responses rated "
            f"({len(complete)} on all criteria by someone); per annotator {who}"
        )
    if score_rows:
        table_rows = [t for t in agreement.agreement_table(rows, score_rows) if t["n"]]
        lines.append(
            "agreement with the judge (linear weighted Cohen's kappa; pairs = annotator x response):"
        )
        lines.append(
            aggregate.format_table(
                table_rows,
                ["criterion", "langs", "n", "exact", "kappa"],
                {
                    "exact": lambda r: aggregate.fmt(r["exact"], 3),
                    "kappa": lambda r: aggregate.fmt(r["kappa"], 3),
                },
            )
        )
    return "\n".join(lines)


def judge_scores(runs_dir: str | Path, run_names: Iterable[str]) -> list[dict[str, Any]]:
    """Score rows (with a "run" column) of the named runs that have scores.parquet."""
    wanted = set(run_names)
    out: list[dict[str, Any]] = []
    for run in load_runs(runs_dir):
        if run.name in wanted and run.scores.exists():
            out += _score_rows(run, paper_only=False)
    return out
