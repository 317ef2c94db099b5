"""Files of earlier attempts: before a redo, the superseded attempt's downloads move to a `history` folder beside
them with the attempt number in the name (`out/A1/hero.png` -> `out/A1/history/hero.attempt-1.png`), so the new
attempt takes the current path; and `HistorySource`, a run's past attempts as the review page shows them."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath

from lamina_batch.downloads import prepare_output_path, safe_output_path
from lamina_batch.errors import UnsafePathError
from lamina_batch.models import DownloadRecord, PastAttempt

__all__ = ["HistorySource", "history_path", "move_to_history"]


def history_path(rel_path: str, attempt: int) -> str:
    """Where attempt `attempt`'s file `rel_path` is kept: `history/<stem>.attempt-<n><ext>` in its own folder."""
    p = PurePosixPath(rel_path)
    return str(p.parent / "history" / f"{p.stem}.attempt-{attempt}{p.suffix}")


def move_to_history(base_dir: Path, downloads: Sequence[DownloadRecord], attempt: int) -> tuple[DownloadRecord, ...]:
    """Move each recorded file of `attempt` to its history path (same file system: a rename) and return the
    records as they now are. Idempotent after a crash: a file already moved is found there. A file that is gone
    (deleted by hand) keeps its old record, which then no longer verifies."""
    moved: list[DownloadRecord] = []
    for d in downloads:
        target_rel = history_path(d.path, attempt)
        try:
            src = safe_output_path(base_dir, d.path)
            dst = prepare_output_path(base_dir, target_rel)
        except (UnsafePathError, OSError):
            moved.append(d)
            continue
        try:
            st = src.lstat()
        except OSError:
            moved.append(replace(d, path=target_rel) if dst.is_file() else d)
            continue
        if not stat.S_ISREG(st.st_mode):
            moved.append(d)
            continue
        os.replace(src, dst)
        moved.append(replace(d, path=target_rel))
    return tuple(moved)


class HistorySource:
    """`history(identity)` for the review page: a run's superseded attempts, newest first, read from the
    manifest's `attempts` table. Read once per change of the manifest files (the page asks for every run)."""

    def __init__(self, manifest: Path, pipeline_name: str | None) -> None:
        self._manifest = Path(manifest)
        self._name = pipeline_name
        self._stamp: tuple[int, ...] | None = None
        self._all: dict[str, list[PastAttempt]] = {}

    def __call__(self, identity: str) -> list[PastAttempt]:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            from lamina_batch.manifest import Manifest

            with Manifest.open(self._manifest, pipeline_name=self._name, writer=False, create=False) as m:
                self._all = m.past_attempts()
            self._stamp = stamp
        return list(self._all.get(identity, ()))

    def _file_stamp(self) -> tuple[int, ...]:
        out: list[int] = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(f"{self._manifest}{suffix}")
            except OSError:
                out += [0, 0]
                continue
            out += [st.st_mtime_ns, st.st_size]
        return tuple(out)
