"""Group commit: writes the manifest accepted with a durability weaker than NOW wait here, to share the fsync of
the next transaction (the next start intent, for remote ids) or the group-commit timer's, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable
from typing import Any

from lamina_batch.errors import ManifestError

__all__ = ["GROUP_COMMIT_DELAY", "Carried", "Durability", "GroupCommit"]

# The longest a write accepted with WITH_NEXT_INTENT or SOON waits for another commit to share its fsync.
GROUP_COMMIT_DELAY = 0.05


class Durability(enum.Enum):
    """When a write must be on disk.

    NOW: committed (fsynced) before the call returns.
    WITH_NEXT_INTENT: before any later start intent is (the intent's own transaction carries it), and within
    GROUP_COMMIT_DELAY. For a start's remote id: the app's next start cannot leave before the id is durable, so a
    crash leaves at most one run of the app to reconcile, as it would with NOW.
    SOON: within GROUP_COMMIT_DELAY, with the next commit that is not an intent (it never lengthens the
    one-start-per-app path). For a finish whose loss in a crash costs only a status request on resume.
    """

    NOW = "now"
    WITH_NEXT_INTENT = "with the next intent"
    SOON = "soon"


# (remote ids, finishes) a commit carries, as (identity, entry) pairs
Carried = tuple[list[tuple[str, tuple[str, str, str]]], list[tuple[str, tuple[tuple[Any, ...], Durability]]]]


class GroupCommit:
    """The writes waiting for a commit, by run identity, and the timer that commits them (armed on the running
    event loop; without one they wait for the next write, `flush()` or `close()`)."""

    def __init__(self, flush: Callable[[], None], delay: float = GROUP_COMMIT_DELAY) -> None:
        self._flush = flush
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # identity -> (remote id, transition detail, at); always WITH_NEXT_INTENT
        self.ids: dict[str, tuple[str, str, str]] = {}
        # identity -> (the finish's columns, its durability); a newer finish of a run replaces the older one
        self.finishes: dict[str, tuple[tuple[Any, ...], Durability]] = {}

    @property
    def pending(self) -> bool:
        return bool(self.ids or self.finishes)

    def holds(self, identity: str) -> bool:
        return identity in self.ids or identity in self.finishes

    def add_id(self, identity: str, entry: tuple[str, str, str]) -> None:
        self.ids[identity] = entry
        self._arm()

    def add_finish(self, identity: str, row: tuple[Any, ...], durability: Durability) -> None:
        self.finishes.pop(identity, None)  # re-inserted last: finishes are applied in the order they came
        self.finishes[identity] = (row, durability)
        self._arm()

    def for_commit(self, *, intent_of: str | None) -> Carried:
        """What the next commit carries: everything, or for a start intent of run `intent_of` the ids, the
        finishes due with an intent, and that run's own finish (it must land first)."""
        ids = list(self.ids.items())
        if intent_of is None:
            return ids, list(self.finishes.items())
        due = [(i, f) for i, f in self.finishes.items() if f[1] is Durability.WITH_NEXT_INTENT or i == intent_of]
        return ids, due

    def committed(self, carried: Carried) -> None:
        """Forget what a commit made durable (only once it committed: a rolled-back one is carried again; an
        entry replaced meanwhile is kept)."""
        ids, finishes = carried
        for identity, entry in ids:
            if self.ids.get(identity) is entry:
                del self.ids[identity]
        for identity, finish in finishes:
            if self.finishes.get(identity) is finish:
                del self.finishes[identity]
        if not self.pending:
            self.cancel()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: the next write, flush() or close() commits
            return
        if self._handle is not None and self._loop is loop:
            return
        self.cancel()  # a timer of a loop that has ended never fires
        self._loop = loop
        self._handle = loop.call_later(self._delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        # A commit that fails leaves everything pending: the next write carries it again and raises the error
        # where the caller sees it (as does `flush()` at the end of a batch).
        with contextlib.suppress(ManifestError):
            self._flush()
