"""The manifest's one-writer lock: flock on the database file itself (its inode), so any two paths to one file (a
hard link, a bind mount, a symlink) exclude each other, plus the lock file beside it that older versions take.
Who holds it is written in the lock file and in the manifest's meta ('writer') for the refusal's message."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sqlite3
import threading
from pathlib import Path

from lamina_batch.errors import ManifestError, ManifestLockedError
from lamina_batch.times import utcnow_iso

__all__ = ["WRITER_META_KEY", "WriterLock", "acquire_lock", "holder_text"]

WRITER_META_KEY = "writer"

# Inodes this process holds: a second writer here is refused before it opens the file, because closing any
# descriptor of a file drops every POSIX lock this process holds on it, SQLite's own included.
_held: dict[tuple[int, int], str] = {}
_held_mutex = threading.Lock()


def _side_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def holder_text() -> str:
    """How this process names itself to a writer it keeps out."""
    return f"pid {os.getpid()} on {socket.gethostname()} (since {utcnow_iso()})"


class WriterLock:
    """Both locks of one writer; `close()` releases them (after the SQLite connection is closed)."""

    def __init__(self, key: tuple[int, int], file_fd: int, side_fd: int, holder: str) -> None:
        self._key = key
        self._fds: list[int] = [file_fd, side_fd]
        self.holder = holder

    def close(self) -> None:
        with _held_mutex:
            _held.pop(self._key, None)
        while self._fds:
            os.close(self._fds.pop())


def _read_holder(path: Path) -> str | None:
    """The writer recorded in the manifest's meta, or None when it cannot be read (any reason: this is a hint).
    Read immutable: the writer may hold the log under another name (`-wal` files go by path), so only the
    database file is read, and nothing is created beside this name; the writer checkpoints the entry there."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True, timeout=1)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (WRITER_META_KEY,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])


def _take_side_lock(path: Path, holder: str) -> int:
    side = _side_path(path)
    try:
        fd = os.open(side, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ManifestError(f"{path}: cannot create the lock file {side} ({e.strerror})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            other = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ManifestLockedError(str(path), other or "another process") from None
        raise ManifestError(f"{path}: cannot lock {side} ({e.strerror})") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    return fd


def _take_file_lock(path: Path) -> tuple[tuple[int, int], int]:
    """flock on the database file; retried when the file was replaced (a merge) between open and lock."""
    for _ in range(5):
        with _held_mutex:
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            except OSError as e:
                raise ManifestError(f"{path}: cannot read the manifest ({e.strerror})") from e
            if st is not None and (st.st_dev, st.st_ino) in _held:
                raise ManifestLockedError(str(path), _held[(st.st_dev, st.st_ino)])
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ManifestError(f"{path}: cannot open the manifest to lock it ({e.strerror})") from e
        fst = os.fstat(fd)
        key = (fst.st_dev, fst.st_ino)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ManifestLockedError(str(path), _read_holder(path) or "another process") from None
            raise ManifestError(f"{path}: cannot lock the manifest ({e.strerror})") from e
        try:
            now = path.stat()
        except OSError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == key:
            return key, fd
        os.close(fd)  # the name points at another file now: lock that one
    raise ManifestError(f"{path}: the file keeps being replaced; is another tool rewriting it?")


def acquire_lock(path: Path) -> WriterLock:
    """Take the writer lock of the manifest at `path` (creating an empty file if there is none) and record the
    holder; ManifestLockedError naming the other writer when it is held, through this path or any other."""
    holder = holder_text()
    side_fd = _take_side_lock(path, holder)
    try:
        key, file_fd = _take_file_lock(path)
    except BaseException:
        os.close(side_fd)
        raise
    with _held_mutex:
        _held[key] = holder
    return WriterLock(key, file_fd, side_fd, holder)
