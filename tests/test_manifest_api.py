"""The manifest's writes as a batch makes them: plan, start intent, remote id, finish, other moves, downloads and
webhook deliveries."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from manifest_helpers import NAME, make_run, ticking_clock

from lamina_batch.errors import ManifestError
from lamina_batch.manifest import SCHEMA_VERSION, Manifest, default_manifest_path
from lamina_batch.models import DownloadRecord, MatrixItem, PlannedRun, RunState


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


def test_default_path_is_beside_the_pipeline(tmp_path: Path) -> None:
    """The default manifest is `<stem>.lamina.sqlite` beside the pipeline file."""
    assert default_manifest_path(tmp_path / "cat.yaml") == tmp_path / "cat.lamina.sqlite"


def test_new_manifest_uses_wal_and_records_name_and_version(mpath: Path) -> None:
    """A writer creates the file in WAL mode with the schema version and pipeline name in meta."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.pipeline_name == NAME
        assert m.get_meta("schema_version") == str(SCHEMA_VERSION)
        raw = sqlite3.connect(mpath)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            raw.close()
        assert m._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_transitions_are_appended_in_order(mpath: Path) -> None:
    """Every state change appends one transition row (from, to, at, detail); nothing is rewritten."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True, clock=ticking_clock()) as m:
        run = make_run()
        m.ensure_planned(run)
        m.begin_attempt(run, run.inputs)
        m.set_state(run.identity, RunState.UNKNOWN, error="reply lost", error_code="UNKNOWN_OUTCOME")
        m.set_state(run.identity, RunState.PENDING, detail="--restart-unknown")
        m.begin_attempt(run, run.inputs)
        m.set_remote_id(run.identity, "r2")
        m.finish(run.identity, RunState.COMPLETED)
        ts = m.transitions(run.identity)
    assert [(t.from_state, t.to_state) for t in ts] == [
        (None, RunState.PENDING),
        (RunState.PENDING, RunState.SUBMITTING),
        (RunState.SUBMITTING, RunState.UNKNOWN),
        (RunState.UNKNOWN, RunState.PENDING),
        (RunState.PENDING, RunState.SUBMITTING),
        (RunState.SUBMITTING, RunState.RUNNING),
        (RunState.RUNNING, RunState.COMPLETED),
    ]
    assert ts[2].detail == "UNKNOWN_OUTCOME: reply lost"
    assert ts[3].detail == "--restart-unknown"
    assert ts[4].detail == "attempt 2"
    assert ts[5].detail == "remote r2"
    assert [t.at for t in ts] == sorted(t.at for t in ts)


def test_begin_attempt_resets_the_previous_attempt(writer: Manifest) -> None:
    """A new attempt clears remote id, error and outputs, bumps attempts, and stores the inputs sent."""
    run = make_run()
    writer.begin_attempt(run, {"Prompt": "a"})
    writer.set_remote_id(run.identity, "r1")
    writer.finish(run.identity, RunState.FAILED, error="x", error_code="E")
    rec = writer.begin_attempt(run, {"Prompt": "b"})
    assert (rec.attempts, rec.state, rec.remote_id, rec.error, rec.finished_at) == (
        2,
        RunState.SUBMITTING,
        None,
        None,
        None,
    )
    assert rec.inputs == {"Prompt": "b"}


def test_begin_attempt_returns_what_a_read_would(writer: Manifest) -> None:
    """The record begin_attempt returns (built without a read) equals the one read back, first try and retry."""
    run = make_run(4, key="SKU4", axes={"aspect": "1:1"})
    first = writer.begin_attempt(run, {"Prompt": "a", "n": 2})
    assert first == writer.get(run.identity)
    writer.set_remote_id(run.identity, "r1")
    writer.finish(run.identity, RunState.FAILED, error="x", error_code="E")
    again = writer.begin_attempt(run, {"Prompt": "b"})
    assert again == writer.get(run.identity)
    assert again.created_at == first.created_at


@pytest.mark.parametrize("state", [RunState.RUNNING, RunState.COMPLETED])
def test_begin_attempt_refuses_a_run_that_would_be_paid_twice(writer: Manifest, state: RunState) -> None:
    """Starting again a run that is running or completed is refused, naming its remote id."""
    run = make_run()
    writer.begin_attempt(run, run.inputs)
    writer.set_remote_id(run.identity, "r_live")
    if state is RunState.COMPLETED:
        writer.finish(run.identity, state)
    with pytest.raises(ManifestError, match="r_live"):
        writer.begin_attempt(run, run.inputs)
    rec = writer.get(run.identity)
    assert rec is not None
    assert rec.state is state
    assert rec.attempts == 1


def test_finish_rejects_a_non_finished_state(writer: Manifest) -> None:
    """finish() only accepts finished states; other transitions go through set_state()."""
    run = make_run()
    writer.begin_attempt(run, run.inputs)
    with pytest.raises(ValueError, match="set_state"):
        writer.finish(run.identity, RunState.RUNNING)


def test_writes_to_an_unknown_identity_are_refused(writer: Manifest) -> None:
    """State writes for an identity the manifest does not hold raise ManifestError and write nothing."""
    with pytest.raises(ManifestError, match="no run nope"):
        writer.set_remote_id("nope", "r1")
    assert writer.known_remote_ids("app_7Hk2") == set()


def test_ensure_planned_inserts_once_and_follows_moved_rows(writer: Manifest) -> None:
    """ensure_planned inserts a pending run once; a later call only refreshes the row position."""
    run = make_run(5)
    assert writer.ensure_planned(run).state is RunState.PENDING
    writer.begin_attempt(run, run.inputs)
    moved = PlannedRun(
        identity=run.identity,
        step_id=run.step_id,
        app_id=run.app_id,
        item=MatrixItem(
            row_number=9, row={"sku": "SKU5", "name": "Mug 5"}, axes=run.item.axes, key=None, item_id="item5"
        ),
        inputs=run.inputs,
        output_labels=run.output_labels,
    )
    rec = writer.ensure_planned(moved)
    assert (rec.row_number, rec.state) == (9, RunState.SUBMITTING)
    assert len(writer.transitions(run.identity)) == 2  # moving a row is not a transition
    writer.set_state(run.identity, RunState.PENDING)
    assert writer.begin_attempt(run, run.inputs).row_number == 5  # the start follows the row too
    assert writer.ensure_planned_many([make_run(6), make_run(7), moved]) == 2


def test_downloads_replace_by_index_and_clear(writer: Manifest) -> None:
    """add_download replaces a record of the same output index; clear_downloads empties the list."""
    run = make_run()
    writer.begin_attempt(run, run.inputs)
    a = DownloadRecord(0, "Hero Image", "u0", "p0", 1, "s0")
    b = DownloadRecord(1, "Alt", "u1", "p1", 2, "s1")
    a2 = DownloadRecord(0, "Hero Image", "u0", "p0", 3, "s2")
    for d in (b, a, a2):
        writer.add_download(run.identity, d)
    rec = writer.get(run.identity)
    assert rec is not None
    assert rec.downloads == (a2, b)
    writer.clear_downloads(run.identity)
    rec = writer.get(run.identity)
    assert rec is not None
    assert rec.downloads == ()


def test_webhook_deliveries_are_deduplicated_across_reopen(mpath: Path) -> None:
    """record_webhook is True for a new request id and False for a redelivery, even after reopening."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.record_webhook("req_1", "run_1", "completed") is True
        assert m.record_webhook("req_1", "run_1", "completed") is False
        assert m.record_webhook("req_2", "run_1", "completed") is True
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.record_webhook("req_1", "run_1", "completed") is False


def test_begin_attempt_keeps_the_estimate_and_carries_earlier_costs(writer: Manifest) -> None:
    """Each attempt records the credits it was started under; a new attempt adds the cost of the one before to
    credits_earlier only when that one created a remote run."""
    run = make_run()
    first = writer.begin_attempt(run, {"Prompt": "a"}, credits_estimate=4.0)
    assert (first.credits_estimate, first.credits_earlier) == (4.0, 0.0)
    assert first == writer.get(run.identity)
    writer.set_state(run.identity, RunState.PENDING)  # refused before creating anything: nothing spent
    second = writer.get(run.identity)
    assert second is not None
    assert second.credits is None
    writer.begin_attempt(run, {"Prompt": "a"}, credits_estimate=4.0)
    writer.set_remote_id(run.identity, "r1")
    writer.finish(run.identity, RunState.FAILED, error="x", error_code="E")
    failed = writer.get(run.identity)
    assert failed is not None
    assert (failed.credits_earlier, failed.credits) == (0.0, 4.0)
    writer.begin_attempt(run, {"Prompt": "b"}, credits_estimate=5.0)
    again = writer.get(run.identity)
    assert again is not None
    assert (again.credits_estimate, again.credits_earlier, again.credits_actual) == (5.0, 4.0, None)
    assert again.credits == 4.0  # the new attempt has no remote run yet


def test_a_redo_keeps_the_superseded_attempt_and_the_upstream_attempts(writer: Manifest) -> None:
    """begin_attempt(redo=True) moves a completed run to submitting at attempt 2, keeps attempt 1 (its remote
    run, outputs and the files as moved) in `attempts`, and records which upstream attempts it consumes."""
    run = make_run(1)
    writer.begin_attempt(run, run.inputs, upstream_attempts={"hero": 1})
    assert writer.get(run.identity).upstream_attempts == {"hero": 1}  # type: ignore[union-attr]
    writer.set_remote_id(run.identity, "r-1")
    writer.finish(run.identity, RunState.COMPLETED)
    writer.add_download(run.identity, DownloadRecord(0, "Hero", "https://x/a.png", "out/a.png", 3, "0" * 64))
    moved = DownloadRecord(0, "Hero", "https://x/a.png", "out/history/a.attempt-1.png", 3, "0" * 64)
    rec = writer.begin_attempt(run, {"Prompt": "again"}, redo=True, upstream_attempts={"hero": 2},
                               archived_downloads=[moved])  # fmt: skip
    assert (rec.state, rec.attempts) == (RunState.SUBMITTING, 2)
    now = writer.get(run.identity)
    assert now is not None
    assert (now.downloads, now.remote_id, now.upstream_attempts) == ((), None, {"hero": 2})
    [past] = writer.past_attempts(run.identity)[run.identity]
    assert (past.attempt, past.state, past.remote_id, past.downloads) == (1, RunState.COMPLETED, "r-1", (moved,))
    assert writer.transitions(run.identity)[-1].from_state is RunState.COMPLETED
