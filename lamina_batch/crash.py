"""Named crash points for kill -9 tests: `crashpoint(name)` SIGKILLs this process the N-th time `name` is hit
when the environment variable LAMINA_BATCH_CRASHPOINT is `name` or `name:N`. Unset, a point costs a comparison.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["CRASH_ENV", "POINTS", "REFRESH_POINTS", "crashpoint"]

CRASH_ENV = "LAMINA_BATCH_CRASHPOINT"

# Where the start path can be killed, in the order a start passes them. Process tests name them; keep them stable.
POINTS = (
    "before-intent",  # the run is about to be recorded `submitting`
    "after-intent",  # `submitting` is committed; the start request is not sent yet
    "after-send",  # the start request is written to the socket; its reply is not read yet
    "after-reply",  # the reply is read; the remote id is not handed to the manifest yet
    "after-id",  # the remote id was just handed to the manifest (committed, or deferred where that is allowed)
    "before-download",  # the run is recorded completed; none of its files is written yet
)
# Where an OAuth refresh (credentials/) can be killed: its reply is read / the new pair is about to be / was just
# written back to the login file.
REFRESH_POINTS = ("refresh-received", "refresh-write", "refresh-written")

_spec: tuple[str, int] | None = None
_loaded = False
_hits: Counter[str] = Counter()


def _parse(value: str | None) -> tuple[str, int] | None:
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

    The variable is read once, at the first point reached."""
    global _spec, _loaded
    if not _loaded:
        _spec = _parse(os.environ.get(CRASH_ENV))
        _loaded = True
    if _spec is None or _spec[0] != name:
        return
    _hits[name] += 1
    if _hits[name] >= _spec[1]:
        os.kill(os.getpid(), signal.SIGKILL)
