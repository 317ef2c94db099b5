"""Following started runs: /wait, polling timed by learned durations, webhooks' safety net, timeouts."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from executor_fakes import FakeClient, FakeClock, execute, open_manifest, rows, with_run, write_pipeline

from lamina_batch.execute.follow import Durations
from lamina_batch.manifest import Manifest
from lamina_batch.models import MatrixItem, PlannedRun, RunState


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manifest(tmp_path: Path, clock: FakeClock) -> Iterator[Manifest]:
    m = open_manifest(tmp_path, clock)
    yield m
    m.close()


def test_wait_errors_never_fail_a_run(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Transport errors while waiting back off and keep waiting: the run still completes."""
    client = FakeClient(clock)
    client.wait_errors = 8
    result, _ = execute(write_pipeline(tmp_path, rows(2)), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 2}
    assert len(client.runs) == 2


def test_timeout_cancels_remote_run(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A run past `timeout` is cancelled remotely and recorded timed_out."""
    client = FakeClient(clock)
    client.duration = math.inf
    pipeline = with_run(write_pipeline(tmp_path, rows(1)), timeout=100.0)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.TIMED_OUT: 1}
    assert len(client.cancelled) == 1
    assert 2 <= client.count("wait") <= 3
    (rec,) = manifest.iter_runs()
    assert "cancelled" in (rec.error or "")


def test_executions_first_poll_near_median_duration(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """With learned durations the first poll comes near the app's median run duration, not every interval."""
    client = FakeClient(clock, dialect="executions")
    client.duration = 20.0
    pipeline = with_run(write_pipeline(tmp_path, rows(3), api="executions"), concurrency=1, poll_interval=4.0)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 3}
    assert client.first_poll_delays[0] == pytest.approx(4.0, abs=0.5)
    assert client.first_poll_delays[1] == pytest.approx(20.0, abs=0.5)
    assert client.first_poll_delays[2] == pytest.approx(20.0, abs=0.5)
    # run 1: polls at 4..20 (5); runs 2 and 3: one poll each.
    assert client.count("get") == 7


@pytest.mark.parametrize(("bound", "expected"), [(False, 20.0), (True, 30.0)])
def test_executions_first_poll_waits_longer_while_the_budget_binds(
    tmp_path: Path, manifest: Manifest, clock: FakeClock, bound: bool, expected: float
) -> None:
    """While the request budget binds, the first poll waits for the 95th percentile of learned durations
    (fewer polls that find the run still going); otherwise it comes at the median."""
    client = FakeClient(clock, dialect="executions")
    client.durations = [10.0, 30.0, 20.0, 20.0]
    client.budget_bound = bound
    pipeline = with_run(write_pipeline(tmp_path, rows(4), api="executions"), concurrency=1, poll_interval=4.0)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 4}
    # learned before runs 3 and 4: [10, 30] and [10, 30, 20]: median 20, 95th percentile 30
    assert client.first_poll_delays[2:] == [pytest.approx(expected, abs=0.5)] * 2


def test_executions_timeout_is_recorded_without_a_cancel(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Without a cancel endpoint a run past its timeout is recorded timed_out, saying it could not be cancelled."""
    client = FakeClient(clock, dialect="executions")
    client.duration = math.inf
    pipeline = with_run(write_pipeline(tmp_path, rows(1), api="executions"), timeout=60.0, poll_interval=10.0)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.TIMED_OUT: 1}
    assert client.cancelled == []
    (rec,) = manifest.iter_runs()
    assert rec.error == "timed out after 1m (this API cannot cancel it remotely)"


def _finished(
    m: Manifest, n: int, seconds: float, *, app: str = "app_hero", state: RunState = RunState.COMPLETED
) -> None:
    item = MatrixItem(row_number=n, row={}, axes={}, key=None, item_id=f"i{n}")
    run = PlannedRun(f"run-{n}", "hero", app, item, {}, None)
    m.begin_attempt(run, {})
    m.set_remote_id(run.identity, f"r{n}")
    m.finish(run.identity, state, remote_duration=seconds)


def test_durations_learn_the_median_from_the_manifest_then_from_completions(manifest: Manifest) -> None:
    """The median of an app's completed runs' durations: read from the manifest the first time, then fed by
    completions; failed runs and other apps do not count."""
    durations = Durations(manifest)
    assert durations.median("app_hero") is None
    for n, d in enumerate([10.0, 30.0, 20.0], start=1):
        _finished(manifest, n, d)
    _finished(manifest, 9, 999.0, state=RunState.FAILED)
    _finished(manifest, 8, 5.0, app="app_other")
    durations = Durations(manifest)
    assert durations.median("app_hero") == 20.0
    durations.add("app_hero", 40.0)
    assert durations.median("app_hero") == 25.0
    assert durations.median("app_banner") is None
    durations.add("app_unseen", 7.0)  # not asked about yet: the manifest has it when it is
    assert durations.median("app_unseen") is None


def test_duration_quantile_is_nearest_rank(manifest: Manifest) -> None:
    """quantile picks by nearest rank (0.95 of 20 durations is the 19th), the median by averaging."""
    for n in range(1, 21):
        _finished(manifest, n, float(21 - n))
    durations = Durations(manifest)
    assert durations.quantile("app_hero", 0.95) == 19.0
    assert durations.quantile("app_hero", 1.0) == 20.0
    assert durations.quantile("app_hero", 0.5) == 10.5
