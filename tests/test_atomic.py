"""Crash-safe writes: the target holds the old content or the whole new one, never a part."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lamina_batch.atomic import atomic_text_writer, write_text_atomic


def test_write_replaces_the_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    """A successful write replaces the target and leaves no temporary file beside it."""
    target = tmp_path / "sub" / "report.txt"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text(encoding="utf-8") == "second"
    assert [p.name for p in target.parent.iterdir()] == ["report.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    """An exception while writing removes the temp file and leaves the old content in place."""
    target = tmp_path / "report.txt"
    write_text_atomic(target, "old")

    def write_half() -> None:
        with atomic_text_writer(target) as fh:
            fh.write("half of the new")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_half()
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_written_file_gets_the_mode_a_plain_open_would(tmp_path: Path) -> None:
    """The result is readable as umask allows (0644 under umask 022), not private like mkstemp's temp file."""
    mask = os.umask(0o022)
    os.umask(mask)
    out = tmp_path / "report.html"
    write_text_atomic(out, "<html></html>")
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
