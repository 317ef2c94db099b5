"""Reconciling lost start replies and crash leftovers: adopt the one unaccounted run, restart, or unknown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from executor_fakes import FakeClient, FakeClock, execute, open_manifest, rows, write_pipeline

from lamina_batch import events as ev
from lamina_batch.executor import ExecOptions
from lamina_batch.manifest import Manifest
from lamina_batch.models import RemoteRun, RunState


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manifest(tmp_path: Path, clock: FakeClock) -> Iterator[Manifest]:
    m = open_manifest(tmp_path, clock)
    yield m
    m.close()


def test_lost_start_reply_adopts_the_created_run(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A start whose reply was lost after creating the run is reconciled and adopted: one remote run."""
    client = FakeClient(clock)
    client.start_script = ["lost"]
    result, seen = execute(write_pipeline(tmp_path, rows(3)), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 3}
    assert len(client.runs) == 3
    assert client.count("start") == 3
    assert any(isinstance(e, ev.Reconciled) and e.outcome == "adopted" for e in seen)


def test_lost_start_reply_without_a_run_starts_again(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A lost reply with no unaccounted run in the list starts the run again, exactly once."""
    client = FakeClient(clock)
    client.start_script = ["lost-none"]
    result, _ = execute(write_pipeline(tmp_path, rows(1)), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 1}
    assert len(client.runs) == 1
    assert client.count("start") == 2
    assert client.count("list") == 1


def test_lost_reply_with_several_candidates_becomes_unknown(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """Several unaccounted runs in the list make the run `unknown`, never adopted at random."""
    client = FakeClient(clock)
    client.start_script = ["lost"]
    client.extra_listed = [RemoteRun("stranger_1", "running", created_at=clock.iso())]
    result, _ = execute(write_pipeline(tmp_path, rows(1)), manifest, client, clock)
    assert result.counts == {RunState.UNKNOWN: 1}
    (rec,) = manifest.iter_runs()
    assert rec.state is RunState.UNKNOWN
    assert "2 unaccounted" in (rec.error or "")
    assert client.count("start") == 1


def test_executions_lost_reply_is_unknown_unless_restart_unknown(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """Without a runs list a lost start is `unknown`; --restart-unknown starts it again."""
    client = FakeClient(clock, dialect="executions")
    client.start_script = ["lost"]
    pipeline = write_pipeline(tmp_path, rows(1), api="executions")
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.UNKNOWN: 1}
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.UNKNOWN: 1}
    assert client.count("start") == 1
    result, _ = execute(pipeline, manifest, client, clock, ExecOptions(restart_unknown=True))
    assert result.counts == {RunState.COMPLETED: 1}
    assert client.count("start") == 2


def test_crash_leftover_is_reconciled_before_new_starts(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A `submitting` record without remote id (a crash after the intent) is adopted from the runs list."""
    client = FakeClient(clock)
    pipeline = write_pipeline(tmp_path, rows(2))
    from lamina_batch.matrix import expand_runs

    first = next(iter(expand_runs(pipeline))).runs[0]
    manifest.begin_attempt(first, dict(first.inputs))
    client._create("app_hero", first.inputs)  # the start went out; the process died before the reply
    result, seen = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 2}
    assert len(client.runs) == 2
    assert client.count("start") == 1
    assert client.requests[0] == ("list", "app_hero")
    assert any(isinstance(e, ev.Reconciled) and e.outcome == "adopted" for e in seen)


def test_a_remote_id_of_an_earlier_attempt_is_never_adopted(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """Reconcile adopts only runs no record ever had: an earlier attempt's listed run is not this attempt's."""
    client = FakeClient(clock)
    client.fail_first["app_hero"] = 1
    pipeline = write_pipeline(tmp_path, rows(1))
    execute(pipeline, manifest, client, clock)  # attempt 1 fails remotely
    client.start_script = ["lost-none"]  # attempt 2's reply is lost and it created nothing
    result, seen = execute(pipeline, manifest, client, clock, ExecOptions(retry_failed=True))
    assert result.counts == {RunState.COMPLETED: 1}
    assert [e.outcome for e in seen if isinstance(e, ev.Reconciled)] == ["restart"]
    assert len(client.runs) == 2
