"""The schema: migrations of older files (in place for the writer, in memory for readers), newer ones refused."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from manifest_helpers import NAME

from lamina_batch.errors import ManifestError
from lamina_batch.manifest import SCHEMA_VERSION, Manifest
from lamina_batch.manifest.schema import MIGRATIONS
from lamina_batch.models import RunState


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


def test_newer_schema_is_refused(mpath: Path) -> None:
    """A manifest written by a newer lamina-batch is refused, naming both schema versions."""
    Manifest.open(mpath, pipeline_name=NAME, writer=True).close()
    raw = sqlite3.connect(mpath)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    for writer_mode in (True, False):
        with pytest.raises(ManifestError, match=f"version 99.*version {SCHEMA_VERSION}"):
            Manifest.open(mpath, pipeline_name=NAME, writer=writer_mode)


def write_v1_fixture(path: Path) -> None:
    """A schema-1 manifest (before webhooks and remote-id history) holding one running run."""
    raw = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[1](raw)
    raw.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('pipeline_name', ?)", (NAME,))
    raw.execute(
        "INSERT INTO runs (identity, step_id, app_id, row_number, row_key, item_id, row_json, axes_json, "
        "inputs_json, output_labels_json, needs_json, state, remote_id, attempts, created_at, updated_at) "
        "VALUES ('hero-1', 'hero', 'app_7Hk2', 1, NULL, 'item1', '{}', '{}', '{}', NULL, '{}', 'running', "
        "'r_v1', 1, '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')"
    )
    raw.close()


def test_v1_manifest_is_migrated_by_the_writer(mpath: Path) -> None:
    """A writer upgrades a v1 file in place, keeping its runs and backfilling the remote-id history."""
    write_v1_fixture(mpath)
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.get_meta("schema_version") == str(SCHEMA_VERSION)
        rec = m.get("hero-1")
        assert rec is not None
        assert rec.state is RunState.RUNNING
        assert m.known_remote_ids("app_7Hk2") == {"r_v1"}
        assert m.record_webhook("req", "r_v1", "completed") is True


def test_v1_manifest_is_readable_without_being_changed(mpath: Path) -> None:
    """A reader upgrades a private in-memory copy of an old file and leaves the file at its version."""
    write_v1_fixture(mpath)
    with Manifest.open(mpath, pipeline_name=NAME, writer=False) as m:
        assert m.schema_version == 1
        assert m.known_remote_ids("app_7Hk2") == {"r_v1"}
    raw = sqlite3.connect(mpath)
    try:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    finally:
        raw.close()
