"""Tests for lamina_batch.verdicts: the verdicts table in a real manifest file, beside a running batch's writer,
history/latest/undo, upgrading an older manifest, and the verdicts.json format."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from review_helpers import Run, write_runs

from lamina_batch.errors import ConfigError, ManifestError
from lamina_batch.manifest import Manifest, merge_manifests
from lamina_batch.verdicts import (
    VerdictStore,
    copy_verdicts,
    create_verdicts_table,
    export_document,
    normalise_time,
    parse_document,
    rejected_attempts,
)

FIXTURE_V2 = Path(__file__).parent / "fixtures" / "manifests" / "v2"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "p.lamina.sqlite"
    write_runs(path, tmp_path, [Run("hero", n, {"sku": f"S{n}"}, key=f"S{n}") for n in (1, 2, 3)])
    return path


def test_record_latest_and_history(manifest: Path) -> None:
    """Every verdict is kept; the latest (by time, then order) is the one in force per run attempt."""
    with VerdictStore.open(manifest, pipeline_name="catalogue") as store:
        store.record("hero-1", 1, "approved", at="2026-01-01T10:00:00Z")
        store.record("hero-1", 1, "rejected", "cropped", at="2026-01-01T10:05:00Z")
        store.record("hero-2", 1, "approved")
        store.record("hero-1", 2, "approved", at="2026-01-01T09:00:00Z")
        latest = store.latest()
        assert latest[("hero-1", 1)].verdict == "rejected"
        assert latest[("hero-1", 1)].note == "cropped"
        assert latest[("hero-1", 2)].verdict == "approved"
        assert latest[("hero-2", 1)].source == "review"
        assert [v.verdict for v in store.history("hero-1")] == ["approved", "rejected", "approved"]
        # an older time recorded later does not win: the time decides
        store.record("hero-1", 1, "approved", at="2026-01-01T10:01:00Z")
        assert store.latest()[("hero-1", 1)].verdict == "rejected"


def test_undo_restores_the_previous_verdict_and_keeps_history(manifest: Path) -> None:
    """Undo marks the verdict in force undone (history kept) and the one before it is in force again."""
    with VerdictStore.open(manifest) as store:
        store.record("hero-1", 1, "approved")
        store.record("hero-1", 1, "rejected", "blurry")
        undone, now = store.undo("hero-1", 1)
        assert undone is not None
        assert undone.verdict == "rejected"
        assert undone.undone_at is not None
        assert now is not None
        assert now.verdict == "approved"
        assert store.latest()[("hero-1", 1)].verdict == "approved"
        assert store.undo("hero-1", 1)[1] is None
        assert ("hero-1", 1) not in store.latest()
        assert store.undo("hero-1", 1) == (None, None)
        assert len(store.history("hero-1")) == 2
        assert all(v.undone_at for v in store.history("hero-1"))


def test_verdicts_survive_reopening_and_bad_values_are_refused(manifest: Path) -> None:
    """A recorded verdict is in the file for the next connection; unknown verdicts and attempts < 1 raise."""
    with VerdictStore.open(manifest) as store:
        store.record("hero-3", 1, "rejected", "x\x00y\x1b[31m" + "n" * 5000)
        with pytest.raises(ValueError, match="approved, rejected"):
            store.record("hero-3", 1, "meh")
        with pytest.raises(ValueError, match="attempt"):
            store.record("hero-3", 0, "approved")
    with VerdictStore.open(manifest, writable=False) as ro:
        v = ro.latest()[("hero-3", 1)]
        assert v.note is not None
        assert v.note.startswith("x y [31m")
        assert len(v.note) == 2000
        with pytest.raises(ManifestError, match="read-only"):
            ro.record("hero-3", 1, "approved")


def test_writes_beside_a_running_batch_never_need_its_lock(manifest: Path) -> None:
    """While a batch holds the writer lock (and keeps writing), verdicts are recorded and the batch goes on."""
    with Manifest.open(manifest, pipeline_name="catalogue", writer=True) as batch:
        with VerdictStore.open(manifest, pipeline_name="catalogue") as store:
            store.record("hero-1", 1, "rejected")
            batch.set_meta("touched", "yes")
            store.record("hero-2", 1, "approved")
            batch.set_meta("touched", "again")
            assert len(store.latest()) == 2
        assert batch.get_meta("touched") == "again"


def test_store_upgrades_an_older_manifest_and_a_reader_leaves_it_alone(tmp_path: Path) -> None:
    """A v2 manifest (no verdicts table): a read-only store sees no verdicts and changes nothing; a writable
    one upgrades the file exactly as a batch would, after which the batch's reader sees the new schema."""
    path = tmp_path / "m.sqlite"
    shutil.copy(FIXTURE_V2 / "manifest.sqlite", path)
    before = path.read_bytes()
    with VerdictStore.open(path, writable=False) as ro:
        assert ro.latest() == {}
    assert path.read_bytes() == before
    with VerdictStore.open(path) as store:
        store.record("anything", 1, "approved")
    with Manifest.open(path, pipeline_name=None, writer=False) as m:
        assert m.schema_version >= 3
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 1
    raw.close()


def test_open_refuses_what_is_not_this_pipelines_manifest(tmp_path: Path, manifest: Path) -> None:
    """A missing file, another pipeline's manifest, and a non-manifest database are ManifestErrors."""
    with pytest.raises(ManifestError, match="no manifest"):
        VerdictStore.open(tmp_path / "missing.sqlite")
    with pytest.raises(ManifestError, match="belongs to pipeline 'catalogue'"):
        VerdictStore.open(manifest, pipeline_name="other")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.close()
    with pytest.raises(ManifestError, match="not a lamina-batch manifest"):
        VerdictStore.open(other, writable=False)


def test_upgrade_while_an_older_batch_holds_the_lock_says_why(tmp_path: Path) -> None:
    """If the file still lacks the table and its writer lock is held, the store explains instead of waiting."""
    path = tmp_path / "m.sqlite"
    shutil.copy(FIXTURE_V2 / "manifest.sqlite", path)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(ManifestError, match="older lamina-batch"):
            VerdictStore.open(path)
    finally:
        os.close(fd)


def test_copy_verdicts_unions_without_duplicates(tmp_path: Path, manifest: Path) -> None:
    """For merge: rows of two sources combine, the same row twice counts once."""
    with VerdictStore.open(manifest) as store:
        store.record("hero-1", 1, "rejected", at="2026-01-01T00:00:00Z")
    dest = sqlite3.connect(":memory:")
    create_verdicts_table(dest)
    src = sqlite3.connect(manifest)
    assert copy_verdicts(src, dest) == 1
    assert copy_verdicts(src, dest) == 0
    assert copy_verdicts(sqlite3.connect(":memory:"), dest) == 0
    src.close()


def test_merge_of_shards_is_not_broken_by_the_new_table(tmp_path: Path, manifest: Path) -> None:
    """Manifests with a verdicts table still merge (verdicts are not carried yet: see copy_verdicts)."""
    with VerdictStore.open(manifest) as store:
        store.record("hero-1", 1, "rejected")
    summary = merge_manifests([manifest], tmp_path / "all.sqlite")
    assert summary.runs == 3


# --------------------------------------------------------------------------- verdicts.json


def test_times_normalise_to_utc_milliseconds() -> None:
    """Offsets become Z, precision milliseconds; a time without an offset is refused."""
    assert normalise_time("2026-01-01T12:00:00+02:00") == "2026-01-01T10:00:00.000Z"
    assert normalise_time("2026-01-01T10:00:00.123456Z") == "2026-01-01T10:00:00.123Z"
    with pytest.raises(ValueError, match="offset"):
        normalise_time("2026-01-01T10:00:00")


def test_document_round_trip(manifest: Path) -> None:
    """export_document writes the agreed shape, and parse_document reads it back."""
    with (
        VerdictStore.open(manifest) as store,
        Manifest.open(manifest, pipeline_name="catalogue", writer=False) as m,
    ):
        v = store.record("hero-2", 1, "rejected", "wrong colour")
        doc = export_document("catalogue", [(v, m.get("hero-2")), (v, None)], exported_at="2026-01-01T00:00:00.000Z")
    assert doc["pipeline"] == "catalogue"
    assert doc["verdicts"][0] == {
        "identity": "hero-2",
        "attempt": 1,
        "verdict": "rejected",
        "note": "wrong colour",
        "at": v.at,
        "step": "hero",
        "row_number": 2,
        "row_key": "S2",
    }
    assert doc["verdicts"][1]["step"] is None
    parsed = parse_document(json.dumps(doc), source="v.json")
    assert parsed.pipeline == "catalogue"
    assert parsed.verdicts[0].identity == "hero-2"
    assert parsed.verdicts[0].row_key == "S2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "v.json: not valid JSON"),
        ("[]", "v.json: verdicts: a verdicts file is an object"),
        ('{"verdicts": []}', "v.json: pipeline: missing"),
        ('{"pipeline": "p", "verdicts": [1]}', r"v.json: verdicts\[0\]: must be an object"),
        (
            '{"pipeline": "p", "verdicts": [{"identity": "i", "attempt": 1, "verdict": "ok", "at": "x"}]}',
            r"v.json: verdicts\[0\].verdict: unknown verdict 'ok' \(approved or rejected\)",
        ),
        (
            '{"pipeline": "p", "verdicts": [{"identity": "i", "attempt": "1", "verdict": "approved"}]}',
            r'verdicts\[0\].attempt: must be a whole number \(got "1"\)',
        ),
        (
            '{"pipeline": "p", "verdicts": [{"identity": "i", "attempt": 1, "verdict": "approved", "at": "yday"}]}',
            r"verdicts\[0\].at: not an ISO-8601 time",
        ),
        (
            '{"pipeline": "p", "verdicts": [{"identity": "i", "attempt": 0, "verdict": "approved", "at": "x"}]}',
            r"verdicts\[0\].attempt: must be 1 or more",
        ),
    ],
)
def test_bad_documents_name_the_file_and_entry(text: str, message: str) -> None:
    """Every shape error is one ConfigError naming the file and the entry's path."""
    with pytest.raises(ConfigError, match=message):
        parse_document(text, source="v.json")


def test_rejected_is_the_newest_rejected_attempt_in_force(manifest: Path, tmp_path: Path) -> None:
    """`rejected()` maps each run to its newest attempt whose verdict in force is rejected; an approval after a
    rejection clears it; no manifest yet means nothing is rejected."""
    with VerdictStore.open(manifest, pipeline_name="catalogue") as store:
        store.record("hero-1", 1, "rejected", at="2026-01-01T10:00:00Z")
        store.record("hero-1", 2, "rejected", at="2026-01-01T11:00:00Z")
        store.record("hero-2", 1, "rejected", at="2026-01-01T10:00:00Z")
        store.record("hero-2", 1, "approved", at="2026-01-01T10:05:00Z")
        store.record("hero-3", 1, "approved")
        assert store.rejected() == {"hero-1": 2}
    assert rejected_attempts(manifest, "catalogue") == {"hero-1": 2}
    assert rejected_attempts(tmp_path / "none.sqlite") == {}
