"""Opening a manifest file: the one-writer lock beside it, SQLite connections (WAL, synchronous=FULL for the
writer; read-only, never locking, for readers), integrity and header checks, and migration on open."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sqlite3
from pathlib import Path

from lamina_batch.errors import ManifestError, ManifestLockedError
from lamina_batch.times import utcnow_iso

from .schema import SCHEMA_VERSION, apply_migrations, check_header, not_a_manifest, read_header

__all__ = ["acquire_lock", "connect", "empty_connection", "fsync_dir", "open_reader", "open_writer"]

BUSY_TIMEOUT_MS = 5000
# quick_check reads every page; past this size it would make `run` slow to start, so it is skipped.
QUICK_CHECK_MAX_BYTES = 64 * 1024 * 1024


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def acquire_lock(path: Path) -> int:
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


def open_writer(path: Path, pipeline_name: str | None, *, create: bool) -> tuple[sqlite3.Connection, str | None, int]:
    """(connection, pipeline name, lock fd) of the file's one writer: locked, checked, in WAL mode, migrated."""
    if not create and not path.exists():
        raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
    lock_fd = acquire_lock(path)
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
        except sqlite3.DatabaseError as e:
            raise not_a_manifest(path, e) from e
    except BaseException:
        if conn is not None:
            conn.close()
        os.close(lock_fd)
        raise
    return conn, (name if name is not None else pipeline_name), lock_fd


def open_reader(
    path: Path, pipeline_name: str | None, *, create: bool
) -> tuple[sqlite3.Connection, str | None, int] | None:
    """(connection, pipeline name, schema version on disk) of a read-only view, or None for "no manifest yet"
    (when `create`). An older schema is upgraded in a private in-memory copy: the file is not ours to change."""
    if not path.exists():
        if not create:
            raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
        return None
    try:
        conn = connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise ManifestError(f"{path}: cannot open the manifest ({e})") from e
    try:
        try:
            version, name = read_header(conn, path)
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
            raise not_a_manifest(path, e) from e
    except BaseException:
        conn.close()
        raise
    return conn, name, version


def empty_connection(pipeline_name: str | None) -> sqlite3.Connection:
    """An in-memory manifest with today's schema (a reader's view of a file not written yet)."""
    conn = connect(":memory:")
    apply_migrations(conn, 0, pipeline_name=pipeline_name)
    return conn
