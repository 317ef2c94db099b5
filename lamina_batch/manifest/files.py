"""Opening a manifest file: the one-writer lock beside it, SQLite connections (WAL, synchronous=FULL for the
writer; read-only, never locking, for readers), integrity and header checks, and migration on open."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from lamina_batch.errors import ManifestError

from .lock import WRITER_META_KEY, WriterLock, acquire_lock
from .schema import SCHEMA_VERSION, apply_migrations, check_header, not_a_manifest, read_header

__all__ = ["acquire_lock", "connect", "empty_connection", "fsync_dir", "open_reader", "open_writer", "read_only"]

BUSY_TIMEOUT_MS = 5000
# quick_check reads every page; past this size it would make `run` slow to start, so it is skipped.
QUICK_CHECK_MAX_BYTES = 64 * 1024 * 1024


def connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves so each write is exactly one transaction
    conn = sqlite3.connect(
        target, uri=uri, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_writer(
    path: Path, pipeline_name: str | None, *, create: bool
) -> tuple[sqlite3.Connection, str | None, WriterLock]:
    """(connection, pipeline name, lock) of the file's one writer: locked, checked, in WAL mode, migrated."""
    if not create and not path.exists():
        raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
    lock = acquire_lock(path)
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(str(path))
        try:
            version, name = read_header(conn, path)
            check_header(path, version, name, pipeline_name)
            if version == 0 and pipeline_name is None:
                raise ValueError("creating a manifest needs its pipeline name")
            if version > 0 and path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise not_a_manifest(path, "integrity check failed: " + "; ".join(problems))
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ManifestError(f"{path}: cannot switch the manifest to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if version < SCHEMA_VERSION:
                apply_migrations(conn, version, pipeline_name=pipeline_name)
            # who writes, for the message of a writer refused through another path to this file
            # (checkpointed into the file: another path to it has its own, empty, `-wal` name)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (WRITER_META_KEY, lock.holder))
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.DatabaseError as e:
            raise _open_error(path, e) from e
    except BaseException:
        if conn is not None:
            conn.close()
        lock.close()
        raise
    return conn, (name if name is not None else pipeline_name), lock


def open_reader(
    path: Path, pipeline_name: str | None, *, create: bool
) -> tuple[sqlite3.Connection, str | None, int] | None:
    """(connection, pipeline name, schema version on disk) of a read-only view, or None for "no manifest yet"
    (when `create`). An older schema is upgraded in a private in-memory copy: the file is not ours to change."""
    if not path.exists():
        if not create:
            raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
        return None
    conn, version, name = read_only(path)
    try:
        try:
            check_header(path, version, name, pipeline_name)
            conn.execute("PRAGMA query_only = ON")
            if version == 0:
                if not create:
                    raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
                conn.close()
                return None
            if version < SCHEMA_VERSION:
                mem = connect(":memory:")
                conn.backup(mem)
                conn.close()
                conn = mem
                apply_migrations(conn, version, pipeline_name=None)
        except sqlite3.DatabaseError as e:
            raise _open_error(path, e) from e
    except BaseException:
        conn.close()
        raise
    return conn, name, version


def read_only(path: Path) -> tuple[sqlite3.Connection, int, str | None]:
    """(connection, schema version, pipeline name) of a read-only connection. A WAL manifest on read-only media
    cannot get its `-shm`: with no write-ahead log waiting beside it, the file is opened immutable instead (no
    locks, no shared memory), which is exact when nothing can write it; with one, say what to do."""
    uri = path.resolve().as_uri()
    try:
        conn = connect(f"{uri}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise _open_error(path, e) from e
    try:
        version, name = read_header(conn, path)
        return conn, version, name
    except sqlite3.DatabaseError as e:
        conn.close()
        if _foreign(e):
            raise not_a_manifest(path, e) from e
        first = e
    except BaseException:
        conn.close()
        raise
    wal = path.with_name(path.name + "-wal")
    try:
        waiting = wal.stat().st_size > 0
    except OSError:
        waiting = False
    if waiting:
        raise ManifestError(
            f"{path}: cannot read the manifest ({_describe(first)}), and its write-ahead log {wal.name} holds "
            "writes it needs; copy the manifest with its -wal file to writable storage and open the copy"
        ) from first
    try:
        conn = connect(f"{uri}?immutable=1", uri=True)
    except sqlite3.Error:
        raise _open_error(path, first) from first
    try:
        version, name = read_header(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise _open_error(path, e if _foreign(e) else first) from e
    except BaseException:
        conn.close()
        raise
    return conn, version, name


# SQLITE_CORRUPT, SQLITE_NOTADB: the bytes are not a (sound) SQLite database. Every other error (I/O, cannot
# open, read-only, busy, full) says nothing about what the file is.
_FOREIGN_CODES = (11, 26)


def _foreign(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is None:
        return isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.OperationalError)
    return (code & 0xFF) in _FOREIGN_CODES


def _describe(e: sqlite3.Error) -> str:
    name = getattr(e, "sqlite_errorname", None)
    return f"{e} [{name}]" if name else str(e)


def _open_error(path: Path, e: sqlite3.Error) -> ManifestError:
    """A manifest that SQLite cannot use: "not a lamina-batch manifest" only when its bytes say so; an I/O error
    is named as one (that message must never invite deleting a good manifest)."""
    if _foreign(e):
        return not_a_manifest(path, e)
    return ManifestError(f"{path}: cannot read the manifest: {_describe(e)} (an I/O or permission problem, not damage)")


def empty_connection(pipeline_name: str | None) -> sqlite3.Connection:
    """An in-memory manifest with today's schema (a reader's view of a file not written yet)."""
    conn = connect(":memory:")
    apply_migrations(conn, 0, pipeline_name=pipeline_name)
    return conn
