"""The one way an entry point reports an expected failure: `error: <message>` on stderr, exit status 2.

    if __name__ == "__main__":
        app.run(expected_errors(main))   # absl entry points; argparse ones call expected_errors(main)(argv)

Expected: `InputError` (and its subclasses `RecordError`, `SchemaError`, `ConfigError`, …) and the OS errors of
a missing or unreadable path. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from records.errors import InputError

EXPECTED: tuple[type[BaseException], ...] = (
    InputError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def error_line(e: BaseException) -> str:
    """`error: …` for an expected failure (OS errors name their path)."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"error: {e.filename}: {e.strerror or e}"
    return f"error: {e}"


def expected_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps an entry point's `main`: an expected failure prints one `error: …` line and exits with status 2."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except EXPECTED as e:
            print(error_line(e), file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped
