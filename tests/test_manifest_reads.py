"""The manifest's reads: row order across pages, counts, lookups, durations, readers beside a running writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from manifest_helpers import NAME, child, make_run, running

from lamina_batch.errors import ManifestError
from lamina_batch.manifest import Manifest
from lamina_batch.models import RunState


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


def test_iter_runs_orders_by_row_then_step_and_filters(mpath: Path) -> None:
    """iter_runs yields by row number then insertion (step) order, across pages, with step/state filters."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        runs = []
        for n in range(1200, 0, -1):  # inserted in reverse row order, more than two pages
            runs += [make_run(n), make_run(n, step="banner", app="app_9Qx1")]
        m.ensure_planned_many(runs)
        m.begin_attempt(make_run(7), {})
        got = [(r.row_number, r.step_id) for r in m.iter_runs()]
        assert got == [(n, s) for n in range(1, 1201) for s in ("hero", "banner")]
        assert [r.row_number for r in m.iter_runs(step_id="banner")][:3] == [1, 2, 3]
        assert [r.identity for r in m.iter_runs(states=[RunState.SUBMITTING])] == ["hero-7"]
        assert list(m.iter_runs(states=[])) == []
        assert next(iter(m.iter_runs(step_id="hero", states=["submitting", "running"]))).identity == "hero-7"


def test_counts_by_step_and_state(writer: Manifest) -> None:
    """counts() gives, per step in order of appearance, every state with zeros included."""
    writer.ensure_planned_many([make_run(1), make_run(2), make_run(1, step="banner", app="app_9Qx1")])
    writer.begin_attempt(make_run(2), {})
    counts = writer.counts()
    assert list(counts) == ["hero", "banner"]
    assert counts["hero"][RunState.PENDING] == 1
    assert counts["hero"][RunState.SUBMITTING] == 1
    assert counts["hero"][RunState.COMPLETED] == 0
    assert sum(counts["banner"].values()) == 1


def test_get_many_by_remote_id_and_known_remote_ids(writer: Manifest) -> None:
    """Lookups by identity batch, by remote id (including an earlier attempt's) and per-app remote ids."""
    runs = [make_run(n) for n in range(1, 1100)]
    writer.ensure_planned_many(runs)
    run = runs[0]
    writer.begin_attempt(run, {})
    writer.set_remote_id(run.identity, "old")
    writer.finish(run.identity, RunState.FAILED)
    writer.begin_attempt(run, {})
    writer.set_remote_id(run.identity, "new")
    found = writer.get_many([r.identity for r in runs] + ["missing"])
    assert len(found) == len(runs)
    assert "missing" not in found
    by_new, by_old = writer.by_remote_id("new"), writer.by_remote_id("old")
    assert by_new is not None
    assert by_new.identity == run.identity
    assert by_old is not None
    assert by_old.identity == run.identity
    assert writer.by_remote_id("nobody") is None
    assert writer.known_remote_ids("app_7Hk2") == {"old", "new"}
    assert writer.known_remote_ids("app_other") == set()


def test_reader_sees_each_committed_write_while_the_writer_runs(writer: Manifest, mpath: Path) -> None:
    """A reader opened during a run works without the lock and sees every write as soon as it returns."""
    run = make_run()
    writer.ensure_planned(run)
    with Manifest.open(mpath, pipeline_name=NAME, writer=False) as reader:
        assert reader.get(run.identity) is not None
        writer.begin_attempt(run, run.inputs)
        rec = reader.get(run.identity)
        assert rec is not None
        assert rec.state is RunState.SUBMITTING
        writer.set_remote_id(run.identity, "r1")
        assert reader.counts()["hero"][RunState.RUNNING] == 1
        with pytest.raises(ManifestError, match="read-only"):
            reader.set_state(run.identity, RunState.PENDING)


def test_reader_in_another_process_while_writer_keeps_writing(writer: Manifest, mpath: Path) -> None:
    """A reader process counts runs while this process holds the lock and keeps committing."""
    writer.ensure_planned_many(make_run(n) for n in range(1, 51))
    proc = child(
        "import sys\n"
        "from lamina_batch.manifest import Manifest\n"
        "for line in sys.stdin:\n"
        f"    with Manifest.open({str(mpath)!r}, pipeline_name={NAME!r}, writer=False) as m:\n"
        "        print(sum(sum(c.values()) for c in m.counts().values()), flush=True)\n"
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        seen = []
        for n in range(51, 54):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            seen.append(int(proc.stdout.readline()))
            writer.begin_attempt(make_run(n), {})
        assert seen == [50, 51, 52]
    finally:
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_reader_of_a_missing_file(mpath: Path) -> None:
    """A reader of a missing manifest gets an empty one (create=True) or a clear error, and writes no file."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=False) as m:
        assert list(m.iter_runs()) == []
        assert m.counts() == {}
        assert m.schema_version == 0
    with pytest.raises(ManifestError, match=r"no manifest at .* yet; run the pipeline first"):
        Manifest.open(mpath, pipeline_name=NAME, writer=False, create=False)
    with pytest.raises(ManifestError, match="no manifest at"):
        Manifest.open(mpath, pipeline_name=NAME, writer=True, create=False)
    assert not mpath.exists()


def test_recent_durations_of_an_app_oldest_first(writer: Manifest) -> None:
    """recent_durations: the app's last `limit` completed runs' remote durations, oldest first (failed runs and
    other apps left out)."""
    for n, seconds in enumerate([10.0, 30.0, 20.0, 40.0], start=1):
        running(writer, make_run(n))
        writer.finish(f"hero-{n}", RunState.COMPLETED, remote_duration=seconds)
    running(writer, make_run(9))
    writer.finish("hero-9", RunState.FAILED, remote_duration=999.0)
    running(writer, make_run(8, app="app_other"))
    writer.finish("hero-8", RunState.COMPLETED, remote_duration=5.0)
    assert writer.recent_durations("app_7Hk2", 3) == [30.0, 20.0, 40.0]
    assert writer.recent_durations("app_9Qx1", 3) == []
