"""Unit tests of the executor against a scripted fake client, a fake clock and a real SQLite manifest."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamina_batch import events as ev
from lamina_batch.downloads import Downloader
from lamina_batch.errors import (
    AuthError,
    ConnectError,
    InputValidationError,
    ServerError,
    UnknownOutcomeError,
)
from lamina_batch.executor import (
    UPSTREAM_FAILED,
    ExecOptions,
    Executor,
    RunResult,
    StopReason,
    _Interrupted,
    _Pool,
    parse_timestamp,
)
from lamina_batch.manifest import Manifest
from lamina_batch.models import FailureLimit, Pipeline, RemoteRun, RunOutput, RunPage, RunState
from lamina_batch.spec import load_pipeline

# --------------------------------------------------------------------------- fakes


class FakeClock:
    """Wall and monotonic time in one: only `sleep` (and the fake server's holds) move it."""

    def __init__(self) -> None:
        self.t = time.time()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def iso(self) -> str:
        return datetime.fromtimestamp(self.t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


@dataclasses.dataclass
class FakeRun:
    run_id: str
    app_id: str
    inputs: dict[str, Any]
    created: float
    duration: float
    fail: bool
    status: str = "queued"
    hang: bool = False


class FakeClient:
    """Implements the LaminaClient methods the executor uses. Scripted start actions:
    ok | connect (nothing sent) | lost (run created, reply lost) | lost-none (nothing created, reply lost)
    | auth | invalid | hang (run created, the reply never comes) | late (run created, reply after 50 ms)."""

    def __init__(self, clock: FakeClock, *, dialect: str = "runs") -> None:
        self.clock = clock
        self.supports_wait = dialect == "runs"
        self.supports_list = dialect == "runs"
        self.supports_cancel = dialect == "runs"
        self.runs: dict[str, FakeRun] = {}
        self.start_script: list[str] = []
        self.wait_errors = 0
        self.fail_first: Counter[str] = Counter()
        self.fail_marker = "[[fail]]"
        self.duration = 0.0
        self.hang = False
        self.requests: list[tuple[str, str]] = []
        self.active = 0
        self.peak_active = 0
        self.starting: Counter[str] = Counter()
        self.peak_starting = 0
        self.cancelled: list[str] = []
        self.first_poll_delays: list[float] = []
        self.extra_listed: list[RemoteRun] = []
        self.durations: list[float] = []  # per created run, in order; then `duration`
        self.budget_bound = False

    def _n(self) -> str:
        return f"run_{len(self.runs) + 1:04d}"

    def _create(self, app_id: str, inputs: Mapping[str, Any]) -> FakeRun:
        fail = any(self.fail_marker in str(v) for v in inputs.values())
        if self.fail_first[app_id] > 0:
            self.fail_first[app_id] -= 1
            fail = True
        duration = self.durations.pop(0) if self.durations else self.duration
        run = FakeRun(self._n(), app_id, dict(inputs), self.clock.now(), duration, fail, hang=self.hang)
        self.runs[run.run_id] = run
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        return run

    def _remote(self, run: FakeRun) -> RemoteRun:
        done = run.status in ("completed", "failed", "cancelled")
        if not done and not run.hang and self.clock.now() >= run.created + run.duration - 1e-3:
            run.status = "failed" if run.fail else "completed"
            self.active -= 1
            done = True
        outputs: tuple[RunOutput, ...] = ()
        if run.status == "completed":
            outputs = (RunOutput("o1", "Image", "image", f"https://files.test/{run.run_id}.png", "completed"),)
        return RemoteRun(
            run.run_id,
            run.status,
            error_message="boom" if run.status == "failed" else None,
            created_at=iso(run.created),
            started_at=iso(run.created),
            completed_at=iso(min(run.created + run.duration, self.clock.now())) if done else None,
            outputs=outputs,
        )

    async def start(
        self, app_id: str, inputs: Mapping[str, Any], *, outputs: Any = None, webhook: str | None = None
    ) -> RemoteRun:
        self.requests.append(("start", app_id))
        self.starting[app_id] += 1
        self.peak_starting = max(self.peak_starting, self.starting[app_id])
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            self.starting[app_id] -= 1
        action = self.start_script.pop(0) if self.start_script else "ok"
        if action == "connect":
            raise ConnectError("refused")
        if action == "auth":
            raise AuthError("key rejected", status=401, code="AUTH_INVALID_KEY")
        if action == "invalid":
            raise InputValidationError("bad input", status=400, code="VALIDATION_ERROR")
        if action == "lost-none":
            raise UnknownOutcomeError("reply lost")
        run = self._create(app_id, inputs)
        if action == "hang":
            await asyncio.Event().wait()
        if action == "late":
            await asyncio.sleep(0.05)
        if action == "lost":
            raise UnknownOutcomeError("reply lost")
        return RemoteRun(run.run_id, "queued")

    async def wait(self, run_id: str, timeout: float = 60) -> RemoteRun:  # noqa: ASYNC109 - server-side hold
        self.requests.append(("wait", run_id))
        if self.wait_errors > 0:
            self.wait_errors -= 1
            raise ServerError("unavailable", status=503)
        run = self.runs[run_id]
        if run.hang:
            await asyncio.Event().wait()
        remote = self._remote(run)
        if not remote.terminal:
            self.clock.t += min(timeout, max(0.0, run.created + run.duration - self.clock.now()))
            remote = self._remote(run)
        return dataclasses.replace(remote, timed_out=not remote.terminal)

    async def get_run(self, run_id: str) -> RemoteRun:
        run = self.runs[run_id]
        if not any(r == ("get", run_id) for r in self.requests):
            self.first_poll_delays.append(self.clock.now() - run.created)
        self.requests.append(("get", run_id))
        return self._remote(run)

    async def list_runs(
        self,
        app_id: str | None = None,
        status: str | None = None,
        since: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> RunPage:
        self.requests.append(("list", app_id or ""))
        items = [self._remote(r) for r in reversed(self.runs.values()) if r.app_id == app_id]
        items = self.extra_listed + items
        page = items[offset : offset + limit]
        return RunPage(tuple(page), len(items), limit, offset)

    async def cancel(self, run_id: str) -> RemoteRun | None:
        self.requests.append(("cancel", run_id))
        run = self.runs[run_id]
        if run.status not in ("completed", "failed", "cancelled"):
            run.status = "cancelled"
            self.active -= 1
        self.cancelled.append(run_id)
        return self._remote(run)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.requests if k == kind)


# --------------------------------------------------------------------------- helpers


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def write_pipeline(
    tmp_path: Path,
    rows: list[dict[str, str]],
    *,
    chain: bool = False,
    api: str = "runs",
    download: bool = False,
    extra_step: str = "",
) -> Pipeline:
    lines = ["version: 1", "name: t", f"api: {api}", "matrix:", "  key: sku", "  rows:"]
    for r in rows:
        lines.append("    - {" + ", ".join(f'{k}: "{v}"' for k, v in r.items()) + "}")
    lines += [
        "steps:",
        "  - id: hero",
        "    app: app_hero",
        '    inputs: {Prompt: "photo of {{ row.name }}"}',
    ]
    if chain:
        lines += [
            "  - id: banner",
            "    app: app_banner",
            "    needs: [hero]",
            '    inputs: {Image: "{{ steps.hero.output }}"}',
        ]
    if extra_step:
        lines += extra_step.splitlines()
    if download:
        lines += ["download:", '  path: "out/{{ row.sku }}/{{ step.id }}{{ output.ext }}"']
    path = tmp_path / "p.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_pipeline(path)


def rows(n: int, fail: set[int] | None = None) -> list[dict[str, str]]:
    fail = fail or set()
    return [{"sku": f"S{i}", "name": f"item {i}{' [[fail]]' if i in fail else ''}"} for i in range(1, n + 1)]


def with_run(pipeline: Pipeline, **changes: Any) -> Pipeline:
    return dataclasses.replace(pipeline, run=dataclasses.replace(pipeline.run, **changes))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manifest(tmp_path: Path, clock: FakeClock) -> Iterator[Manifest]:
    m = Manifest.open(tmp_path / "t.sqlite", pipeline_name="t", writer=True, clock=clock.iso)
    yield m
    m.close()


def execute(
    pipeline: Pipeline,
    manifest: Manifest,
    client: FakeClient,
    clock: FakeClock,
    options: ExecOptions | None = None,
    downloader: Downloader | None = None,
) -> tuple[RunResult, list[Any]]:
    seen: list[Any] = []
    executor = Executor(
        pipeline,
        manifest,
        client,  # type: ignore[arg-type]
        options or ExecOptions(),
        emit=seen.append,
        downloader=downloader,
        clock=clock.now,
        wall_clock=clock.now,
        sleep=clock.sleep,
    )
    result = asyncio.run(executor.run())
    return result, seen


def states(manifest: Manifest) -> Counter[RunState]:
    return Counter(r.state for r in manifest.iter_runs())


# --------------------------------------------------------------------------- happy paths


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
    execute(pipeline, manifest, client, clock)
    first = next(manifest.iter_runs())
    # Pretend the first run was still running when the previous invocation stopped.
    manifest.set_state(first.identity, RunState.RUNNING)
    client.requests.clear()
    result, seen = execute(pipeline, manifest, client, clock)
    assert client.count("start") == 0
    assert client.count("wait") == 1
    assert result.counts == {RunState.COMPLETED: 2}
    assert result.starts == 0
    assert sum(isinstance(e, ev.RunReused) for e in seen) == 1
    assert any(isinstance(e, ev.RunAdopted) and e.how == "resumed" for e in seen)


# --------------------------------------------------------------------------- lost replies and reconcile


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


# --------------------------------------------------------------------------- transport trouble


def test_connect_error_on_start_retries_without_duplicates(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A start that was never sent goes back to pending and is retried after a backoff."""
    client = FakeClient(clock)
    client.start_script = ["connect", "connect"]
    result, _ = execute(write_pipeline(tmp_path, rows(1)), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 1}
    assert len(client.runs) == 1
    assert client.count("start") == 3
    assert len([s for s in clock.sleeps if s > 0]) >= 2


def test_wait_errors_never_fail_a_run(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Transport errors while waiting back off and keep waiting: the run still completes."""
    client = FakeClient(clock)
    client.wait_errors = 8
    result, _ = execute(write_pipeline(tmp_path, rows(2)), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 2}
    assert len(client.runs) == 2


# --------------------------------------------------------------------------- limits, timeouts, guards


def test_concurrency_and_one_start_per_app(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """Never more than `concurrency` runs active, never two start requests in flight for one app."""
    client = FakeClient(clock)
    client.duration = 30.0
    pipeline = with_run(write_pipeline(tmp_path, rows(12), chain=True), concurrency=3)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 24}
    assert client.peak_active <= 3
    assert client.peak_starting == 1


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


def test_validation_error_fails_only_that_run(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A 400 on start fails that run with the error code; the others go on."""
    client = FakeClient(clock)
    client.start_script = ["invalid"]
    pipeline = with_run(write_pipeline(tmp_path, rows(3)), concurrency=1)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 2, RunState.FAILED: 1}
    failed = next(manifest.iter_runs(states=[RunState.FAILED]))
    assert failed.error_code == "VALIDATION_ERROR"


def test_sigint_returns_promptly_and_leaves_runs_running(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A signal stop abandons waiting at once; started runs stay `running` with their remote id."""
    client = FakeClient(clock)
    client.hang = True
    pipeline = with_run(write_pipeline(tmp_path, rows(6)), concurrency=3)
    executor = Executor(
        pipeline,
        manifest,
        client,  # type: ignore[arg-type]
        ExecOptions(),
        clock=clock.now,
        wall_clock=clock.now,
        sleep=clock.sleep,
    )

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
    options = ExecOptions(start_grace=0.2)
    executor = Executor(pipeline, manifest, client, options, clock=clock.now, wall_clock=clock.now, sleep=clock.sleep)  # type: ignore[arg-type]

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


# --------------------------------------------------------------------------- polling (executions API)


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


# --------------------------------------------------------------------------- downloads


def _png_transport(calls: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(
            200, content=b"\x89PNG fake " + request.url.path.encode(), headers={"content-type": "image/png"}
        )

    return httpx.MockTransport(handler)


def test_downloads_written_recorded_and_refetched_on_resume(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """Completed outputs are downloaded and recorded; a deleted file is fetched again on resume."""
    client = FakeClient(clock)
    pipeline = write_pipeline(tmp_path, rows(2), download=True)
    calls: list[str] = []

    async def run_once() -> RunResult:
        async with httpx.AsyncClient(transport=_png_transport(calls)) as http:
            dl = Downloader(tmp_path, client=http, sleep=clock.sleep)
            executor = Executor(
                pipeline,
                manifest,
                client,  # type: ignore[arg-type]
                ExecOptions(),
                downloader=dl,
                clock=clock.now,
                wall_clock=clock.now,
                sleep=clock.sleep,
            )
            return await executor.run()

    result = asyncio.run(run_once())
    assert result.download_failures == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert files == ["out/S1/hero.png", "out/S2/hero.png"]
    assert all(len(r.downloads) == 1 for r in manifest.iter_runs())
    (tmp_path / "out/S1/hero.png").unlink()
    calls.clear()
    result = asyncio.run(run_once())
    assert len(calls) == 1
    assert (tmp_path / "out/S1/hero.png").exists()
    assert client.count("start") == 2


def test_download_failure_keeps_run_completed(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A download that fails keeps the run completed, records the error and counts it."""
    client = FakeClient(clock)
    pipeline = write_pipeline(tmp_path, rows(1), download=True)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    async def run_once() -> RunResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            dl = Downloader(tmp_path, client=http, sleep=clock.sleep)
            executor = Executor(
                pipeline,
                manifest,
                client,  # type: ignore[arg-type]
                ExecOptions(),
                downloader=dl,
                clock=clock.now,
                wall_clock=clock.now,
                sleep=clock.sleep,
            )
            return await executor.run()

    result = asyncio.run(run_once())
    assert result.download_failures == 1
    (rec,) = manifest.iter_runs()
    assert rec.state is RunState.COMPLETED
    assert "download" in (rec.error or "")


# --------------------------------------------------------------------------- small pieces


def test_parse_timestamp_accepts_z_and_naive() -> None:
    """Server and manifest timestamps parse to the same epoch whether written with Z, offset or naive."""
    a = parse_timestamp("2024-05-01T10:00:00Z")
    assert a is not None
    assert parse_timestamp("2024-05-01T10:00:00+00:00") == a
    assert parse_timestamp("2024-05-01T10:00:00") == a
    assert parse_timestamp("garbage") is None


# --------------------------------------------------------------------------- the pool and _until


def test_pool_hands_places_over_in_order_and_a_stop_interrupts_only_its_waiters() -> None:
    """A freed place goes to the longest waiter; interrupt() wakes only waiters whose stop is set."""

    async def scenario() -> list[str]:
        pool = _Pool(2)
        soft, hard = asyncio.Event(), asyncio.Event()
        order: list[str] = []

        async def take(name: str, stop: asyncio.Event) -> None:
            try:
                await pool.acquire(stop)
            except _Interrupted:
                order.append(f"{name}:interrupted")
                return
            order.append(name)

        await take("a", soft)
        await take("b", soft)
        waiters = [asyncio.create_task(take(n, s)) for n, s in (("c", soft), ("d", hard), ("e", soft))]
        await asyncio.sleep(0)
        hard.set()
        pool.interrupt()
        assert pool.release() is True  # to c, the longest waiter
        await asyncio.sleep(0)
        assert pool.release() is True  # to e: d was interrupted
        await asyncio.gather(*waiters)
        assert pool.release() is False
        assert pool.release() is False
        return order

    assert asyncio.run(scenario()) == ["a", "b", "d:interrupted", "c", "e"]


def test_pool_place_handed_to_a_cancelled_waiter_passes_on() -> None:
    """A waiter cancelled just after a place was handed to it passes the place on instead of losing it."""

    async def scenario() -> bool:
        pool = _Pool(1)
        stop = asyncio.Event()
        await pool.acquire(stop)
        first = asyncio.create_task(pool.acquire(stop))
        second = asyncio.create_task(pool.acquire(stop))
        await asyncio.sleep(0)
        pool.release()  # handed to `first` ...
        first.cancel()  # ... which is cancelled before it runs
        await asyncio.sleep(0)
        await second
        return first.cancelled()

    assert asyncio.run(scenario())


def test_until_turns_a_stop_into_interrupted_but_lets_other_cancels_through(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A stop ends a wait in _until with _Interrupted; a cancel from anyone else stays a CancelledError."""
    pipeline = write_pipeline(tmp_path, rows(1))
    executor = Executor(pipeline, manifest, FakeClient(clock), ExecOptions(), clock=clock.now, wall_clock=clock.now)  # type: ignore[arg-type]

    async def scenario() -> tuple[str, str, bool]:
        never = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()

        async def wait_on(fut: asyncio.Future[None]) -> str:
            try:
                await executor._until(fut, stop)  # type: ignore[arg-type]
            except _Interrupted:
                return "interrupted"
            return "done"

        stopped = asyncio.create_task(wait_on(never))
        await asyncio.sleep(0)
        stop.set()
        executor._interrupt_gates()
        first = await stopped
        cancelled = asyncio.create_task(executor._until(asyncio.sleep(3600), asyncio.Event()))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return first, "cancelled", stopped.cancelling() == 0

    assert asyncio.run(scenario()) == ("interrupted", "cancelled", True)
