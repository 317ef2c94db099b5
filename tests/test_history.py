"""Earlier attempts' files: the history path beside the current file, the move before a redo (idempotent after a
crash), and the review page's view of a run's superseded attempts from the manifest."""

from __future__ import annotations

from pathlib import Path

from manifest_helpers import NAME, make_run

from lamina_batch.history import HistorySource, history_path, move_to_history
from lamina_batch.manifest import Manifest
from lamina_batch.models import DownloadRecord, RunState


def test_history_path_keeps_the_folder_and_extension() -> None:
    """`out/A1/hero.png` of attempt 1 is kept as `out/A1/history/hero.attempt-1.png`."""
    assert history_path("out/A1/hero.png", 1) == "out/A1/history/hero.attempt-1.png"
    assert history_path("hero", 3) == "history/hero.attempt-3"


def test_move_to_history_is_a_rename_and_survives_a_second_call(tmp_path: Path) -> None:
    """The file moves (the current path is free for the new attempt); called again after a crash it finds the
    moved file; a file deleted by hand keeps its old record."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "hero.png").write_bytes(b"old")
    d = DownloadRecord(0, "Hero", "https://x/a.png", "out/hero.png", 3, "0" * 64)
    gone = DownloadRecord(1, "Other", "https://x/b.png", "out/other.png", 3, "0" * 64)
    [moved, kept] = move_to_history(tmp_path, [d, gone], 1)
    assert moved.path == "out/history/hero.attempt-1.png"
    assert (tmp_path / moved.path).read_bytes() == b"old"
    assert not (tmp_path / "out" / "hero.png").exists()
    assert kept == gone
    assert move_to_history(tmp_path, [d], 1) == (moved,)


def test_history_source_reads_superseded_attempts_newest_first(tmp_path: Path) -> None:
    """HistorySource(identity) gives the attempts table's rows of that run, newest first, and sees new ones."""
    path = tmp_path / "p.lamina.sqlite"
    run = make_run(1)
    with Manifest.open(path, pipeline_name=NAME, writer=True) as m:
        m.begin_attempt(run, run.inputs)
        m.finish(run.identity, RunState.FAILED, error="refused")
        m.begin_attempt(run, run.inputs)
        m.set_remote_id(run.identity, "r-2")
        m.finish(run.identity, RunState.COMPLETED)
    history = HistorySource(path, NAME)
    assert [(p.attempt, p.state) for p in history(run.identity)] == [(1, RunState.FAILED)]
    assert history("other") == []
    with Manifest.open(path, pipeline_name=NAME, writer=True) as m:
        m.begin_attempt(run, run.inputs, redo=True)
    assert [(p.attempt, p.state) for p in history(run.identity)] == [(2, RunState.COMPLETED), (1, RunState.FAILED)]
