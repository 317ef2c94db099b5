"""The store under a manifest: its one connection and lock, transactions (one per write, or a `batch()`), group
commit of writes accepted with a weaker durability, and the one method through which any run changes state."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from lamina_batch.errors import IllegalTransitionError, ManifestError
from lamina_batch.lifecycle import check_move
from lamina_batch.models import RunState

from .commit import Carried, GroupCommit
from .lock import WriterLock

__all__ = ["Clock", "Store"]

Clock = Callable[[], str]

_INSERT_TRANSITION = "INSERT INTO transitions (identity, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)"


class Store:
    """One open manifest file. Writers hold the lock file for their whole life; readers never lock and see every
    committed write at once (WAL). All writes happen on one connection, serialised by a lock."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        pipeline_name: str | None,
        writer: bool,
        lock: WriterLock | None,
        clock: Clock,
        schema_version: int,
    ) -> None:
        self._path = path
        self._conn = conn
        self._pipeline_name = pipeline_name
        self._writer = writer
        self._lock = lock
        self._clock = clock
        self._schema_version = schema_version
        self._mutex = threading.RLock()
        self._closed = False
        self._depth = 0  # > 0 inside a transaction of this thread (batch)
        self._group = GroupCommit(self.flush)

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the connection, then release the writer lock (in that order: the WAL is checkpointed first)."""
        with self._mutex:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
                self._group.cancel()
            try:
                self._conn.close()
            finally:
                if self._lock is not None:
                    self._lock.close()
                    self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "writer" if self._writer else "reader"
        return f"Manifest({str(self._path)!r}, pipeline={self._pipeline_name!r}, {role})"

    # ----------------------------------------------------------------- properties and meta

    @property
    def path(self) -> Path:
        return self._path

    @property
    def pipeline_name(self) -> str | None:
        return self._pipeline_name

    @property
    def writer(self) -> bool:
        return self._writer

    @property
    def schema_version(self) -> int:
        """Version of the file on disk (0: no file yet, an empty in-memory manifest)."""
        return self._schema_version

    def get_meta(self, key: str) -> str | None:
        with self._read() as c:
            row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        if key in ("schema_version", "pipeline_name"):
            raise ManifestError(f"{self._path}: meta key '{key}' is managed by lamina-batch")
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ----------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            if self._closed:
                raise ManifestError(f"{self._path}: manifest already closed")
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise ManifestError(f"{self._path}: cannot read the manifest ({e})") from e

    def _writable(self) -> None:
        if not self._writer:
            raise ManifestError(f"{self._path}: opened read-only; only the running batch writes the manifest")
        if self._closed:
            raise ManifestError(f"{self._path}: manifest already closed")

    @contextlib.contextmanager
    def _write(self, *, intent_of: str | None = None) -> Iterator[sqlite3.Connection]:
        """One transaction, committed (and fsynced: synchronous=FULL) before the caller's write returns; inside
        `batch()` it joins the batch's transaction instead. Writes waiting in the group commit go first in it
        (for the start intent of run `intent_of`, only those due with an intent: see `Durability`)."""
        with self._mutex:
            self._writable()
            c = self._conn
            if self._depth:
                yield c
                return
            self._depth += 1
            try:
                c.execute("BEGIN IMMEDIATE")
                try:
                    carried = self._apply_group(c, intent_of)
                    yield c
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
                c.execute("COMMIT")
                self._group.committed(carried)
            except sqlite3.Error as e:
                raise ManifestError(f"{self._path}: cannot write the manifest ({e})") from e
            finally:
                self._depth -= 1

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group several writes into one transaction: one fsync instead of one per write (e.g. every run
        finished by one poll sweep). All or nothing; nothing is durable until the block exits, so never put
        a `begin_attempt` and the start request it guards inside the same batch."""
        with self._write():
            yield

    def flush(self) -> None:
        """Commit every write waiting in the group commit now (one transaction, one fsync); a no-op when none."""
        if self._group.pending:
            with self._write():
                pass

    def _flush_for(self, identity: str | None = None) -> None:
        # Reads see waiting writes too: one about `identity` (or any, for queries over many runs) is committed
        # first. The executor never reads a run it has just finished, so this stays rare.
        if not self._group.pending or not self._writer:
            return
        if identity is None or self._group.holds(identity):
            self.flush()

    def _apply_group(self, c: sqlite3.Connection, intent_of: str | None) -> Carried:
        carried = self._group.for_commit(intent_of=intent_of)
        ids, finishes = carried
        for identity, entry in ids:
            self._remote_id_row(c, identity, *entry)
        for _, (row, _) in finishes:
            self._finish_row(c, *row)
        return carried

    # ----------------------------------------------------------------- state changes

    def _state_of(self, c: sqlite3.Connection, identity: str) -> RunState:
        row = c.execute("SELECT state FROM runs WHERE identity = ?", (identity,)).fetchone()
        if row is None:
            raise ManifestError(f"{self._path}: no run {identity} in the manifest")
        return RunState(row[0])

    def _move(
        self,
        c: sqlite3.Connection,
        identity: str,
        old: RunState | None,
        new: RunState,
        *,
        at: str,
        detail: str | None,
        assignments: str = "",
        values: tuple[Any, ...] = (),
    ) -> None:
        """The one place a run changes state: refuses a move `lifecycle.MOVES` lacks (the transaction is rolled
        back, nothing is written), writes the new state with the other columns of the same change (`assignments`:
        `, col = ?` pairs for `values`) and appends the transition to the history. `old` None: the row was just
        inserted in state `new`."""
        try:
            check_move(old, new)
        except IllegalTransitionError as e:
            raise IllegalTransitionError(f"{self._path}: refusing to change run {identity}: {e}") from None
        if old is not None:
            c.execute(
                f"UPDATE runs SET state = ?, updated_at = ?{assignments} WHERE identity = ?",  # noqa: S608
                (new.value, at, *values, identity),
            )
        c.execute(_INSERT_TRANSITION, (identity, None if old is None else old.value, new.value, at, detail))

    def _remote_id_row(self, c: sqlite3.Connection, identity: str, remote_id: str, detail: str, at: str) -> None:
        old = self._state_of(c, identity)
        self._move(
            c, identity, old, RunState.RUNNING, at=at, detail=detail, assignments=", remote_id = ?", values=(remote_id,)
        )
        c.execute(
            "INSERT OR IGNORE INTO remote_ids (remote_id, identity, app_id, at) "
            "SELECT ?, identity, app_id, ? FROM runs WHERE identity = ?",
            (remote_id, at, identity),
        )

    def _finish_row(
        self,
        c: sqlite3.Connection,
        identity: str,
        state: RunState,
        outputs_json: str,
        error: str | None,
        error_code: str | None,
        request_id: str | None,
        remote_duration: float | None,
        at: str,
        detail: str | None,
    ) -> None:
        old = self._state_of(c, identity)
        self._move(
            c,
            identity,
            old,
            state,
            at=at,
            detail=detail,
            assignments=", outputs_json = ?, error = ?, error_code = ?, request_id = ?, remote_duration = ?, "
            "finished_at = ?",
            values=(outputs_json, error, error_code, request_id, remote_duration, at),
        )
