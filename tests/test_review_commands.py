"""Tests for lamina_batch.review.commands: `--approve/--reject ROW[:STEP]`, `--list`, `--import`, the export and
the rejected runs a redo starts again, over real manifest files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from review_helpers import Run, write_runs

from lamina_batch.errors import ConfigError, ManifestError
from lamina_batch.manifest import Manifest
from lamina_batch.models import RunState
from lamina_batch.review import (
    export_verdicts,
    import_verdicts,
    list_reviews,
    mark,
    rejected_runs,
    render_review_list,
    resolve_target,
)
from lamina_batch.verdicts import VerdictStore

NAME = "catalogue"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Rows A1 (two aspect ratios, hero + banner), B2 (hero completed, banner failed), C3 (hero running)."""
    path = tmp_path / "p.lamina.sqlite"
    a1, b2, c3 = {"sku": "A1"}, {"sku": "B2"}, {"sku": "C3"}
    runs = [
        Run("hero", 1, a1, key="A1", axes={"aspect": "1:1"}),
        Run("banner", 1, a1, key="A1", axes={"aspect": "1:1"}),
        Run("hero", 1, a1, key="A1", axes={"aspect": "16:9"}),
        Run("banner", 1, a1, key="A1", axes={"aspect": "16:9"}),
        Run("hero", 2, b2, key="B2"),
        Run("banner", 2, b2, key="B2", state=RunState.FAILED, error="upstream"),
        Run("hero", 3, c3, key="C3", state=RunState.RUNNING),
    ]
    write_runs(path, tmp_path, runs, name=NAME)
    return path


def records(manifest: Path) -> list:  # type: ignore[type-arg]
    with Manifest.open(manifest, pipeline_name=NAME, writer=False) as m:
        return list(m.iter_runs())


def test_targets_by_key_number_step_and_axes(manifest: Path) -> None:
    """ROW is the key or #N; with axes it is every combination; STEP narrows to one step."""
    recs = records(manifest)
    assert {r.identity for r in resolve_target(recs, "A1")} == {
        "hero-1-aspect1:1",
        "banner-1-aspect1:1",
        "hero-1-aspect16:9",
        "banner-1-aspect16:9",
    }
    assert {r.identity for r in resolve_target(recs, "A1:hero")} == {"hero-1-aspect1:1", "hero-1-aspect16:9"}
    assert [r.identity for r in resolve_target(recs, "#2")] == ["hero-2"]  # its failed banner is not reviewable
    assert [r.identity for r in resolve_target(recs, "#2:hero")] == ["hero-2"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("A11", r"review A11: no row 'A11' in the manifest \(did you mean 'A1'\?\)"),
        ("Z", r"review Z: no row 'Z' in the manifest \(keys such as A1, B2, C3, or #N\)"),
        ("A1:heor", r"review A1:heor: no step 'heor' \(did you mean 'hero'\?\)"),
        ("#x", r"'#x' is not a row number \(write #N"),
        ("#9", "no row '#9'"),
        ("B2:banner", r"nothing to review there yet \(runs are failed\)"),
        ("C3", r"nothing to review there yet \(runs are running\)"),
    ],
)
def test_bad_targets_say_what_exists(manifest: Path, target: str, message: str) -> None:
    """Unknown rows and steps get a did-you-mean; rows without a completed run say what state they are in."""
    with pytest.raises(ConfigError, match=message):
        resolve_target(records(manifest), target)


def test_a_key_holding_a_colon_is_taken_whole(tmp_path: Path) -> None:
    """`ROW[:STEP]` is split at the last colon only when the whole text is not a key."""
    path = tmp_path / "m.sqlite"
    write_runs(path, tmp_path, [Run("hero", 1, {"sku": "X:1"}, key="X:1")])
    recs = records(path)
    assert len(resolve_target(recs, "X:1")) == 1
    assert len(resolve_target(recs, "X:1:hero")) == 1


def test_mark_list_and_rejected_runs(manifest: Path) -> None:
    """--reject/--approve record per completed run; --list shows every completed run with its verdict."""
    assert len(mark(manifest, NAME, "A1:hero", "rejected", "cropped")) == 2
    assert len(mark(manifest, NAME, "#2", "approved")) == 1
    entries = list_reviews(manifest, NAME)
    assert len(entries) == 5
    by_id = {e.record.identity: e for e in entries}
    assert by_id["hero-1-aspect1:1"].verdict is not None
    assert by_id["hero-1-aspect1:1"].verdict.note == "cropped"
    assert by_id["hero-1-aspect1:1"].verdict.source == "cli"
    assert by_id["banner-1-aspect1:1"].verdict is None
    assert by_id["hero-2"].to_json()["verdict"] == "approved"
    text = render_review_list(entries)
    assert "5 completed runs: 1 approved, 2 rejected, 2 unreviewed" in text
    assert "A1 [aspect=16:9]" in text
    assert "cropped" in text
    assert {r.identity for r in rejected_runs(manifest, NAME)} == {"hero-1-aspect1:1", "hero-1-aspect16:9"}
    mark(manifest, NAME, "A1:hero", "approved")
    assert rejected_runs(manifest, NAME) == []


def test_verdicts_attach_to_the_current_attempt(manifest: Path) -> None:
    """A new attempt of a run is unreviewed again: the old attempt's verdict stays with the old attempt."""
    mark(manifest, NAME, "#2:hero", "rejected")
    with VerdictStore.open(manifest) as store:
        store.record("hero-2", 2, "approved")  # a verdict about an attempt the run is not on is not in force
    entries = {e.record.identity: e for e in list_reviews(manifest, NAME)}
    assert entries["hero-2"].attempt == 1
    assert entries["hero-2"].verdict is not None
    assert entries["hero-2"].verdict.verdict == "rejected"


def test_import_records_skips_and_is_idempotent(tmp_path: Path, manifest: Path) -> None:
    """An import records known runs' verdicts, names the entries it skips, and a second import adds nothing."""
    doc = {
        "pipeline": NAME,
        "exported_at": "2026-01-02T00:00:00Z",
        "verdicts": [
            {"identity": "hero-2", "attempt": 1, "verdict": "rejected", "note": "blurry", "at": "2026-01-01T10:00Z"},
            {"identity": "banner-1-aspect1:1", "attempt": 1, "verdict": "approved", "note": None,
             "at": "2026-01-01T10:01:00+00:00", "step": "banner", "row_number": 1, "row_key": "A1"},
            {"identity": "gone", "attempt": 1, "verdict": "approved", "at": "2026-01-01T10:02:00Z", "row_key": "Z9"},
            {"identity": "hero-2", "attempt": 5, "verdict": "approved", "at": "2026-01-01T10:03:00Z"},
        ],
    }  # fmt: skip
    path = tmp_path / "verdicts.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    summary = import_verdicts(manifest, NAME, path)
    assert (summary.recorded, summary.duplicates, summary.stale) == (2, 0, 0)
    assert summary.skipped == (
        f"verdicts[2] (Z9): no such run in {manifest}",
        "verdicts[3] (hero-2): attempt 5 never happened (the run is at 1)",
    )
    again = import_verdicts(manifest, NAME, path)
    assert (again.recorded, again.duplicates) == (0, 2)
    with VerdictStore.open(manifest, writable=False) as store:
        latest = store.latest()
    assert latest[("hero-2", 1)].verdict == "rejected"
    assert latest[("hero-2", 1)].source == "import"
    assert latest[("hero-2", 1)].at == "2026-01-01T10:00:00.000Z"


def test_import_refuses_another_pipelines_file_and_unreadable_files(tmp_path: Path, manifest: Path) -> None:
    """A file exported from another pipeline, or one that cannot be read, is a ConfigError naming it."""
    path = tmp_path / "verdicts.json"
    path.write_text(json.dumps({"pipeline": "other", "verdicts": []}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"verdicts.json: pipeline: exported from pipeline 'other', not 'catalogue'"):
        import_verdicts(manifest, NAME, path)
    with pytest.raises(ConfigError, match=r"nope.json: cannot read it"):
        import_verdicts(manifest, NAME, tmp_path / "nope.json")


def test_export_round_trips_through_import(tmp_path: Path, manifest: Path) -> None:
    """export_verdicts writes what import_verdicts reads; into a fresh copy of the runs it records the same."""
    mark(manifest, NAME, "A1", "approved")
    mark(manifest, NAME, "#2", "rejected", "too dark")
    doc = export_verdicts(manifest, NAME)
    assert len(doc["verdicts"]) == 5
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    other = fresh / "m.sqlite"
    write_runs(other, fresh, [Run("hero", 2, {"sku": "B2"}, key="B2")], name=NAME)
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    summary = import_verdicts(other, NAME, path)
    assert summary.recorded == 1
    assert len(summary.skipped) == 4
    assert list_reviews(other, NAME)[0].to_json()["note"] == "too dark"


def test_commands_need_a_manifest(tmp_path: Path) -> None:
    """Without a manifest there is nothing to review: ManifestError naming the path."""
    with pytest.raises(ManifestError, match="no manifest"):
        rejected_runs(tmp_path / "none.sqlite", NAME)
    with pytest.raises(ManifestError, match="no manifest"):
        mark(tmp_path / "none.sqlite", NAME, "A1", "approved")
