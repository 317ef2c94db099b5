"""Manifests written by earlier releases (tests/fixtures/manifests/vN) open and resume under today's code."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina_batch.emulator import Emulator
from lamina_batch.manifest import SCHEMA_VERSION, Manifest

FIXTURES = Path(__file__).parent / "fixtures" / "manifests"
VERSIONS = sorted(p.name for p in FIXTURES.iterdir() if (p / "manifest.sqlite").is_file())


def _copy(version: str, tmp_path: Path) -> Path:
    dest = tmp_path / version
    shutil.copytree(FIXTURES / version, dest)
    (dest / "manifest.sqlite").rename(dest / "pipeline.lamina.sqlite")
    return dest / "pipeline.yaml"


def test_every_schema_version_before_this_one_has_a_fixture() -> None:
    """Each schema version older than today's has a committed manifest to resume (DESIGN §8)."""
    assert [f"v{n}" for n in range(2, SCHEMA_VERSION)] == [v for v in VERSIONS if int(v[1:]) < SCHEMA_VERSION]


@pytest.mark.parametrize("version", VERSIONS)
def test_old_manifest_opens_read_only_without_changing_the_file(version: str, tmp_path: Path) -> None:
    """A reader opens an old manifest as it is (upgraded in memory only): the file's bytes do not change."""
    pipeline = _copy(version, tmp_path)
    path = pipeline.with_name("pipeline.lamina.sqlite")
    before = path.read_bytes()
    with Manifest.open(path, pipeline_name="legacy", writer=False) as m:
        states = sorted((r.step_id, r.row_key or "", r.state.value) for r in m.iter_runs())
    assert ("hero", "A1", "completed") in states
    assert path.read_bytes() == before


@pytest.mark.parametrize("version", VERSIONS)
def test_old_manifest_resumes_paying_nothing_twice(
    version: str, tmp_path: Path, make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming an old manifest reuses its completed runs, keeps the failed ones, reconciles the crash
    leftover and starts only what never ran: 4 starts, exit 1 (hero A2 failed)."""
    from lamina_batch.cli import main

    pipeline = _copy(version, tmp_path)
    emu = make_emulator()
    monkeypatch.setenv("LAMINA_BASE_URL", emu.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emu.key)
    code = main(["run", str(pipeline), "--no-progress", "--quiet"])
    assert code == 1
    assert emu.stats.starts == 4  # banner A3 (reconciled: nothing was created), hero A5, banners A4 and A5
    assert emu.stats.duplicate_starts() == {}
    db = sqlite3.connect(f"file:{pipeline.with_name('pipeline.lamina.sqlite')}?mode=ro", uri=True)
    try:
        rows = {(s, k): st for s, k, st in db.execute("SELECT step_id, row_key, state FROM runs").fetchall()}
        version_now = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    finally:
        db.close()
    assert int(version_now) == SCHEMA_VERSION
    assert rows[("hero", "A2")] == "failed"
    assert rows[("banner", "A2")] == "failed"
    assert all(st == "completed" for key, st in rows.items() if key[1] != "A2"), rows
    assert len(rows) == 10
