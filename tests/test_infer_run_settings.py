"""infer.run_settings: a training workdir decodes by its protocol (released 1.2, :paper 1.1) unless a flag says
otherwise; anything else gets the released defaults. The configs are resolved by the real config files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from infer.run_settings import DEFAULTS, fill_unset, run_settings
from study import grid_plan as gp


def workdir(tmp_path: Path, spec: str) -> Path:
    wd = tmp_path / spec.replace("/", "_").replace(":", "_")
    (wd / "export").mkdir(parents=True)
    (wd / "config.json").write_text(gp.config_json(gp.load_config(spec)))
    (wd / "done.json").write_text("{}")
    return wd


@pytest.mark.parametrize(
    "spec, penalty, template",
    [
        ("configs/llama2_13b_dolly_en_ft.py", 1.2, "llama-2"),
        ("configs/llama2_13b_dolly_en_ft.py:paper", 1.1, "llama-2"),
        ("configs/smollm2.py:ft", 1.2, "model"),
    ],
)
def test_workdir_decodes_by_its_protocol(tmp_path, spec, penalty, template):
    wd = workdir(tmp_path, spec)
    for model in (wd, wd / "export"):
        settings, source = run_settings(str(model))
        assert settings["repetition_penalty"] == penalty and settings["max_new_tokens"] == 512
        assert settings["template"] == template and str(wd / "config.json") in source


def test_flags_win_and_other_models_get_released_defaults(tmp_path):
    wd = workdir(tmp_path, "configs/llama2_13b_dolly_en_ft.py:paper")
    opts = SimpleNamespace(
        model=str(wd), max_new_tokens=64, repetition_penalty=None, template=None, dtype=None
    )
    source = fill_unset(opts)
    assert (opts.max_new_tokens, opts.repetition_penalty, opts.template) == (64, 1.1, "llama-2")
    assert "given by flags: max_new_tokens" in source
    assert run_settings(str(tmp_path / "some-hf-dir"))[0] == DEFAULTS
    assert DEFAULTS["repetition_penalty"] == gp.load_config("configs/anchor.py").decode.repetition_penalty


def test_unreadable_run_config_is_an_error(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "done.json").write_text("{}")
    (wd / "config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(ValueError, match="cannot read the run's decoding settings"):
        run_settings(str(wd))
