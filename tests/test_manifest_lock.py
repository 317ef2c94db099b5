"""The one-writer lock on the manifest file itself: any two paths to one file (hard link, symlink) exclude each
other, in one process, across processes, and for two real `run`s; readers work beside the writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import assert_exactly_once, cli_env, start_cli, wait_for, write_pipeline
from manifest_helpers import NAME, child, make_run

from lamina_batch.emulator import Emulator
from lamina_batch.errors import ManifestLockedError
from lamina_batch.manifest import Manifest
from lamina_batch.verdicts import VerdictStore


@pytest.mark.parametrize("kind", ["hard link", "symlink"])
def test_a_second_path_to_the_file_cannot_open_a_second_writer(tmp_path: Path, kind: str) -> None:
    """A writer through a hard link or a symlink to a held manifest is refused naming this process, while readers
    and verdict writes go on beside it; once the first closes, the second path opens."""
    path = tmp_path / "m.sqlite"
    other = tmp_path / "other.sqlite"
    with Manifest.open(path, pipeline_name=NAME, writer=True) as m:
        m.ensure_planned(make_run(1))
        if kind == "hard link":
            os.link(path, other)
        else:
            other.symlink_to(path)
        with pytest.raises(ManifestLockedError, match=f"pid {os.getpid()} on "):
            Manifest.open(other, pipeline_name=NAME, writer=True)
        with Manifest.open(path, pipeline_name=NAME, writer=False) as reader:
            assert reader.get("hero-1") is not None
        with VerdictStore.open(path) as verdicts:  # review's verdicts are written beside the writer
            verdicts.record("hero-1", 1, "rejected", at="2026-01-01T00:00:00Z")
    with Manifest.open(other, pipeline_name=NAME, writer=True) as m2:
        assert m2.get("hero-1") is not None


def test_a_writer_in_another_process_keeps_out_a_hard_link_and_is_named(tmp_path: Path) -> None:
    """Another process writing through one name: a writer through a hard link gets ManifestLockedError naming
    that process (its pid, from the manifest's meta), and the side lock file of the link plays no part."""
    path = tmp_path / "m.sqlite"
    Manifest.open(path, pipeline_name=NAME, writer=True).close()
    link = tmp_path / "link.sqlite"
    os.link(path, link)
    proc = child(
        "import sys\n"
        "from lamina_batch.manifest import Manifest\n"
        f"m = Manifest.open({str(path)!r}, pipeline_name={NAME!r}, writer=True)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "m.close()\n"
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(ManifestLockedError) as info:
            Manifest.open(link, pipeline_name=NAME, writer=True)
        assert f"pid {proc.pid} on " in str(info.value)
    finally:
        proc.communicate(timeout=20)
    assert proc.returncode == 0
    Manifest.open(link, pipeline_name=NAME, writer=True).close()


def test_two_runs_through_a_hard_link_pay_for_nothing_twice(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """`run` through a hard link to the manifest of a running `run` exits 3 naming that process and starts
    nothing; `status` and `plan` read the manifest beside the writer; every run is started exactly once."""
    emu = make_emulator(duration=(2.0, 2.0))
    pipeline = write_pipeline(tmp_path, 6, banner=False, concurrency=2)
    env = cli_env(emu)
    manifest = tmp_path / "m.sqlite"
    link = tmp_path / "link.sqlite"
    first = start_cli(pipeline, env, "--manifest", str(manifest))
    try:
        wait_for(lambda: emu.stats.starts >= 1, 30, "a start")
        os.link(manifest, link)
        second = subprocess.run(
            [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress", "--manifest", str(link)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 3, second.stderr
        assert f"pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
        for command in ("status", "plan"):
            reader = subprocess.run(
                [sys.executable, "-m", "lamina_batch", command, str(pipeline), "--manifest", str(manifest)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert reader.returncode in (0, 3), (command, reader.stderr)
            assert "Traceback" not in reader.stderr
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
            first.communicate(timeout=30)
    assert_exactly_once(emu, 6)
