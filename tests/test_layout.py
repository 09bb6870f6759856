"""The package layout of docs/architecture.md, enforced: imports run one way, Beam at the edge, flags only
in entry points, and files written with the umask's mode."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
# top-level packages, in the order of the arrows (a package may import only those before it)
PACKAGES = ("records", "configs", "chat", "models", "train", "infer", "evalsuite", "reporting", "study")
EDGE = ("beam_pipelines", "bench")
# what each package may import of ours (docs/architecture.md)
ALLOWED = {
    "records": set(),
    "configs": set(),
    "chat": {"records"},
    "models": {"records"},
    "infer": {"records", "models"},
    "evalsuite": {"records", "chat"},
    "train": {"records", "configs", "models", "infer", "evalsuite"},
    "reporting": {"records", "evalsuite"},
    "study": {"records", "configs", "chat", "models", "train", "infer", "evalsuite", "reporting"},
    "beam_pipelines": {"records", "configs", "chat", "models", "infer", "evalsuite"},
    "bench": {"records", "configs", "chat", "models", "train", "infer", "evalsuite", "beam_pipelines"},
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES + EDGE:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = f
    return out


def imports_of(path: Path, name: str) -> set[str]:
    """Every module of ours imported anywhere in the file (also inside functions)."""
    found = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES + EDGE}


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _defines_flags(node: ast.stmt) -> bool:
    """A module-level `flags.DEFINE_*(...)` / `config_flags.DEFINE_*(...)` (bare or assigned)."""
    call = node.value if isinstance(node, ast.Expr | ast.Assign | ast.AnnAssign) else None
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr.startswith(("DEFINE", "mark_flag"))
    )


def entry_points(mods: dict[str, Path]) -> set[str]:
    """Modules run with `python -m` (a module-level `if __name__ == ...`)."""
    return {m for m, f in mods.items() if any(_is_main_guard(n) for n in ast.parse(f.read_text()).body)}


def flag_modules(mods: dict[str, Path]) -> set[str]:
    """Modules that define absl flags when imported: entry points only, imported by nothing."""
    return {m for m, f in mods.items() if any(_defines_flags(n) for n in ast.parse(f.read_text()).body)}


def test_imports_run_one_way() -> None:
    bad = []
    for name, path in modules().items():
        top = name.split(".")[0]
        for imp in imports_of(path, name):
            other = imp.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                bad.append(f"{path.relative_to(ROOT)}: imports {imp} ({top} -> {other} is not an arrow)")
    assert not bad, "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES + EDGE}
    for name, path in modules().items():
        top = name.split(".")[0]
        graph[top] |= {i.split(".")[0] for i in imports_of(path, name)} - {top}

    def reach(a: str, seen: set[str]) -> set[str]:
        for b in graph[a] - seen:
            seen.add(b)
            reach(b, seen)
        return seen

    cycles = [p for p in graph if p in reach(p, set())]
    assert not cycles, f"packages on an import cycle: {cycles} ({graph})"


def test_nothing_imports_beam_pipelines_or_a_flag_module() -> None:
    mods = modules()
    entries = flag_modules(mods)
    assert entries <= entry_points(mods), (
        f"flags defined outside entry points: {entries - entry_points(mods)}"
    )
    assert {"train.main", "infer.main", "reporting.report", "study.grid"} <= entries
    bad = []
    for name, path in mods.items():
        for imp in imports_of(path, name):
            if imp.split(".")[0] == "beam_pipelines" and not name.startswith(("beam_pipelines", "bench")):
                bad.append(f"{name} imports {imp}")
            if imp in entries and imp != name:
                bad.append(
                    f"{name} imports {imp}, which defines absl flags (only entry points do; nothing imports them)"
                )
    assert not bad, "\n".join(bad)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_library_modules_import_without_beam_and_define_no_flag() -> None:
    mods = modules()
    libs = sorted(
        m for m in set(mods) - entry_points(mods) if m.split(".")[0] in PACKAGES and m not in PACKAGES
    )
    assert "records.files" in libs and "reporting.build" in libs and "train.loop" in libs
    code = f"""
import importlib, sys
sys.modules["apache_beam"] = None  # any `import apache_beam` now raises ImportError
from absl import flags
ours = {tuple(PACKAGES)!r}
for m in {libs!r}:
    importlib.import_module(m)
defined = {{mod: [f.name for f in fl] for mod, fl in flags.FLAGS.flags_by_module_dict().items()
           if mod.split(".")[0] in ours}}
assert not defined, f"library modules defined absl flags: {{defined}}"
print("imported", len({libs!r}))
"""
    r = _run(code)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-4000:]


def test_files_get_the_umask_mode(tmp_path: Path) -> None:
    """Every writer (the atomic one for text, bytes, Parquet; a report; a model export) gives 0644 under 022."""
    code = f"""
import os, json
from pathlib import Path
os.umask(0o022)
from records.files import atomic_write_bytes, atomic_write_parquet, atomic_write_text
import pyarrow as pa
out = Path({str(tmp_path)!r})
atomic_write_text("x", out / "a.txt")
atomic_write_bytes(b"x", out / "b.bin")
atomic_write_parquet(pa.table({{"a": [1]}}), out / "c.parquet")
from reporting.build import Report, write_report
from reporting.report_html import Section
write_report(Report("t", "", [("k", "v")], [Section("s", "S", ["text"])], "sum"), out / "report")
"""
    r = _run(code)
    assert r.returncode == 0, r.stderr[-4000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 5
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    dirs = {
        str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*") if p.is_dir()
    }
    assert set(dirs.values()) <= {"0o755"}, dirs
    assert pa  # pyarrow is the core's only dependency besides pydantic


def test_expected_failures_print_one_error_line(tmp_path: Path) -> None:
    """A missing model and a truncated GGUF: one `error: …` line, exit 2, no traceback."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    trunc = tmp_path / "t.gguf"
    trunc.write_bytes(b"GGUF" + bytes(64))
    cmds = [
        ["infer.main", "--model=/missing/model", f"--input={prompts}", f"--output={tmp_path / 'o.parquet'}"],
        ["models.convert", f"--src={trunc}", f"--dst={tmp_path / 'conv'}"],
        ["reporting.report", f"--runs={tmp_path / 'no_runs'}", f"--out={tmp_path / 'r'}"],
    ]
    for cmd in cmds:
        r = subprocess.run(
            [sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert r.returncode == 2, (cmd, r.returncode, r.stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in r.stderr, (cmd, r.stderr[-2000:])
