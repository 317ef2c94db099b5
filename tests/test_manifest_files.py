"""Opening manifest files: the one-writer lock (across processes, surviving kill -9) and refusing what is not ours."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from manifest_helpers import NAME, child, make_run

from lamina_batch.errors import ManifestError, ManifestLockedError
from lamina_batch.manifest import Manifest
from lamina_batch.models import RunState


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


@pytest.mark.parametrize("ending", ["exit", "kill -9"])
def test_second_writer_in_another_process_is_refused_naming_the_pid(mpath: Path, ending: str) -> None:
    """While another process holds the writer lock a writer gets ManifestLockedError naming its pid; the lock
    goes with the process, even one killed with -9 mid-run, and its committed writes survive."""
    proc = child(
        "import sys\n"
        "from lamina_batch.manifest import Manifest\n"
        "from lamina_batch.models import MatrixItem, PlannedRun\n"
        f"m = Manifest.open({str(mpath)!r}, pipeline_name={NAME!r}, writer=True)\n"
        "item = MatrixItem(row_number=1, row={}, axes={}, key=None, item_id='i1')\n"
        "m.begin_attempt(PlannedRun('hero-1', 'hero', 'app_7Hk2', item, {}, None), {'Prompt': 'x'})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "m.close()\n"
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(ManifestLockedError) as info:
            Manifest.open(mpath, pipeline_name=NAME, writer=True)
        assert f"pid {proc.pid} on " in str(info.value)
        assert info.value.path == str(mpath)
        if ending == "kill -9":
            proc.kill()
    finally:
        proc.communicate(timeout=20)
    assert proc.returncode == (0 if ending == "exit" else -9)
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        rec = m.get("hero-1")
        assert rec is not None
        assert (rec.state, rec.inputs) == (RunState.SUBMITTING, {"Prompt": "x"})


def test_second_writer_in_the_same_process_is_refused(writer: Manifest, mpath: Path) -> None:
    """The lock is per open, so even this process cannot open a second writer; closing releases it."""
    with pytest.raises(ManifestLockedError, match=f"pid {os.getpid()}"):
        Manifest.open(mpath, pipeline_name=NAME, writer=True)
    writer.close()
    Manifest.open(mpath, pipeline_name=NAME, writer=True).close()


@pytest.mark.parametrize("writer_mode", [True, False])
def test_non_sqlite_file_is_refused(mpath: Path, writer_mode: bool) -> None:
    """A file that is not SQLite is refused as 'not a lamina-batch manifest', by writers and readers."""
    mpath.write_bytes(b"sku,name\nA1,Mug\n" * 200)
    with pytest.raises(ManifestError, match="is not a lamina-batch manifest"):
        Manifest.open(mpath, pipeline_name=NAME, writer=writer_mode)


def test_foreign_sqlite_database_is_refused(mpath: Path) -> None:
    """An SQLite database with other tables is not mistaken for an empty manifest."""
    raw = sqlite3.connect(mpath)
    raw.execute("CREATE TABLE customers (id INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(ManifestError, match="without lamina-batch tables"):
        Manifest.open(mpath, pipeline_name=NAME, writer=True)


def test_damaged_manifest_is_refused_by_the_integrity_check(mpath: Path) -> None:
    """A manifest with a clobbered data page (header and schema intact) is refused when a writer opens it."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        m.ensure_planned_many(make_run(n) for n in range(1, 400))
    data = bytearray(mpath.read_bytes())
    page = len(data) // 4096 // 2  # a page in the middle: only a check of every page finds it
    data[page * 4096 : (page + 1) * 4096] = b"\xff" * 4096
    mpath.write_bytes(bytes(data))
    for _ in range(2):  # the failed open released the lock: the second attempt is refused the same way
        with pytest.raises(ManifestError, match=r"is not a lamina-batch manifest.*malformed"):
            Manifest.open(mpath, pipeline_name=NAME, writer=True)


def test_manifest_of_another_pipeline_is_refused(mpath: Path) -> None:
    """Opening another pipeline's manifest names both pipelines and the fix."""
    Manifest.open(mpath, pipeline_name="other-batch", writer=True).close()
    for writer_mode in (True, False):
        with pytest.raises(ManifestError) as info:
            Manifest.open(mpath, pipeline_name=NAME, writer=writer_mode)
        text = str(info.value)
        assert "'other-batch'" in text
        assert f"'{NAME}'" in text
        assert "--manifest" in text
        assert "delete" in text
