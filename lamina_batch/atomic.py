"""Crash-safe file writes shared by reports, downloads, the webhook key cache and `init`.

A file is written to a temporary name beside its target, flushed and fsynced, renamed over the target, and the
directory is fsynced, so a reader (or a resume after a crash) sees either the old file or the whole new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import (single-threaded): changing the umask later, even for an instant, could race a thread.
_FILE_MODE = 0o666 & ~_umask()


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; a no-op where directories cannot be opened."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


@contextlib.contextmanager
def atomic_path(out: Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `out` for the caller (or a library such as XlsxWriter) to write by name: fsynced
    and renamed over `out` only when the block succeeds; on any exception it is removed and `out` is left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file private (0600); the result should have the mode a plain open() would give
        # (a report or a scaffolded pipeline is read by other tools, a web server, the CI artifact uploader).
        os.fchmod(fd, _FILE_MODE)
        os.close(fd)
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(out.parent)


@contextlib.contextmanager
def atomic_text_writer(out: Path, *, newline: str | None = None) -> Iterator[IO[str]]:
    """Write `out` as UTF-8 text through `atomic_path`: the whole new file or the old one, never a torn one."""
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8", newline=newline) as fh:
        yield fh


def write_text_atomic(out: Path, text: str) -> None:
    """`atomic_text_writer` for a whole string."""
    with atomic_text_writer(out) as fh:
        fh.write(text)
