"""The executor against a scripted fake client, a fake clock and a real SQLite manifest: the plan streamed item by
item, every run decided as `plan` decides it, attempts and retries, guards and stops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from executor_fakes import (
    FakeClient,
    FakeClock,
    execute,
    make_executor,
    open_manifest,
    rows,
    states,
    with_run,
    write_pipeline,
)

from lamina_batch import events as ev
from lamina_batch.errors import AuthError, ManifestError
from lamina_batch.executor import UPSTREAM_FAILED, ExecOptions, RunResult, StopReason
from lamina_batch.manifest import Manifest
from lamina_batch.matrix import expand_runs
from lamina_batch.models import FailureLimit, RunOutput, RunState


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manifest(tmp_path: Path, clock: FakeClock) -> Iterator[Manifest]:
    m = open_manifest(tmp_path, clock)
    yield m
    m.close()


def test_small_batch_costs_two_requests_per_run(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Each run costs exactly one start and one /wait when it ends within the wait window."""
    client = FakeClient(clock)
    result, seen = execute(write_pipeline(tmp_path, rows(5)), manifest, client, clock)
    assert result.stop_reason is StopReason.FINISHED
    assert result.counts == {RunState.COMPLETED: 5}
    assert result.starts == 5
    assert client.count("start") == 5
    assert client.count("wait") == 5
    assert len(client.requests) == 10
    assert states(manifest) == {RunState.COMPLETED: 5}
    assert sum(isinstance(e, ev.RunFinished) for e in seen) == 5


def test_needs_chain_renders_real_upstream_output(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A downstream run is started with its upstream run's real output value, not the plan placeholder."""
    client = FakeClient(clock)
    result, _ = execute(write_pipeline(tmp_path, rows(3), chain=True), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 6}
    hero_ids = {r.inputs["Prompt"]: r.run_id for r in client.runs.values() if r.app_id == "app_hero"}
    banner_inputs = [r.inputs["Image"] for r in client.runs.values() if r.app_id == "app_banner"]
    assert sorted(banner_inputs) == sorted(f"https://files.test/{rid}.png" for rid in hero_ids.values())


def test_upstream_failure_fails_downstream_without_a_request(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A downstream run whose upstream failed is recorded failed UPSTREAM_FAILED and never started."""
    client = FakeClient(clock)
    result, _ = execute(write_pipeline(tmp_path, rows(3, fail={2}), chain=True), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 4, RunState.FAILED: 2}
    assert sum(1 for r in client.runs.values() if r.app_id == "app_banner") == 2
    banner = [r for r in manifest.iter_runs(step_id="banner") if r.state is RunState.FAILED]
    assert len(banner) == 1
    assert banner[0].error_code == UPSTREAM_FAILED
    assert "hero" in (banner[0].error or "")


def test_failed_run_is_retried_up_to_retries(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A remote failure starts a new attempt while `retries` allow, then completes."""
    client = FakeClient(clock)
    client.fail_first["app_hero"] = 1
    pipeline = with_run(write_pipeline(tmp_path, rows(1)), retries=1)
    result, seen = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 1}
    assert client.count("start") == 2
    assert any(isinstance(e, ev.RunRetrying) for e in seen)
    (rec,) = manifest.iter_runs()
    assert rec.attempts == 2


def test_failed_run_without_retries_is_failed_with_message(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """With retries 0 a remote failure is final and keeps the server's errorMessage."""
    client = FakeClient(clock)
    result, _ = execute(write_pipeline(tmp_path, rows(2, fail={1})), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 1, RunState.FAILED: 1}
    failed = next(manifest.iter_runs(states=[RunState.FAILED]))
    assert failed.error == "boom"


def test_retry_failed_reruns_failed_and_kept_otherwise(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Failed runs stay failed on resume unless --retry-failed, which starts them again."""
    client = FakeClient(clock)
    client.fail_first["app_hero"] = 1
    pipeline = write_pipeline(tmp_path, rows(2))
    execute(pipeline, manifest, client, clock)
    result, seen = execute(pipeline, manifest, client, clock)
    assert client.count("start") == 2
    assert result.counts == {RunState.COMPLETED: 1, RunState.FAILED: 1}
    assert any(isinstance(e, ev.RunFinished) and e.kept for e in seen)
    result, _ = execute(pipeline, manifest, client, clock, ExecOptions(retry_failed=True))
    assert client.count("start") == 3
    assert result.counts == {RunState.COMPLETED: 2}


def test_resume_reuses_completed_and_follows_running(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """On resume completed runs cost nothing and a run with a remote id is waited for, never started again."""
    client = FakeClient(clock)
    pipeline = write_pipeline(tmp_path, rows(2))
    running, done = (plan.runs[0] for plan in expand_runs(pipeline))
    # The previous invocation completed one run and left the other running remotely.
    for run in (running, done):
        manifest.begin_attempt(run, dict(run.inputs))
        manifest.set_remote_id(run.identity, client._create(run.app_id, run.inputs).run_id)
    output = RunOutput("o1", "Image", "image", "https://files.test/done.png", "completed")
    manifest.finish(done.identity, RunState.COMPLETED, outputs=(output,))
    result, seen = execute(pipeline, manifest, client, clock)
    assert client.count("start") == 0
    assert client.count("wait") == 1
    assert result.counts == {RunState.COMPLETED: 2}
    assert result.starts == 0
    assert sum(isinstance(e, ev.RunReused) for e in seen) == 1
    assert any(isinstance(e, ev.RunAdopted) and e.how == "resumed" for e in seen)


def test_concurrency_and_one_start_per_app(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Never more than `concurrency` runs active, never two start requests in flight for one app."""
    client = FakeClient(clock)
    client.duration = 30.0
    pipeline = with_run(write_pipeline(tmp_path, rows(12), chain=True), concurrency=3)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 24}
    assert client.peak_active <= 3
    assert client.peak_starting == 1


def test_max_starts_stops_and_is_resumable(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """max_starts caps the starts of one invocation; the rest is left for the next one."""
    client = FakeClient(clock)
    pipeline = with_run(write_pipeline(tmp_path, rows(5)), max_starts=2, concurrency=1)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.stop_reason is StopReason.MAX_STARTS
    assert result.starts == 2
    assert client.count("start") == 2
    assert result.not_started == 3
    result, _ = execute(with_run(pipeline, max_starts=None), manifest, client, clock)
    assert result.stop_reason is StopReason.FINISHED
    assert result.counts == {RunState.COMPLETED: 5}
    assert client.count("start") == 5


def test_max_starts_equal_to_work_finishes_normally(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Reaching max_starts exactly with nothing left to start is a normal finish."""
    client = FakeClient(clock)
    pipeline = with_run(write_pipeline(tmp_path, rows(2)), max_starts=2)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.stop_reason is StopReason.FINISHED


def test_max_failures_stops_new_starts(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Past max_failures no new run is started and the stop reason says why."""
    client = FakeClient(clock)
    limit = FailureLimit(fraction=None, count=1)
    pipeline = with_run(write_pipeline(tmp_path, rows(6, fail={1, 2, 3, 4, 5, 6})), max_failures=limit, concurrency=1)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.stop_reason is StopReason.MAX_FAILURES
    assert client.count("start") == 2
    assert result.counts == {RunState.FAILED: 2}
    assert result.not_started == 4
    assert result.message is not None


def test_fatal_answer_stops_starts_and_keeps_run_pending(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A 401 on start stops every new start; the refused run goes back to pending (exit 3, resumable)."""
    client = FakeClient(clock)
    client.start_script = ["auth"]
    pipeline = with_run(write_pipeline(tmp_path, rows(3)), concurrency=1)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.stop_reason is StopReason.FATAL
    assert isinstance(result.fatal_error, AuthError)
    assert client.count("start") == 1
    assert states(manifest) == {RunState.PENDING: 1}
    assert result.not_started == 3


def test_sigint_returns_promptly_and_leaves_runs_running(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A signal stop abandons waiting at once; started runs stay `running` with their remote id."""
    client = FakeClient(clock)
    client.hang = True
    pipeline = with_run(write_pipeline(tmp_path, rows(6)), concurrency=3)
    executor = make_executor(pipeline, manifest, client, clock)

    async def go() -> RunResult:
        task = asyncio.create_task(executor.run())
        for _ in range(1000):
            if len(client.runs) == 3 and client.count("wait") == 3:
                break
            await asyncio.sleep(0)
        executor.request_stop(StopReason.SIGINT)
        return await asyncio.wait_for(task, 2)

    result = asyncio.run(go())
    assert result.stop_reason is StopReason.SIGINT
    assert states(manifest) == {RunState.RUNNING: 3}
    assert all(r.remote_id for r in manifest.iter_runs())
    assert len(client.runs) == 3


def _stop_during_start(tmp_path: Path, manifest: Manifest, clock: FakeClock, action: str) -> RunResult:
    client = FakeClient(clock)
    client.start_script = [action]
    client.hang = True
    pipeline = with_run(write_pipeline(tmp_path, rows(3)), concurrency=3)
    executor = make_executor(pipeline, manifest, client, clock, ExecOptions(start_grace=0.2))

    async def go() -> RunResult:
        task = asyncio.create_task(executor.run())
        for _ in range(1000):
            if client.runs:
                break
            await asyncio.sleep(0)
        executor.request_stop(StopReason.SIGINT)
        return await asyncio.wait_for(task, 5)

    return asyncio.run(go())


def test_start_unanswered_after_a_signal_is_left_submitting(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A start still unanswered when the grace after SIGINT ends is dropped: `submitting`, for resume to reconcile."""
    result = _stop_during_start(tmp_path, manifest, clock, "hang")
    assert result.stop_reason is StopReason.SIGINT
    assert states(manifest) == {RunState.SUBMITTING: 1}
    assert result.starts == 0


def test_start_answered_within_the_grace_after_a_signal_is_recorded(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A start whose reply arrives within the grace after SIGINT gets its remote id recorded (`running`)."""
    result = _stop_during_start(tmp_path, manifest, clock, "late")
    assert result.stop_reason is StopReason.SIGINT
    assert states(manifest) == {RunState.RUNNING: 1}
    assert all(r.remote_id for r in manifest.iter_runs())


def test_an_unwritable_manifest_stops_the_batch_and_is_raised(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A manifest write that fails mid-batch is not a run's failure: the batch stops at once (nothing more is
    started) and run() raises the error."""
    client = FakeClient(clock)
    pipeline = with_run(write_pipeline(tmp_path, rows(4)), concurrency=1)
    seen: list[object] = []

    def emit(event: object) -> None:
        seen.append(event)
        if isinstance(event, ev.RunStarted):
            manifest.close()  # every write from now on raises ManifestError

    executor = make_executor(pipeline, manifest, client, clock, emit=emit)
    with pytest.raises(ManifestError, match="already closed"):
        asyncio.run(executor.run())
    assert client.count("start") == 1
    assert any(isinstance(e, ev.Stopping) and e.reason is StopReason.FATAL for e in seen)


# --------------------------------------------------------------------------- runs that failed only because of upstream


def _chain_with_lost_hero(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> tuple[FakeClient, Path]:
    """Executions API, two rows: row 1's hero start reply is lost (hero `unknown`, its banner UPSTREAM_FAILED),
    row 2's banner fails remotely (a failure of its own, paid for)."""
    client = FakeClient(clock, dialect="executions")
    client.start_script = ["lost"]
    client.fail_first["app_banner"] = 1
    pipeline = with_run(write_pipeline(tmp_path, rows(2), chain=True, api="executions"), concurrency=1)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.UNKNOWN: 1, RunState.COMPLETED: 1, RunState.FAILED: 2}
    codes = sorted(str(r.error_code) for r in manifest.iter_runs(step_id="banner"))
    assert codes == ["RUN_FAILED", UPSTREAM_FAILED]
    return client, pipeline.path


def test_run_failed_only_by_its_upstream_waits_then_starts_once_the_upstream_completes(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A banner never started because its hero was `unknown` stays failed (kept, not restarted) while the hero
    is; once `--restart-unknown` completes the hero, the banner starts without `--retry-failed`, and the banner
    that failed on its own (already paid for) is not started again."""
    client, path = _chain_with_lost_hero(tmp_path, manifest, clock)
    pipeline = with_run(write_pipeline(tmp_path, rows(2), chain=True, api="executions"), concurrency=1)
    assert pipeline.path == path
    starts = client.count("start")
    result, seen = execute(pipeline, manifest, client, clock)
    assert client.count("start") == starts
    assert result.counts == {RunState.UNKNOWN: 1, RunState.COMPLETED: 1, RunState.FAILED: 2}
    waiting = [e for e in seen if isinstance(e, ev.RunFinished) and e.step_id == "banner" and e.row_number == 1]
    assert [(w.state, w.kept) for w in waiting] == [(RunState.FAILED, True)]
    assert "'hero' ended unknown" in (waiting[0].error or "")
    result, _ = execute(pipeline, manifest, client, clock, ExecOptions(restart_unknown=True))
    assert client.count("start") == starts + 2  # the hero again, then its banner; not the banner that failed
    assert result.counts == {RunState.COMPLETED: 3, RunState.FAILED: 1}
    failed = [r for r in manifest.iter_runs() if r.state is RunState.FAILED]
    assert [(r.step_id, r.row_number, r.error_code) for r in failed] == [("banner", 2, "RUN_FAILED")]


def test_waiting_run_says_how_its_upstream_ended_now(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """When the upstream it waits for ends another way (unknown, then failed on a restart), the waiting run's
    recorded reason follows; it stays failed UPSTREAM_FAILED and is never started."""
    client, _ = _chain_with_lost_hero(tmp_path, manifest, clock)
    client.fail_first["app_hero"] = 1
    pipeline = with_run(write_pipeline(tmp_path, rows(2), chain=True, api="executions"), concurrency=1)
    execute(pipeline, manifest, client, clock, ExecOptions(restart_unknown=True))
    banner = next(r for r in manifest.iter_runs(step_id="banner") if r.row_number == 1)
    assert (banner.state, banner.error_code, banner.attempts) == (RunState.FAILED, UPSTREAM_FAILED, 0)
    assert banner.error == "not started: upstream step 'hero' ended failed for this row"
