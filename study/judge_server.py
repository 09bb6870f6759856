"""A local demo judge: `python -m infer.serve` in a subprocess, on a free port of 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def demo_model_name(model: str | None) -> str:
    """The model id the demo server is started with (part of the judge cache key): demo-<dir name>."""
    if model in (None, "embedded", "smollm2"):
        from models.embedded import EMBEDDED_NAME

        return f"demo-{EMBEDDED_NAME}"
    return f"demo-{Path(os.path.expanduser(str(model))).name}"


class JudgeServer:
    """Starts infer.server for `model`, waits for /v1/models, stops it (terminate, then kill)."""

    def __init__(self, model: str, log: Path, max_batch: int = 16):
        self.model, self.log, self.max_batch = model, Path(log), max_batch
        self.name = demo_model_name(model)
        self.proc: subprocess.Popen | None = None
        self.base_url: str | None = None

    def start(self, timeout_s: float = 600.0) -> str:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "infer.serve", f"--model={self.model}", "--host=127.0.0.1", "--port=0",
            f"--served_model_name={self.name}", f"--max_batch={self.max_batch}", "--batch_wait_ms=200",
        ]  # fmt: skip
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"demo judge server exited ({self.proc.returncode}); see {self.log}")
            m = re.search(r"on (http://127\.0\.0\.1:\d+/v1)", self.log.read_text(errors="replace"))
            if m and self._ready(m.group(1)):
                self.base_url = m.group(1)
                print(f"demo judge: {self.name} at {self.base_url} (log {self.log})", flush=True)
                return self.base_url
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"demo judge server not ready after {timeout_s:.0f}s; see {self.log}")

    def _ready(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/models", timeout=5) as r:
                return any(m.get("id") == self.name for m in json.load(r).get("data", []))
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
