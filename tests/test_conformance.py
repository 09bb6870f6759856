"""Our seven paper configs against the authors' released yamls + pasero defaults (configs/released/).

For each config, every pasero field in `defaults.json`'s mapping must equal, converted to our key, the yaml's
value or (when the yaml omits it) the pasero default recorded with its file:line, except where a documented
deliberate difference says otherwise (and then our value must be the documented one). `:paper` must give
Appendix B's values and change nothing else.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RELEASED = ROOT / "configs" / "released"
DATA = json.loads((RELEASED / "defaults.json").read_text())
CONFIGS = sorted(DATA["yamls"])


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((RELEASED / DATA["yamls"][name]["file"]).read_text())


def _get(cfg, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, list | tuple) else v


def _corpora(y: dict[str, Any]) -> list[str]:
    """train_corpora with the multi yamls' missing commas repaired (yaml_quirks: split on whitespace)."""
    return [part for entry in y["train_corpora"] for part in str(entry).split()]


def _expected(convert: str, value: Any, spec: dict[str, Any], y: dict[str, Any]) -> Any:
    """The value our key must hold for pasero value `value` under conversion `convert`."""
    if convert in ("equal", "rank_if_enabled"):
        return _plain(value)
    if convert == "float":
        return float(value)
    if convert in ("index0", "index1"):
        return float(value[int(convert[-1])])
    if convert == "warmup_to_schedule":  # pasero/optimization.py:43-48
        return "linear_to_min" if value == 0 else "inverse_sqrt"
    if convert == "fp32_flag":
        return "float32" if value else "bfloat16"
    if convert == "truncate_flag":
        return "truncate" if value else "skip"
    if convert == "positive":
        return value > 0
    if convert == "basenames":
        return _corpora(y)
    if convert == "corpus_format":
        assert value == "dialogue", value
        return _corpora(y)[0].split(".")[0]
    if convert == "temperature_to_sampling":
        return "proportional" if value == 1.0 else "tempered"
    if convert == "const":
        return _plain(spec["expect"])
    raise AssertionError(f"unknown conversion {convert!r} in defaults.json")


def _ours(convert: str, key: str, cfg) -> Any:
    v = _plain(_get(cfg, key))
    if convert == "basenames":
        return [os.path.basename(p.split("=", 1)[-1]) for p in v]
    return v


def _applies(entry: dict[str, Any], name: str) -> bool:
    return entry["configs"] == "all" or name in entry["configs"]


def _deliberate(name: str) -> dict[str, Any]:
    """our key -> documented value, from the deliberate differences that apply to config `name`."""
    out: dict[str, Any] = {}
    for e in DATA["deliberate_differences"]:
        if _applies(e, name):
            out.update(e.get("expect", {}))
            out.update(e.get("expect_per_config", {}).get(name, {}))
    return out


def conformance_errors(name: str, cfg) -> list[str]:
    """Every mismatch between config `name` (already resolved) and its yaml + pasero defaults."""
    y = _yaml(name)
    deliberate = _deliberate(name)
    errors = []
    for field, specs in DATA["mapping"].items():
        for spec in specs if isinstance(specs, list) else [specs]:
            key, convert = spec["ours"], spec["convert"]
            if key in deliberate:
                continue
            if spec.get("only_multi") and len(_corpora(y)) < 2:
                continue
            if field in y:
                value, where = y[field], f"yaml {DATA['yamls'][name]['file']}"
            elif convert == "const":
                value, where = None, f"pasero {DATA['defaults'][field]['where']}"
            else:
                value, where = (
                    DATA["defaults"][field]["value"],
                    f"pasero default {DATA['defaults'][field]['where']}",
                )
            if convert == "rank_if_enabled" and not value:
                continue  # no LoRA: the rank is not used
            want, got = _expected(convert, value, spec, y), _ours(convert, key, cfg)
            if want != got:
                errors.append(f"{name}: {field}={value!r} ({where}) -> {key} should be {want!r}, is {got!r}")
    for key, want in deliberate.items():
        got = _plain(_get(cfg, key))
        if got != _plain(want):
            errors.append(
                f"{name}: {key} should be {want!r} (deliberate difference, defaults.json), is {got!r}"
            )
    return errors


def _config(name: str, arg: str | None = None):
    return importlib.import_module(f"configs.{name}").get_config(arg)


def test_yamls_are_the_released_bytes():
    for entry in DATA["yamls"].values():
        digest = hashlib.sha256((RELEASED / entry["file"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"], (
            f"{entry['file']} differs from naver/pasero@{DATA['source']['commit']}"
        )
    assert {p.name for p in RELEASED.glob("*.yaml")} == {e["file"] for e in DATA["yamls"].values()}
    assert DATA["source"]["commit"] in (RELEASED / "NOTICE").read_text()


def test_multi_yaml_quirk_is_what_a_yaml_parser_reads():
    quirk = DATA["yaml_quirks"][0]
    for name, entry in DATA["yamls"].items():
        y = _yaml(name)
        if entry["file"] in quirk["files"]:
            assert y["train_corpora"] == ["dolly.en.jsonl", "dolly.fr.jsonl dolly.pt.jsonl dolly.ru.jsonl"]
            assert _corpora(y) == quirk["we_read"]
        else:
            assert len(y["train_corpora"]) == 1


def test_every_yaml_field_is_mapped_or_explained():
    known = set(DATA["mapping"]) | set(DATA["not_mapped"])
    for name in CONFIGS:
        missing = set(_yaml(name)) - known
        assert not missing, (
            f"{DATA['yamls'][name]['file']}: fields {sorted(missing)} neither mapped nor explained"
        )
    for field, specs in DATA["mapping"].items():
        for spec in specs if isinstance(specs, list) else [specs]:
            in_some_yaml = any(field in _yaml(n) for n in CONFIGS)
            assert in_some_yaml or field in DATA["defaults"], (
                f"{field}: no yaml sets it and no default is recorded"
            )
            assert spec["convert"] == "const" or in_some_yaml or "value" in DATA["defaults"][field]


def test_defaults_cite_file_and_line():
    for field, d in DATA["defaults"].items():
        assert "where" in d and ".py:" in d["where"], field
    for e in DATA["deliberate_differences"]:
        assert e["reason"] and (e["configs"] == "all" or set(e["configs"]) <= set(CONFIGS)), e["field"]


@pytest.mark.parametrize("name", CONFIGS)
def test_released_protocol_matches_yaml_and_pasero_defaults(name):
    cfg = _config(name)
    assert cfg.protocol == "released"
    errors = conformance_errors(name, cfg)
    assert not errors, "config differs from the released recipe:\n  " + "\n  ".join(errors)


def _flat(cfg, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in cfg.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = _plain(v)
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_protocol_is_appendix_b(name):
    paper = DATA["paper_appendix_b"]
    released, cfg = _flat(_config(name)), _flat(_config(name, "paper"))
    want = {**paper["values"], **paper["also_changed"]}
    for key, v in want.items():
        assert cfg[key] == v, f"{name}:paper {key} = {cfg[key]!r}, Appendix B: {v!r}"
    changed = {k for k in released if released[k] != cfg[k]}
    assert changed <= set(want), f"{name}:paper also changes {sorted(changed - set(want))}"


def test_lora_targets_are_the_model_projections():
    from configs.common import LORA_TARGETS
    from models.lora import DEFAULT_TARGETS, LoRAConfig

    assert tuple(LORA_TARGETS) == tuple(DEFAULT_TARGETS)
    assert list(DEFAULT_TARGETS) == DATA["defaults"]["lora_targets"]["ours"]
    assert len(DEFAULT_TARGETS) == len(DATA["defaults"]["lora_targets"]["value"])
    lora = LoRAConfig()
    assert (lora.alpha, lora.init) == (DATA["defaults"]["lora_alpha"]["value"], "pasero")


def test_configs_are_plain_data():
    """configs/*.py import nothing but each other, the stdlib and ml_collections (no JAX, no models)."""
    allowed = {"__future__", "ml_collections", "configs", "os", "pathlib", "typing", "dataclasses"}
    for path in sorted((ROOT / "configs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for n in names:
                assert n.split(".")[0] in allowed, f"{path.name} imports {n}"
