"""Named crash points for the kill -9 tests: `crashpoint(name)` SIGKILLs this process when the environment
variable LAMINA_BATCH_CRASHPOINT names that point (`name` or `name:N` for its N-th hit); otherwise a comparison.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["CRASH_ENV", "crashpoint"]

CRASH_ENV = "LAMINA_BATCH_CRASHPOINT"
_crash_spec: tuple[str, int] | None = None
_crash_loaded = False
_crash_hits: Counter[str] = Counter()


def _parse_crashpoint(value: str | None) -> tuple[str, int] | None:
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

    Points: before-intent, after-intent, after-send, after-reply (reply received, remote id not yet handed to the
    manifest), after-id (right after it was), before-download. The variable is read once, so an unset one costs
    a comparison.
    """
    global _crash_spec, _crash_loaded
    if not _crash_loaded:
        _crash_spec = _parse_crashpoint(os.environ.get(CRASH_ENV))
        _crash_loaded = True
    if _crash_spec is None or _crash_spec[0] != name:
        return
    _crash_hits[name] += 1
    if _crash_hits[name] >= _crash_spec[1]:
        os.kill(os.getpid(), signal.SIGKILL)
