"""Crash points for kill -9 tests: `crashpoint(name)` SIGKILLs this process when LAMINA_BATCH_CRASHPOINT names it.

Points in credentials/: `refresh-received` (a rotated pair was read from the server, nothing written yet),
`refresh-write` (the new file is complete and fsynced beside the old one, not yet renamed over it),
`refresh-written` (renamed into place, not yet used). The executor's points are listed in PLAN contract 1.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_CRASH_ENV = "LAMINA_BATCH_CRASHPOINT"
_spec: tuple[str, int] | None = None
_loaded = False
_hits: Counter[str] = Counter()


def parse_crashpoint(value: str | None) -> tuple[str, int] | None:
    """`name` or `name:N` -> (name, N); N defaults to 1 and is at least 1."""
    if not value:
        return None
    name, sep, nth = value.partition(":")
    if not sep:
        return name, 1
    try:
        return name, max(1, int(nth))
    except ValueError:
        return name, 1


def crashpoint(name: str) -> None:
    """SIGKILL this process the N-th time `name` is hit when LAMINA_BATCH_CRASHPOINT is `name` or `name:N`.

    The variable is read once, so an unset one costs a comparison.
    """
    global _spec, _loaded
    if not _loaded:
        _spec = parse_crashpoint(os.environ.get(_CRASH_ENV))
        _loaded = True
    if _spec is None or _spec[0] != name:
        return
    _hits[name] += 1
    if _hits[name] >= _spec[1]:
        os.kill(os.getpid(), signal.SIGKILL)
