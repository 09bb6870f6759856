"""Expected failures: bad input a user can fix (a missing path, an unreadable file, a bad record or config).

Every entry point turns these into one `error: …` line on stderr and exit status 2, without a traceback
(`records.cli.expected_errors`). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input the user can fix; the message names the file, line or field."""
