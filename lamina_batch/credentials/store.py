"""Keeping a rotated OAuth pair in the stored login: the lock beside the file (fcntl, shared by every lamina-batch
process using it), the note of the refresh token last presented, and the write-back (the whole file to a temp
file beside its target, fsync, rename, mode 0600, through symlinks), with roll-forward of a write cut short."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina_batch.atomic import fsync_dir
from lamina_batch.crash import crashpoint
from lamina_batch.credentials.login_file import LoginFile, parse_document, read_login_file, render
from lamina_batch.errors import CredentialsFileError, LoginRefreshError, Problem

LOCK_TIMEOUT = 120.0  # a holder is bounded by the refresh's own timeouts (connect 10 s x3, read 30 s)
_UNWRITABLE_ADVICE = "make it writable, or set LAMINA_API_KEY"
_NO_ALLOCATE = frozenset({errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})


def fingerprint(token: str) -> str:
    """A one-way tag for a refresh token, so the lock file can say which one was presented without holding it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:24]


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@dataclass(frozen=True)
class Note:
    """What the lock file remembers: the refresh token last presented and the temp file its pair goes to."""

    presented: str
    pending: str


class LoginStore:
    """The stored login file (`path`, maybe a symlink) and the lock beside its target."""

    def __init__(
        self,
        path: Path,
        *,
        lock_timeout: float = LOCK_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._lock_timeout = lock_timeout
        self._sleep = sleep
        self._monotonic = monotonic

    def __repr__(self) -> str:
        return f"LoginStore({str(self.path)!r})"

    @property
    def target(self) -> Path:
        """The file itself: writes go to the symlink's target so the link stays a link."""
        return Path(os.path.realpath(self.path))

    @property
    def lock_path(self) -> Path:
        target = self.target
        return target.with_name(target.name + ".lock")

    def read(self) -> LoginFile:
        return read_login_file(self.path)

    def writable_problem(self) -> str | None:
        """Why a rotated pair could not be written here, or None (a cheap check; the write itself is the proof)."""
        folder = self.target.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{self.path}: cannot be written (its directory {folder} is not writable)"
        return None

    def check_writable(self) -> None:
        """CredentialsFileError (exit 2 before any start) when an OAuth login here could not be kept."""
        problem = self.writable_problem()
        if problem is not None:
            raise CredentialsFileError(
                Problem(problem + ", so an OAuth login cannot be refreshed", hint=_UNWRITABLE_ADVICE)
            )

    def unwritable(self, exc: OSError, what: str, *, rotated: bool = False) -> LoginRefreshError:
        if rotated:  # the server has already replaced the pair: the one it issued could not be kept
            return LoginRefreshError(f"{self.path}: {what} ({_reason(exc)}), so the refreshed login is lost")
        return LoginRefreshError(
            f"{self.path}: {what} ({_reason(exc)}), so the login was not refreshed", advice=_UNWRITABLE_ADVICE
        )

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[LockedStore]:
        """Hold the lock beside the file (polled, so the event loop keeps running while another process holds it)."""
        lock_path = self.lock_path
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self.unwritable(exc, f"cannot create the lock file {lock_path.name}") from None
        try:
            await self._acquire(fd, lock_path)
        except BaseException:
            os.close(fd)
            raise
        try:
            yield LockedStore(self, fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    async def _acquire(self, fd: int, lock_path: Path) -> None:
        deadline = self._monotonic() + self._lock_timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if self._monotonic() >= deadline:
                    raise LoginRefreshError(
                        f"{lock_path}: still held by another process after {self._lock_timeout:g} s",
                        advice="stop the process holding it, or set LAMINA_API_KEY",
                    ) from None
            await self._sleep(delay)
            delay = min(delay * 2, 0.05)


class LockedStore:
    """What may be done while holding the lock: re-read the file, consult and write the note, write back."""

    def __init__(self, store: LoginStore, fd: int) -> None:
        self.store = store
        self._fd = fd
        self._target = store.target

    def read(self) -> LoginFile:
        """The file as it is now, after rolling forward a rotated pair whose write was cut short; temp files of
        earlier writes are removed (no other lamina-batch process writes one while we hold the lock)."""
        current = self.store.read()
        note = self.note()
        login = current.login
        # Only while the file still holds the refresh token last presented is that refresh's temp file news.
        if note is not None and login is not None and login.refresh_token is not None:
            pending = self._target.with_name(note.pending)
            if fingerprint(login.refresh_token) == note.presented and self._complete(pending, note):
                try:
                    os.replace(pending, self._target)
                except OSError as exc:  # keep the temp file (and the pair in it) for a later try
                    raise self.store.unwritable(exc, "the pair of an interrupted refresh cannot be put back") from None
                fsync_dir(self._target.parent)
                current = self.store.read()
        self._sweep()
        return current

    def _complete(self, pending: Path, note: Note) -> bool:
        # Only a whole document parses (a cut write is a prefix, or ends in preallocated zeros), and only one
        # holding a different refresh token than the one presented is that refresh's result.
        try:
            document = json.loads(pending.read_bytes().decode("utf-8"))
            login, _ = parse_document(document, pending)
        except (OSError, ValueError, CredentialsFileError):
            return False
        fresh = login.refresh_token if login is not None else None
        return fresh is not None and fingerprint(fresh) != note.presented

    def presented_before(self, refresh_token: str) -> bool:
        """True when this refresh token was already presented by a lamina-batch process (its reply never stored)."""
        note = self.note()
        return note is not None and note.presented == fingerprint(refresh_token)

    def note(self) -> Note | None:
        try:
            raw = os.pread(self._fd, 4096, 0)
            data: Any = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        presented, pending = data.get("presented"), data.get("pending")
        if not isinstance(presented, str) or not isinstance(pending, str):
            return None
        if "/" in pending or not pending.startswith(self._prefix()):
            return None  # only ever a temp file of ours beside the target
        return Note(presented, pending)

    def write_note(self, note: Note | None) -> None:
        """Record (before it is sent) which refresh token is being presented; None clears it (nothing was sent)."""
        payload = b""
        if note is not None:
            payload = json.dumps({"presented": note.presented, "pending": note.pending, "pid": os.getpid()}).encode()
        try:
            os.ftruncate(self._fd, 0)
            if payload:
                os.pwrite(self._fd, payload, 0)
            os.fsync(self._fd)
        except OSError as exc:
            raise self.store.unwritable(exc, f"cannot write the lock file {self.store.lock_path.name}") from None

    def begin_write(self, size_hint: int) -> PendingWrite:
        """Open the temp file the new pair will go to, with room reserved: if this fails, nothing is rotated."""
        try:
            fd, name = tempfile.mkstemp(prefix=self._prefix(), suffix=".tmp", dir=self._target.parent)
        except OSError as exc:
            raise self.store.unwritable(exc, "cannot be written") from None
        pending = PendingWrite(self.store, fd, Path(name), self._target)
        try:
            os.fchmod(fd, 0o600)
            try:
                os.posix_fallocate(fd, 0, max(size_hint, 1))
            except OSError as exc:
                if exc.errno not in _NO_ALLOCATE:
                    raise
        except OSError as exc:
            pending.discard()
            raise self.store.unwritable(exc, "cannot be written") from None
        return pending

    def _sweep(self) -> None:
        prefix = self._prefix()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._target.parent):
                if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _prefix(self) -> str:
        return f".{self._target.name}.lamina-batch."


class PendingWrite:
    """The temp file a rotated pair is written to, then renamed over the target."""

    def __init__(self, store: LoginStore, fd: int, path: Path, target: Path) -> None:
        self.store = store
        self.path = path
        self._fd: int | None = fd
        self._target = target

    def commit(self, document: dict[str, Any]) -> None:
        """Write the whole document, fsync, rename over the target, fsync the directory."""
        data = render(document)
        fd = self._fd
        assert fd is not None
        try:
            os.ftruncate(fd, len(data))  # keeps what fallocate reserved up to the new length
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                offset += os.pwrite(fd, view[offset:], offset)
            os.fsync(fd)
        except OSError as exc:
            self.discard()
            raise self.store.unwritable(exc, "the new pair could not be written", rotated=True) from None
        os.close(fd)
        self._fd = None
        crashpoint("refresh-write")
        try:
            os.replace(self.path, self._target)
        except OSError as exc:
            # The temp file is whole: the next refresh under the lock rolls it forward (LockedStore.read).
            raise self.store.unwritable(exc, "the new pair could not be renamed into place", rotated=True) from None
        fsync_dir(self._target.parent)

    def discard(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self.path.unlink()
