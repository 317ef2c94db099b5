"""Opening manifest files: the one-writer lock (across processes, surviving kill -9) and refusing what is not ours."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import cli_env, run_cli, write_pipeline
from manifest_helpers import NAME, child, make_run

from lamina_batch.emulator import Emulator
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


_MOUNT_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'


def _read_only(folder: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` run with `folder` mounted read-only for it alone (a private user and mount namespace: works as root,
    and without root where user namespaces are allowed)."""
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", _MOUNT_READ_ONLY, "sh", str(folder), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def read_only_media(tmp_path: Path) -> None:
    """Skips the test where a private read-only mount cannot be made."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("unshare") is None or _read_only(probe, "sh", "-c", f"! touch {probe}/x").returncode != 0:
        pytest.skip("needs unshare -rm and mount (user and mount namespaces) for a read-only mount")


def _lamina(pipeline: Path, command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "lamina_batch", command, str(pipeline), *args]


@pytest.mark.usefixtures("read_only_media")
def test_status_plan_and_report_read_a_manifest_on_read_only_media(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """On a read-only mount (no `-shm` can be created) status, plan and report read the manifest and work; none
    calls it foreign."""
    emu = make_emulator()
    pipeline = write_pipeline(tmp_path / "probe", 2, banner=False)
    done = run_cli(pipeline, cli_env(emu))
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    report = tmp_path / "report.csv"  # outside the read-only folder
    for command, *args in (["status"], ["plan"], ["report", "--format", "csv", "-o", str(report)]):
        proc = _read_only(pipeline.parent, *_lamina(pipeline, command, *args), env=env)
        assert proc.returncode == 0, (command, proc.stderr)
        assert "not a lamina-batch manifest" not in proc.stderr
    assert "S001" in report.read_text(encoding="utf-8")
    assert not (pipeline.parent / "pipeline.lamina.sqlite-shm").exists()


@pytest.mark.usefixtures("read_only_media")
def test_a_write_ahead_log_on_read_only_media_is_named_with_the_fix(tmp_path: Path) -> None:
    """A manifest whose writer was killed leaves writes in its `-wal`; on read-only media without its `-shm` the
    reader cannot use that log, and says so and how to read it instead of showing the file without them."""
    folder = tmp_path / "probe"
    mpath = folder / "pipeline.lamina.sqlite"
    proc = child(
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from lamina_batch.manifest import Manifest\n"
        "from manifest_helpers import make_run\n"
        f"m = Manifest.open({str(mpath)!r}, pipeline_name={NAME!r}, writer=True)\n"
        "m.ensure_planned(make_run(1))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc.communicate(timeout=20)
    assert proc.returncode == -9
    assert mpath.with_name(mpath.name + "-wal").stat().st_size > 0
    mpath.with_name(mpath.name + "-shm").unlink()
    code = (
        "import sys\n"
        "from lamina_batch.errors import ManifestError\n"
        "from lamina_batch.manifest import Manifest\n"
        "try:\n"
        f"    Manifest.open({str(mpath)!r}, pipeline_name={NAME!r}, writer=False)\n"
        "except ManifestError as e:\n"
        "    sys.exit(str(e))\n"
    )
    reader = _read_only(folder, sys.executable, "-c", code)
    assert reader.returncode == 1
    assert "-wal" in reader.stderr
    assert "writable storage" in reader.stderr
    assert "not a lamina-batch manifest" not in reader.stderr


def test_an_io_error_is_named_and_never_called_a_foreign_manifest(mpath: Path) -> None:
    """A manifest path SQLite cannot read (here a folder: an I/O error even for root) is reported as an I/O
    problem with SQLite's own words, never as 'not a lamina-batch manifest'."""
    mpath.mkdir()
    for writer_mode in (False, True):
        with pytest.raises(ManifestError) as info:
            Manifest.open(mpath, pipeline_name=NAME, writer=writer_mode)
        text = str(info.value)
        assert "not a lamina-batch manifest" not in text
        assert "cannot" in text
