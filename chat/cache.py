"""The on-disk reply cache of the chat client: sqlite, keyed by sha256 of (model, messages, parameters)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cache_key(model: str, messages: Sequence[dict[str, str]], params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of (model, messages, params); the base URL is not part of it."""
    blob = json.dumps(
        {"model": model, "messages": list(messages), "params": params}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ChatCache:
    """sqlite table key -> (status, raw reply, token counts); safe across threads and processes."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.path = Path(os.path.expanduser(str(cache_dir))) / "chat_cache.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT, status TEXT, raw TEXT,"
                " prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
            )
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(replies)")}
            if "logprobs" not in cols:  # caches written before log-probs were recorded
                try:
                    self._db.execute("ALTER TABLE replies ADD COLUMN logprobs TEXT")
                except sqlite3.OperationalError:  # another process added it meanwhile
                    pass
            self._db.commit()

    def get(self, key: str) -> tuple[str, str, int, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status, raw, prompt_tokens, completion_tokens FROM replies WHERE key=?", (key,)
            ).fetchone()
        return tuple(row) if row else None

    def get_logprobs(self, key: str) -> list[dict[str, Any]] | None:
        """The log-probs stored with a reply (None if none were)."""
        with self._lock:
            row = self._db.execute("SELECT logprobs FROM replies WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def put(
        self,
        key: str,
        model: str,
        status: str,
        raw: str,
        prompt_tokens: int,
        completion_tokens: int,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> None:
        lp = json.dumps(logprobs, ensure_ascii=False) if logprobs is not None else None
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies (key, model, status, raw, prompt_tokens, completion_tokens,"
                " created, logprobs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, status, raw, prompt_tokens, completion_tokens, time.time(), lp),
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
