"""Decoding settings of a run: a training workdir decodes the way its protocol says (configs `decode`).

Shared by `infer.main` and `beam_pipelines.generate`, so that training and decoding are never mixed by
accident: released runs decode with repetition penalty 1.2 (the yamls' `repeat_penalty`), `:paper` runs with
1.1 (the paper's text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# released protocol (configs/common.py `decode`); used when --model is not a training workdir
DEFAULTS = {"max_new_tokens": 512, "repetition_penalty": 1.2, "template": "model", "dtype": "float32"}


def run_settings(model: str) -> tuple[dict[str, object], str]:
    """Decoding defaults of a training workdir (or its export/) from its config.json; else DEFAULTS.

    Returns (settings, where they came from)."""
    path = Path(model).expanduser()
    for wd in (path, path.parent) if path.name == "export" else (path,):
        cfg_file = wd / "config.json"
        if (wd / "done.json").exists() and cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text())
                dec, m = cfg["decode"], cfg["model"]
                settings = {
                    "max_new_tokens": int(dec["max_new_tokens"]),
                    "repetition_penalty": float(dec["repetition_penalty"]),
                    "template": m["chat_template"],
                    "dtype": m["dtype"],
                }
            except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
                raise ValueError(f"{cfg_file}: cannot read the run's decoding settings ({e!r})") from None
            return settings, f"{cfg_file} (protocol {cfg.get('protocol', '?')})"
    return dict(DEFAULTS), "defaults (released protocol)"


def fill_unset(flag_values: Any) -> str:
    """Fills the decoding options left unset (None) from run_settings(.model); returns where they came from."""
    settings, source = run_settings(flag_values.model)
    explicit = []
    for name, value in settings.items():
        if getattr(flag_values, name) is None:
            setattr(flag_values, name, value)
        else:
            explicit.append(name)
    return source + (f"; given by flags: {', '.join(explicit)}" if explicit else "")
