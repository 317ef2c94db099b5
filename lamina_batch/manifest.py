"""The SQLite manifest: a batch's checkpoint (runs, state transitions, webhook deliveries), its schema
migrations, the one-writer lock, and `merge_manifests` for shard manifests. It never holds secrets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import socket
import sqlite3
import statistics
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from lamina_batch.errors import ManifestError, ManifestLockedError
from lamina_batch.models import (
    FINISHED_STATES,
    DownloadRecord,
    PlannedRun,
    RemoteRun,
    RunOutput,
    RunRecord,
    RunState,
)
from lamina_batch.verdicts import create_verdicts_table

__all__ = [
    "MANIFEST_SUFFIX",
    "SCHEMA_VERSION",
    "Manifest",
    "MergeSummary",
    "Transition",
    "default_manifest_path",
    "merge_manifests",
    "utcnow_iso",
]

MANIFEST_SUFFIX = ".lamina.sqlite"
SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 5000
# quick_check reads every page; past this size it would make `run` slow to start, so it is skipped.
QUICK_CHECK_MAX_BYTES = 64 * 1024 * 1024
# The median of recent durations is what adaptive polling needs; old runs say little about today's queue.
DURATION_WINDOW = 200
_PAGE = 500

Clock = Callable[[], str]


def utcnow_iso() -> str:
    """Now as ISO-8601 UTC with milliseconds and `Z` (reconcile compares it with the API's `createdAt`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_manifest_path(pipeline_path: Path) -> Path:
    """`<pipeline stem>.lamina.sqlite` beside the pipeline file."""
    return pipeline_path.with_name(pipeline_path.stem + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class Transition:
    """One row of the append-only state history of a run."""

    id: int
    identity: str
    from_state: RunState | None
    to_state: RunState
    at: str
    detail: str | None


@dataclass(frozen=True)
class MergeSummary:
    """What `merge_manifests` wrote. `conflicts`: rows dropped because another source had the same identity."""

    runs: int
    conflicts: int
    sources: int
    transitions: int = 0
    webhooks: int = 0


# --------------------------------------------------------------------------- schema and migrations

_RUN_COLUMNS = (
    "identity",
    "step_id",
    "app_id",
    "row_number",
    "row_key",
    "item_id",
    "row_json",
    "axes_json",
    "inputs_json",
    "output_labels_json",
    "needs_json",
    "state",
    "remote_id",
    "attempts",
    "created_at",
    "updated_at",
    "submitted_at",
    "finished_at",
    "remote_duration",
    "outputs_json",
    "error",
    "error_code",
    "request_id",
    "downloads_json",
)
_COLS = ", ".join(_RUN_COLUMNS)


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """The core: meta, runs and the transition history."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        """CREATE TABLE runs (
            identity TEXT PRIMARY KEY,
            step_id TEXT NOT NULL,
            app_id TEXT NOT NULL,
            row_number INTEGER NOT NULL,
            row_key TEXT,
            item_id TEXT NOT NULL,
            row_json TEXT NOT NULL,
            axes_json TEXT NOT NULL,
            inputs_json TEXT NOT NULL,
            output_labels_json TEXT,
            needs_json TEXT NOT NULL,
            state TEXT NOT NULL,
            remote_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            submitted_at TEXT,
            finished_at TEXT,
            remote_duration REAL,
            outputs_json TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            error_code TEXT,
            request_id TEXT,
            downloads_json TEXT NOT NULL DEFAULT '[]'
        )"""
    )
    conn.execute("CREATE INDEX runs_step_state ON runs (step_id, state)")
    conn.execute("CREATE INDEX runs_remote_id ON runs (remote_id)")
    conn.execute("CREATE INDEX runs_item_id ON runs (item_id)")
    conn.execute("CREATE INDEX runs_row_number ON runs (row_number)")
    conn.execute(
        """CREATE TABLE transitions (
            id INTEGER PRIMARY KEY,
            identity TEXT NOT NULL REFERENCES runs (identity),
            from_state TEXT,
            to_state TEXT NOT NULL,
            at TEXT NOT NULL,
            detail TEXT
        )"""
    )
    conn.execute("CREATE INDEX transitions_identity ON transitions (identity)")


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Webhook dedup, and every remote id ever assigned (reconcile must not adopt an old attempt's run)."""
    conn.execute(
        """CREATE TABLE webhooks (
            request_id TEXT PRIMARY KEY,
            run_id TEXT,
            status TEXT,
            received_at TEXT NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE remote_ids (
            remote_id TEXT PRIMARY KEY,
            identity TEXT NOT NULL,
            app_id TEXT NOT NULL,
            at TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX remote_ids_app ON remote_ids (app_id)")
    conn.execute("CREATE INDEX runs_app_state ON runs (app_id, state)")
    conn.execute(
        "INSERT OR IGNORE INTO remote_ids (remote_id, identity, app_id, at) "
        "SELECT remote_id, identity, app_id, updated_at FROM runs WHERE remote_id IS NOT NULL"
    )


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Review verdicts (TEMPORARY on the ui branch: the lead renumbers it into the manifest package's
    migrations at merge)."""
    create_verdicts_table(conn)


# version N -> the function that upgrades a version N-1 file to N
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3}
assert sorted(_MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


def _apply_migrations(conn: sqlite3.Connection, current: int, *, pipeline_name: str | None) -> None:
    """Upgrade `current` -> SCHEMA_VERSION in one transaction (a crash leaves the old version intact)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(current + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[version](conn)
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        if pipeline_name is not None:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('pipeline_name', ?)", (pipeline_name,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --------------------------------------------------------------------------- (de)serialisation


# default=str: a value we cannot represent must not abort a batch mid-way; its text is still useful.
# One shared encoder: json.dumps with options builds a new encoder per call, a third of a plan write.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


_OUTPUT_FIELDS = frozenset(f.name for f in dataclasses.fields(RunOutput))
_DOWNLOAD_FIELDS = frozenset(f.name for f in dataclasses.fields(DownloadRecord))


def _outputs_json(outputs: Iterable[RunOutput]) -> str:
    return _dumps([dataclasses.asdict(o) for o in outputs])


def _loads(text: str) -> Any:
    # most JSON columns of most runs are empty; skipping the parser for them halves the cost of a record
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return json.loads(text)


def _load_outputs(text: str) -> tuple[RunOutput, ...]:
    if text == "[]":
        return ()
    return tuple(RunOutput(**{k: v for k, v in d.items() if k in _OUTPUT_FIELDS}) for d in json.loads(text))


def _load_downloads(text: str) -> tuple[DownloadRecord, ...]:
    if text == "[]":
        return ()
    return tuple(DownloadRecord(**{k: v for k, v in d.items() if k in _DOWNLOAD_FIELDS}) for d in json.loads(text))


def _record(row: Sequence[Any]) -> RunRecord:
    labels = json.loads(row[9]) if row[9] is not None else None
    return RunRecord(
        identity=row[0],
        step_id=row[1],
        app_id=row[2],
        row_number=row[3],
        row_key=row[4],
        item_id=row[5],
        row=_loads(row[6]),
        axes=_loads(row[7]),
        inputs=_loads(row[8]),
        output_labels=tuple(labels) if labels is not None else None,
        needs=_loads(row[10]),
        state=RunState(row[11]),
        remote_id=row[12],
        attempts=row[13],
        created_at=row[14],
        updated_at=row[15],
        submitted_at=row[16],
        finished_at=row[17],
        remote_duration=row[18],
        outputs=_load_outputs(row[19]),
        error=row[20],
        error_code=row[21],
        request_id=row[22],
        downloads=_load_downloads(row[23]),
    )


def _plan_values(run: PlannedRun) -> dict[str, Any]:
    """The columns that describe where a run sits in the plan (refreshed when rows move)."""
    return {
        "step_id": run.step_id,
        "app_id": run.app_id,
        "row_number": run.item.row_number,
        "row_key": run.item.key,
        "item_id": run.item.item_id,
        "row_json": _dumps(dict(run.item.row)),
        "axes_json": _dumps(dict(run.item.axes)),
        "output_labels_json": _dumps(list(run.output_labels)) if run.output_labels is not None else None,
        "needs_json": _dumps(dict(run.needs)),
    }


# Column names are constants of this module, never user input, so building SQL from them is safe.
_INSERT_RUN = f"INSERT INTO runs ({_COLS}) VALUES ({', '.join(':' + c for c in _RUN_COLUMNS)})"  # noqa: S608
_SELECT_RUNS = f"SELECT {_COLS} FROM runs"  # noqa: S608
# INDEXED BY: walking row order and filtering keeps each page cheap; a step/state index would need a sort
_SELECT_RUNS_WITH_ROWID = f"SELECT rowid, {_COLS} FROM runs INDEXED BY runs_row_number"  # noqa: S608


def _insert_run(
    c: sqlite3.Connection,
    plan: Mapping[str, Any],
    identity: str,
    *,
    inputs_json: str,
    state: RunState,
    now: str,
) -> None:
    submitting = state is RunState.SUBMITTING
    values: dict[str, Any] = dict.fromkeys(_RUN_COLUMNS)
    values.update(plan)
    values.update(
        identity=identity,
        inputs_json=inputs_json,
        state=state.value,
        attempts=1 if submitting else 0,
        created_at=now,
        updated_at=now,
        submitted_at=now if submitting else None,
        outputs_json="[]",
        downloads_json="[]",
    )
    c.execute(_INSERT_RUN, values)


_POSITION = ("row_number", "row_key", "item_id", "row_json", "axes_json")
_SELECT_POSITION = f"SELECT {', '.join(_POSITION)} FROM runs WHERE identity = ?"  # noqa: S608


def _refresh_position(c: sqlite3.Connection, identity: str, plan: Mapping[str, Any], current: Sequence[Any]) -> None:
    """Rows can move (inserted, reordered, non-input columns edited) without changing a run's identity;
    keep where the run sits now, for reports, writing only when something changed."""
    wanted = tuple(plan[col] for col in _POSITION)
    if tuple(current) != wanted:
        c.execute(
            f"UPDATE runs SET {', '.join(col + ' = ?' for col in _POSITION)} WHERE identity = ?",  # noqa: S608
            (*wanted, identity),
        )


# --------------------------------------------------------------------------- opening helpers


def _not_a_manifest(path: Path, why: object) -> ManifestError:
    return ManifestError(f"{path} is not a lamina-batch manifest ({why})")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _acquire_lock(path: Path) -> int:
    """Take the writer lock beside `path` and record who holds it; the fd stays open for the writer's life."""
    lock_path = _lock_path(path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ManifestError(f"{path}: cannot create the lock file {lock_path} ({e.strerror})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ManifestLockedError(str(path), holder or "another process") from None
        raise ManifestError(f"{path}: cannot lock {lock_path} ({e.strerror})") from e
    holder = f"pid {os.getpid()} on {socket.gethostname()} (since {utcnow_iso()})"
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    return fd


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves so each write is exactly one transaction
    conn = sqlite3.connect(
        target, uri=uri, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _read_header(conn: sqlite3.Connection, path: Path) -> tuple[int, str | None]:
    """(schema version, pipeline name); version 0 means an empty database (nothing created yet)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        if tables:
            raise _not_a_manifest(path, "it is an SQLite database without lamina-batch tables")
        return 0, None
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    try:
        version = int(meta["schema_version"])
    except (KeyError, ValueError):
        raise _not_a_manifest(path, "no schema version recorded") from None
    return version, meta.get("pipeline_name")


def _check_header(path: Path, version: int, name: str | None, expected: str | None) -> None:
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has manifest schema version {version}, but this lamina-batch only knows up to "
            f"version {SCHEMA_VERSION}; upgrade lamina-batch to use it"
        )
    if expected is not None and name is not None and name != expected:
        raise ManifestError(
            f"{path} belongs to pipeline '{name}', not '{expected}'; pass --manifest with another file, "
            "or delete it to start over"
        )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the manifest


class Manifest:
    """One open manifest. Writers hold the lock file for their whole life; readers never lock and see every
    committed write at once (WAL). All writes happen on one connection, serialised by a lock."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        pipeline_name: str | None,
        writer: bool,
        lock_fd: int | None,
        clock: Clock,
        schema_version: int,
    ) -> None:
        self._path = path
        self._conn = conn
        self._pipeline_name = pipeline_name
        self._writer = writer
        self._lock_fd = lock_fd
        self._clock = clock
        self._schema_version = schema_version
        self._mutex = threading.RLock()
        self._durations: dict[str, deque[float]] = {}
        self._closed = False
        self._depth = 0  # > 0 inside a transaction of this thread (batch)
        # finish(defer=True) rows not yet written, by identity; they ride along with the next transaction
        self._deferred: dict[str, tuple[Any, ...]] = {}
        self._pending_ids: dict[str, tuple[str, str, str]] = {}  # identity -> (remote id, detail, at)

    # ----------------------------------------------------------------- opening and closing

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        pipeline_name: str | None,
        writer: bool,
        create: bool = True,
        clock: Clock = utcnow_iso,
    ) -> Manifest:
        """Open (a writer also creates) the manifest at `path`.

        writer=True takes the lock (ManifestLockedError naming the holder), creates or migrates the file.
        writer=False never locks or writes. A missing file gives an empty in-memory manifest when `create`,
        else ManifestError("no manifest at PATH yet"); an older schema is migrated in a private in-memory copy.
        `pipeline_name=None` skips the name check (merge, tools); a writer creating a file needs the name.
        Corrupt files, other pipelines and newer schemas raise ManifestError.
        """
        path = Path(path)
        if writer:
            return cls._open_writer(path, pipeline_name, create=create, clock=clock)
        return cls._open_reader(path, pipeline_name, create=create, clock=clock)

    @classmethod
    def _open_writer(cls, path: Path, pipeline_name: str | None, *, create: bool, clock: Clock) -> Manifest:
        if not create and not path.exists():
            raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
        lock_fd = _acquire_lock(path)
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(str(path))
            try:
                version, name = _read_header(conn, path)
                _check_header(path, version, name, pipeline_name)
                if version == 0 and pipeline_name is None:
                    raise ValueError("creating a manifest needs its pipeline name")
                if version > 0 and path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
                    problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
                    if problems != ["ok"]:
                        raise _not_a_manifest(path, "integrity check failed: " + "; ".join(problems))
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ManifestError(f"{path}: cannot switch the manifest to WAL mode (got {mode})")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
                if version < SCHEMA_VERSION:
                    _apply_migrations(conn, version, pipeline_name=pipeline_name)
                name = name if name is not None else pipeline_name
            except sqlite3.DatabaseError as e:
                raise _not_a_manifest(path, e) from e
        except BaseException:
            if conn is not None:
                conn.close()
            os.close(lock_fd)
            raise
        return cls(
            path, conn, pipeline_name=name, writer=True, lock_fd=lock_fd, clock=clock, schema_version=SCHEMA_VERSION
        )

    @classmethod
    def _open_reader(cls, path: Path, pipeline_name: str | None, *, create: bool, clock: Clock) -> Manifest:
        if not path.exists():
            if not create:
                raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
            return cls._empty(path, pipeline_name, clock)
        try:
            conn = _connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as e:
            raise ManifestError(f"{path}: cannot open the manifest ({e})") from e
        try:
            try:
                version, name = _read_header(conn, path)
                _check_header(path, version, name, pipeline_name)
                conn.execute("PRAGMA query_only = ON")
                if version == 0:
                    if not create:
                        raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
                    conn.close()
                    return cls._empty(path, pipeline_name, clock)
                if version < SCHEMA_VERSION:
                    # the file is not ours to change: upgrade a private copy so every read sees one schema
                    mem = _connect(":memory:")
                    conn.backup(mem)
                    conn.close()
                    conn = mem
                    _apply_migrations(conn, version, pipeline_name=None)
            except sqlite3.DatabaseError as e:
                raise _not_a_manifest(path, e) from e
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, pipeline_name=name, writer=False, lock_fd=None, clock=clock, schema_version=version)

    @classmethod
    def _empty(cls, path: Path, pipeline_name: str | None, clock: Clock) -> Manifest:
        conn = _connect(":memory:")
        _apply_migrations(conn, 0, pipeline_name=pipeline_name)
        return cls(path, conn, pipeline_name=pipeline_name, writer=False, lock_fd=None, clock=clock, schema_version=0)

    def close(self) -> None:
        """Close the connection, then release the writer lock (in that order: the WAL is checkpointed first)."""
        with self._mutex:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
            try:
                self._conn.close()
            finally:
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def __enter__(self) -> Manifest:
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

    @contextlib.contextmanager
    def _write(self, *, finishes: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction, committed (and fsynced: synchronous=FULL) before the caller's write returns;
        inside `batch()` it joins the batch's transaction instead. Remote ids set with `defer=True` go first
        in it; deferred finishes too unless `finishes=False` (an intent commit keeps them off its path)."""
        if not self._writer:
            raise ManifestError(f"{self._path}: opened read-only; only the running batch writes the manifest")
        with self._mutex:
            if self._closed:
                raise ManifestError(f"{self._path}: manifest already closed")
            c = self._conn
            if self._depth:
                yield c
                return
            self._depth += 1
            try:
                c.execute("BEGIN IMMEDIATE")
                try:
                    ids = self._apply_pending_ids(c)
                    applied = self._apply_deferred(c) if finishes else []
                    yield c
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
                c.execute("COMMIT")
                # only once committed: a rolled back transaction is applied again next time
                for identity in ids:
                    self._pending_ids.pop(identity, None)
                for identity in applied:
                    self._deferred.pop(identity, None)
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
        """Write every deferred `finish` and remote id now (one transaction, one fsync); a no-op when none is
        pending."""
        if self._deferred or self._pending_ids:
            with self._write():
                pass

    def _flush_for(self, identity: str | None = None) -> None:
        # Reads see deferred writes too: one about `identity` (or any, for queries over many runs) is
        # written first. The executor never reads a run it has just finished, so this stays rare.
        if not (self._deferred or self._pending_ids) or not self._writer:
            return
        if identity is None or identity in self._deferred or identity in self._pending_ids:
            self.flush()

    def _apply_pending_ids(self, c: sqlite3.Connection) -> list[str]:
        if not self._pending_ids:
            return []
        applied = list(self._pending_ids)
        for identity in applied:
            self._remote_id_row(c, identity, *self._pending_ids[identity])
        return applied

    def _apply_deferred(self, c: sqlite3.Connection) -> list[str]:
        if not self._deferred:
            return []
        applied = list(self._deferred)
        for identity in applied:
            self._finish_row(c, *self._deferred[identity])
        return applied

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
        now: str,
    ) -> str:
        old = self._state_of(c, identity)
        cur = c.execute(
            "UPDATE runs SET state = ?, outputs_json = ?, error = ?, error_code = ?, request_id = ?, "
            "remote_duration = ?, finished_at = ?, updated_at = ? WHERE identity = ? RETURNING app_id",
            (state.value, outputs_json, error, error_code, request_id, remote_duration, now, now, identity),
        )
        app_id = str(cur.fetchone()[0])
        self._transition(c, identity, old, state, now, _detail(error_code, error))
        return app_id

    def _state_of(self, c: sqlite3.Connection, identity: str) -> RunState:
        row = c.execute("SELECT state FROM runs WHERE identity = ?", (identity,)).fetchone()
        if row is None:
            raise ManifestError(f"{self._path}: no run {identity} in the manifest")
        return RunState(row[0])

    @staticmethod
    def _transition(
        c: sqlite3.Connection, identity: str, old: RunState | None, new: RunState, at: str, detail: str | None
    ) -> None:
        c.execute(
            "INSERT INTO transitions (identity, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)",
            (identity, None if old is None else old.value, new.value, at, detail),
        )

    # ----------------------------------------------------------------- writes

    def ensure_planned(self, run: PlannedRun) -> RunRecord:
        """Insert `run` as pending if absent; if present, refresh where it sits in the plan (row moved)."""
        self.ensure_planned_many((run,))
        record = self.get(run.identity)
        assert record is not None
        return record

    def ensure_planned_many(self, runs: Iterable[PlannedRun]) -> int:
        """`ensure_planned` for many runs in one transaction; returns how many were new."""
        now = self._clock()
        new = 0
        with self._write() as c:
            for run in runs:
                plan = _plan_values(run)
                row = c.execute(_SELECT_POSITION, (run.identity,)).fetchone()
                if row is None:
                    _insert_run(
                        c, plan, run.identity, inputs_json=_dumps(dict(run.inputs)), state=RunState.PENDING, now=now
                    )
                    self._transition(c, run.identity, None, RunState.PENDING, now, None)
                    new += 1
                else:
                    _refresh_position(c, run.identity, plan, row)
        return new

    def begin_attempt(self, run: PlannedRun, inputs: Mapping[str, Any]) -> RunRecord:
        """Record the intent to start `run` with `inputs` (-> submitting, attempts+1), committed before the
        start request goes out. Refuses a run that is running or completed: that would pay twice."""
        now = self._clock()
        plan = _plan_values(run)
        inputs_json = _dumps(dict(inputs))
        # Deferred finishes of other runs stay off the intent's commit (it is on the one-start-per-app path);
        # this run's own deferred finish must land first, or it would still read as running.
        with self._write(finishes=run.identity in self._deferred) as c:
            row = c.execute(
                "SELECT state, remote_id, attempts, created_at FROM runs WHERE identity = ?", (run.identity,)
            ).fetchone()
            if row is None:
                old: RunState | None = None
                attempts = 1
                created = now
                _insert_run(c, plan, run.identity, inputs_json=inputs_json, state=RunState.SUBMITTING, now=now)
            else:
                old = RunState(row[0])
                if old in (RunState.RUNNING, RunState.COMPLETED):
                    raise ManifestError(
                        f"{self._path}: refusing to start run {run.identity} again: it is {old.value}"
                        + (f" as remote run {row[1]}" if row[1] else "")
                    )
                attempts = int(row[2]) + 1
                created = row[3]
                # indexed columns are left alone unless they changed: each index entry rewritten costs WAL pages
                c.execute(
                    "UPDATE runs SET state = ?, attempts = ?, submitted_at = ?, updated_at = ?, inputs_json = ?, "
                    "remote_id = NULL, error = NULL, error_code = NULL, request_id = NULL, finished_at = NULL, "
                    "remote_duration = NULL, outputs_json = '[]', downloads_json = '[]', "
                    "output_labels_json = ?, needs_json = ? WHERE identity = ?",
                    (
                        RunState.SUBMITTING.value,
                        attempts,
                        now,
                        now,
                        inputs_json,
                        plan["output_labels_json"],
                        plan["needs_json"],
                        run.identity,
                    ),
                )
                _refresh_position(c, run.identity, plan, c.execute(_SELECT_POSITION, (run.identity,)).fetchone())
            self._transition(c, run.identity, old, RunState.SUBMITTING, now, f"attempt {attempts}")
        # Built from what was just written rather than read back: this is on the one-start-per-app path.
        return RunRecord(
            identity=run.identity,
            step_id=plan["step_id"],
            app_id=plan["app_id"],
            row_number=plan["row_number"],
            row_key=plan["row_key"],
            item_id=plan["item_id"],
            row=_loads(plan["row_json"]),
            axes=_loads(plan["axes_json"]),
            inputs=_loads(inputs_json),
            output_labels=tuple(run.output_labels) if run.output_labels is not None else None,
            needs=_loads(plan["needs_json"]),
            state=RunState.SUBMITTING,
            attempts=attempts,
            created_at=created,
            updated_at=now,
            submitted_at=now,
        )

    def set_remote_id(
        self, identity: str, remote_id: str, remote: RemoteRun | None = None, *, defer: bool = False
    ) -> None:
        """The start reply arrived: remember the remote id (-> running), committed at once.

        `defer=True`: committed by the next write transaction instead (or `flush()`), which the executor uses
        when the next start of the same app is about to commit its intent: one fsync for both, and that
        start cannot be sent before this id is durable. A crash in between leaves this run `submitting`,
        which resume reconciles like any start whose reply was lost."""
        now = self._clock()
        detail = f"remote {remote_id}" + (f" {remote.status}" if remote is not None else "")
        if defer:
            if not self._writer:
                raise ManifestError(f"{self._path}: opened read-only; only the running batch writes the manifest")
            with self._mutex:
                if self._closed:
                    raise ManifestError(f"{self._path}: manifest already closed")
                self._pending_ids[identity] = (remote_id, detail, now)
            return
        with self._write(finishes=False) as c:
            self._pending_ids.pop(identity, None)
            self._remote_id_row(c, identity, remote_id, detail, now)

    def _remote_id_row(self, c: sqlite3.Connection, identity: str, remote_id: str, detail: str, now: str) -> None:
        old = self._state_of(c, identity)
        c.execute(
            "UPDATE runs SET remote_id = ?, state = ?, updated_at = ? WHERE identity = ?",
            (remote_id, RunState.RUNNING.value, now, identity),
        )
        c.execute(
            "INSERT OR IGNORE INTO remote_ids (remote_id, identity, app_id, at) "
            "SELECT ?, identity, app_id, ? FROM runs WHERE identity = ?",
            (remote_id, now, identity),
        )
        self._transition(c, identity, old, RunState.RUNNING, now, detail)

    def finish(
        self,
        identity: str,
        state: RunState,
        *,
        outputs: Sequence[RunOutput] = (),
        error: str | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        remote_duration: float | None = None,
        defer: bool = False,
        app_id: str | None = None,
    ) -> None:
        """The run reached a finished state (completed, failed, cancelled, timed_out, unknown).

        `defer=True` (with the run's `app_id`): not committed now but with the next write transaction or
        `flush()` (reads of the run flush it first; `close()` flushes). Only for a finish that losing in a
        crash costs nothing but a status request on resume: the run stays `running` with its remote id."""
        state = RunState(state)
        if state not in FINISHED_STATES:
            raise ValueError(f"finish() needs a finished state, not {state.value}; use set_state()")
        if not self._writer:
            raise ManifestError(f"{self._path}: opened read-only; only the running batch writes the manifest")
        now = self._clock()
        row = (identity, state, _outputs_json(outputs), error, error_code, request_id, remote_duration, now)
        if defer and app_id is not None:
            with self._mutex:
                if self._closed:
                    raise ManifestError(f"{self._path}: manifest already closed")
                self._deferred.pop(identity, None)  # a newer finish of the same run replaces the older one
                self._deferred[identity] = row
        else:
            with self._write() as c:
                self._deferred.pop(identity, None)
                app_id = self._finish_row(c, *row)
        if state is RunState.COMPLETED and remote_duration is not None:
            window = self._durations.get(app_id)
            if window is not None:
                window.append(remote_duration)

    def set_state(
        self,
        identity: str,
        state: RunState,
        *,
        error: str | None = None,
        error_code: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Any other transition (e.g. back to pending before a restart, or to unknown after a lost start)."""
        state = RunState(state)
        now = self._clock()
        with self._write() as c:
            old = self._state_of(c, identity)
            c.execute(
                "UPDATE runs SET state = ?, error = ?, error_code = ?, updated_at = ?, finished_at = ? "
                "WHERE identity = ?",
                (state.value, error, error_code, now, now if state.finished else None, identity),
            )
            self._transition(c, identity, old, state, now, detail if detail is not None else _detail(error_code, error))

    def add_download(self, identity: str, download: DownloadRecord) -> None:
        """Record a written output file (replacing any earlier record of the same output index)."""
        with self._write() as c:
            row = c.execute("SELECT downloads_json FROM runs WHERE identity = ?", (identity,)).fetchone()
            if row is None:
                raise ManifestError(f"{self._path}: no run {identity} in the manifest")
            kept = [d for d in json.loads(row[0]) if d.get("output_index") != download.output_index]
            kept.append(dataclasses.asdict(download))
            kept.sort(key=lambda d: d.get("output_index", 0))
            c.execute(
                "UPDATE runs SET downloads_json = ?, updated_at = ? WHERE identity = ?",
                (_dumps(kept), self._clock(), identity),
            )

    def clear_downloads(self, identity: str) -> None:
        with self._write() as c:
            self._state_of(c, identity)
            c.execute(
                "UPDATE runs SET downloads_json = '[]', updated_at = ? WHERE identity = ?", (self._clock(), identity)
            )

    def record_webhook(self, request_id: str, run_id: str | None, status: str | None) -> bool:
        """Remember a webhook delivery; False if this request id was seen before (a redelivery)."""
        with self._write() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO webhooks (request_id, run_id, status, received_at) VALUES (?, ?, ?, ?)",
                (request_id, run_id, status, self._clock()),
            )
            return cur.rowcount == 1

    # ----------------------------------------------------------------- reads

    def get(self, identity: str) -> RunRecord | None:
        self._flush_for(identity)
        with self._read() as c:
            row = c.execute(_SELECT_RUNS + " WHERE identity = ?", (identity,)).fetchone()
        return None if row is None else _record(row)

    def get_many(self, identities: Iterable[str]) -> dict[str, RunRecord]:
        self._flush_for()
        wanted = list(dict.fromkeys(identities))
        found: dict[str, RunRecord] = {}
        for i in range(0, len(wanted), _PAGE):
            chunk = wanted[i : i + _PAGE]
            with self._read() as c:
                rows = c.execute(_SELECT_RUNS + f" WHERE identity IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
            for row in rows:
                found[row[0]] = _record(row)
        return found

    def iter_runs(
        self, step_id: str | None = None, states: Iterable[RunState | str] | None = None
    ) -> Iterator[RunRecord]:
        """Every run ordered by row number, then insertion (step) order; streamed in pages, so it neither
        holds the whole manifest in memory nor keeps a read transaction open between pages."""
        self._flush_for()
        where: list[str] = []
        params: list[Any] = []
        if step_id is not None:
            where.append("step_id = ?")
            params.append(step_id)
        if states is not None:
            values = [RunState(s).value for s in states]
            if not values:
                return
            where.append(f"state IN ({', '.join('?' * len(values))})")
            params.extend(values)
        last: tuple[int, int] | None = None
        while True:
            clauses = list(where)
            page_params = list(params)
            if last is not None:
                # a row-value comparison lets SQLite walk the row_number index (which ends in rowid)
                clauses.append("(row_number, rowid) > (?, ?)")
                page_params.extend(last)
            sql = _SELECT_RUNS_WITH_ROWID
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += f" ORDER BY row_number, rowid LIMIT {_PAGE}"
            with self._read() as c:
                rows = c.execute(sql, page_params).fetchall()
            for row in rows:
                yield _record(row[1:])
            if len(rows) < _PAGE:
                return
            last = (rows[-1][4], rows[-1][0])

    def by_remote_id(self, remote_id: str) -> RunRecord | None:
        """The run that has (or, for an earlier attempt, had) this remote id."""
        self._flush_for()
        with self._read() as c:
            row = c.execute(_SELECT_RUNS + " WHERE remote_id = ? LIMIT 1", (remote_id,)).fetchone()
            if row is None:
                row = c.execute(
                    _SELECT_RUNS + " WHERE identity = (SELECT identity FROM remote_ids WHERE remote_id = ?)",  # noqa: S608
                    (remote_id,),
                ).fetchone()
        return None if row is None else _record(row)

    def known_remote_ids(self, app_id: str) -> set[str]:
        """Every remote id this manifest ever recorded for `app_id` (reconcile adopts only the others)."""
        self._flush_for()
        with self._read() as c:
            rows = c.execute(
                "SELECT remote_id FROM remote_ids WHERE app_id = ? "
                "UNION SELECT remote_id FROM runs WHERE app_id = ? AND remote_id IS NOT NULL",
                (app_id, app_id),
            ).fetchall()
        return {r[0] for r in rows}

    def counts(self) -> dict[str, dict[RunState, int]]:
        """Per step (in the order steps first appear), the number of runs in every state (zeros included)."""
        self._flush_for()
        with self._read() as c:
            rows = c.execute("SELECT step_id, state, COUNT(*), MIN(rowid) FROM runs GROUP BY step_id, state").fetchall()
        first: dict[str, int] = {}
        for step, _, _, seq in rows:
            first[step] = min(first.get(step, seq), seq)
        result: dict[str, dict[RunState, int]] = {
            step: dict.fromkeys(RunState, 0) for step in sorted(first, key=first.__getitem__)
        }
        for step, state, n, _ in rows:
            result[step][RunState(state)] = n
        return result

    def transitions(self, identity: str) -> list[Transition]:
        self._flush_for(identity)
        with self._read() as c:
            rows = c.execute(
                "SELECT id, identity, from_state, to_state, at, detail FROM transitions "
                "WHERE identity = ? ORDER BY at, id",
                (identity,),
            ).fetchall()
        return [
            Transition(r[0], r[1], None if r[2] is None else RunState(r[2]), RunState(r[3]), r[4], r[5]) for r in rows
        ]

    def median_duration(self, app_id: str) -> float | None:
        """Median remote duration of the app's last completed runs (at most DURATION_WINDOW), or None."""
        return self.duration_quantile(app_id, 0.5)

    def duration_quantile(self, app_id: str, q: float) -> float | None:
        """The `q` quantile (0.5: the median; else nearest rank) of the app's last completed runs' remote
        durations (at most DURATION_WINDOW of them), or None before any."""
        window = self._durations.get(app_id)
        if window is None:
            self._flush_for()
            with self._read() as c:
                rows = c.execute(
                    "SELECT remote_duration FROM runs WHERE app_id = ? AND state = ? "
                    "AND remote_duration IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                    (app_id, RunState.COMPLETED.value, DURATION_WINDOW),
                ).fetchall()
            window = deque((float(r[0]) for r in reversed(rows)), maxlen=DURATION_WINDOW)
            if self._writer:
                # only the writer sees every new completion, so only its window stays current
                self._durations[app_id] = window
        if not window:
            return None
        if q == 0.5:
            return statistics.median(window)
        ranked = sorted(window)
        return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


def _detail(error_code: str | None, error: str | None) -> str | None:
    text = ": ".join(x for x in (error_code, error) if x)
    return text[:500] or None


# --------------------------------------------------------------------------- merge

_RANK = (
    "CASE {} WHEN 'completed' THEN 5 WHEN 'running' THEN 4 WHEN 'submitting' THEN 3 WHEN 'pending' THEN 1 ELSE 2 END"
)
_RANK_NEW, _RANK_OLD = _RANK.format("excluded.state"), _RANK.format("runs.state")
_MERGE_UPSERT = " ".join(
    [
        f"INSERT INTO runs ({_COLS}) VALUES ({', '.join('?' * len(_RUN_COLUMNS))})",  # noqa: S608
        "ON CONFLICT (identity) DO UPDATE SET",
        ", ".join(f"{col} = excluded.{col}" for col in _RUN_COLUMNS[1:]),
        f"WHERE {_RANK_NEW} > {_RANK_OLD} OR ({_RANK_NEW} = {_RANK_OLD}",
        "AND COALESCE(excluded.updated_at, '') > COALESCE(runs.updated_at, ''))",
    ]
)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def merge_manifests(sources: Sequence[Path | str], dest: Path | str) -> MergeSummary:
    """Combine shard manifests into `dest`, written atomically. Where an identity is in several sources the
    more advanced state wins (completed > running > submitting > failed/cancelled/timed_out/unknown > pending,
    then the later updated_at); transitions, remote ids and webhook deliveries are unioned."""
    dest = Path(dest)
    paths = [Path(s) for s in sources]
    if not paths:
        raise ManifestError("merge needs at least one source manifest")
    for p in paths:
        if _same_file(p, dest):
            raise ManifestError(f"{dest} is also a source; write the merge to a new file")
    opened: list[Manifest] = []
    try:
        for p in paths:
            opened.append(Manifest.open(p, pipeline_name=None, writer=False, create=False))
        name = opened[0].pipeline_name
        for p, m in zip(paths[1:], opened[1:], strict=True):
            if m.pipeline_name != name:
                raise ManifestError(
                    f"{p} belongs to pipeline '{m.pipeline_name}', but {paths[0]} to '{name}'; "
                    "only shards of one pipeline can be merged"
                )
        # hold dest's writer lock while replacing it, so no batch is writing the file we swap out
        lock_fd = _acquire_lock(dest)
        try:
            return _build_merge(opened, dest, name)
        finally:
            os.close(lock_fd)
    finally:
        for m in opened:
            m.close()


def _build_merge(sources: Sequence[Manifest], dest: Path, name: str | None) -> MergeSummary:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = _connect(str(tmp))
        try:
            # a crash mid-build only loses the temp file, so the build itself needs no journal
            conn.execute("PRAGMA journal_mode = MEMORY")
            conn.execute("PRAGMA synchronous = OFF")
            _apply_migrations(conn, 0, pipeline_name=name)
            total = transitions = 0
            conn.execute("BEGIN IMMEDIATE")
            for src in sources:
                with src._read() as s:
                    total += s.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                    conn.executemany(_MERGE_UPSERT, s.execute(_SELECT_RUNS + " ORDER BY row_number, rowid"))
                    before = conn.total_changes
                    conn.executemany(
                        "INSERT INTO transitions (identity, from_state, to_state, at, detail) "
                        "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM transitions t WHERE t.identity = ?1 "
                        "AND t.from_state IS ?2 AND t.to_state = ?3 AND t.at = ?4 AND t.detail IS ?5)",
                        s.execute("SELECT identity, from_state, to_state, at, detail FROM transitions ORDER BY id"),
                    )
                    transitions += conn.total_changes - before
                    conn.executemany(
                        "INSERT OR IGNORE INTO remote_ids (remote_id, identity, app_id, at) VALUES (?, ?, ?, ?)",
                        s.execute("SELECT remote_id, identity, app_id, at FROM remote_ids"),
                    )
                    conn.executemany(
                        "INSERT OR IGNORE INTO webhooks (request_id, run_id, status, received_at) VALUES (?, ?, ?, ?)",
                        s.execute("SELECT request_id, run_id, status, received_at FROM webhooks"),
                    )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('merged_from', ?)",
                (_dumps([str(m.path) for m in sources]),),
            )
            conn.execute("COMMIT")
            runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            webhooks = conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0]
        finally:
            conn.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # a stale WAL beside the old file would be replayed into the new one: drop it first
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest.with_name(dest.name + suffix))
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return MergeSummary(
        runs=runs, conflicts=total - runs, sources=len(sources), transitions=transitions, webhooks=webhooks
    )
