"""The asyncio executor: streams the plan, write-ahead starts, /wait long-polls or adaptive polling, reconciles
lost start replies, enforces timeouts, retries and guards, and stops cleanly on signals. Every step of every run
is committed to the manifest; progress is reported only through `events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .crash import crashpoint
from .downloads import guess_ext
from .errors import (
    ApiError,
    BatchFatalError,
    ConnectError,
    DownloadError,
    NotFoundError,
    RateLimitedError,
    ReadTimeoutError,
    ServerError,
    TemplateError,
    TransientError,
    UnknownOutcomeError,
)
from .events import (
    DownloadFailed,
    Event,
    Notice,
    Reconciled,
    RunAdopted,
    RunFinished,
    RunRetrying,
    RunReused,
    RunStarted,
    Stopping,
    StopReason,
)
from .matrix import expand_runs, render_inputs
from .models import ItemPlan, PlannedRun, RemoteRun, RunOutput, RunRecord, RunState
from .templates import render_download_path

if TYPE_CHECKING:
    from .client import LaminaClient
    from .downloads import Downloader
    from .manifest import Manifest
    from .models import Pipeline
    from .webhooks import Delivery, WebhookReceiver

__all__ = [
    "UPSTREAM_FAILED",
    "ExecOptions",
    "Executor",
    "RunResult",
    "StopReason",
    "crashpoint",
    "parse_timestamp",
]

T = TypeVar("T")

UPSTREAM_FAILED = "UPSTREAM_FAILED"
RUN_FAILED = "RUN_FAILED"
TEMPLATE_ERROR = "TEMPLATE_ERROR"
START_UNKNOWN = "START_UNKNOWN"

# Server clocks and ours disagree a little; a run created "before" our intent by less than this still counts.
CLOCK_SKEW = 10.0
# After a signal, in-flight start requests get this long to answer and be recorded; an abandoned one stays
# `submitting` without a remote id, which the next invocation reconciles, so cutting it short is still safe.
START_GRACE = 5.0
_NOTICE_EVERY = 10.0
# A completed run's record, or (runs API) a start's remote id, waits at most this long for another commit to share
# its fsync.
FINISH_FLUSH_DELAY = 0.05
_LIST_PAGE = 100
# Executions API, while the request budget binds: the first status poll waits for this quantile of the app's
# learned durations (not the median), so about one run in twenty needs a second poll instead of one in two.
LATE_FIRST_POLL_QUANTILE = 0.95

# --------------------------------------------------------------------------- public values


@dataclass(frozen=True)
class ExecOptions:
    """Per-invocation choices that are not part of the pipeline's `run:` block."""

    retry_failed: bool = False
    restart_unknown: bool = False
    shard: tuple[int, int] | None = None
    wait_timeout: float = 60.0  # seconds per /wait call (runs API), 1..120
    webhook_url: str | None = None
    listen: tuple[str, int] | None = None
    # seconds to wait for a run's webhook before polling it; None = max(60 s, 2 x the app's median duration)
    webhook_grace: float | None = None
    # after a SIGINT/SIGTERM, seconds a start already sent gets to answer (its id recorded) before it is dropped
    start_grace: float = START_GRACE


@dataclass(frozen=True)
class RunResult:
    """What one `Executor.run` did. `counts` covers every planned run it reached (reused ones included) by its
    state at the end; runs never started are in `not_started` instead."""

    stop_reason: StopReason
    counts: Mapping[RunState, int]
    not_started: int
    starts: int
    download_failures: int
    fatal_error: ApiError | None = None
    message: str | None = None


def parse_timestamp(value: str | None) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp (naive means UTC), or None if absent or unparsable."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _remote_duration(remote: RemoteRun) -> float | None:
    end = parse_timestamp(remote.completed_at)
    start = parse_timestamp(remote.started_at) or parse_timestamp(remote.created_at)
    if end is None or start is None or end < start:
        return None
    return end - start


# --------------------------------------------------------------------------- internal values


class _Interrupted(Exception):
    """The awaited thing was abandoned because a stop was requested."""


@dataclass(frozen=True)
class _Outcome:
    """How one run ended for this invocation. `state` None: not started; `in_flight`: left running/submitting."""

    state: RunState | None
    outputs: tuple[RunOutput, ...] = ()
    in_flight: RunState | None = None


_NOT_STARTED = _Outcome(None)


@dataclass(frozen=True)
class _Started:
    remote_id: str
    submitted_at: float
    first: RemoteRun | None


@dataclass(frozen=True)
class _TimedOut:
    remote: RemoteRun | None = None


@dataclass
class _Backoff:
    """Exponential backoff with jitter for the executor's own retry loops (the client has its own)."""

    base: float = 1.0
    cap: float = 30.0
    n: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next(self, at_least: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2.0**self.n)
        self.n += 1
        delay = self.rng.uniform(ceiling / 2, ceiling)
        if at_least is not None:
            delay = max(delay, at_least)
        return delay

    def reset(self) -> None:
        self.n = 0


def _describe(e: BaseException) -> str:
    if isinstance(e, ApiError):
        return e.message
    return str(e) or e.__class__.__name__


class _Pool:
    """A FIFO counting semaphore (size 1: the one-start-in-flight-per-app lock) that hands a freed place
    straight to the next waiter (one loop turn, no watcher task per waiter) and whose waiters a stop
    interrupts (`interrupt`)."""

    def __init__(self, size: int = 1) -> None:
        self._free = size
        self._waiters: deque[tuple[asyncio.Future[None], asyncio.Event]] = deque()

    async def acquire(self, stop: asyncio.Event) -> None:
        """Take a place, or raise _Interrupted if `stop` is (or becomes) set first."""
        if stop.is_set():
            raise _Interrupted
        if self._free > 0:
            self._free -= 1
            return
        entry = (asyncio.get_running_loop().create_future(), stop)
        self._waiters.append(entry)
        try:
            await entry[0]
        except BaseException:
            fut = entry[0]
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise

    def release(self) -> bool:
        """Give a place back; True when it passed straight to a waiter."""
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the place passes on; _free is unchanged
                return True
        self._free += 1
        return False

    def interrupt(self) -> None:
        """Wake every waiter whose stop event is set with _Interrupted."""
        for entry in [e for e in self._waiters if e[1].is_set()]:
            self._waiters.remove(entry)
            if not entry[0].done():
                entry[0].set_exception(_Interrupted())


# --------------------------------------------------------------------------- the executor


class Executor:
    """Runs every planned run of a pipeline once, resuming from and recording into the manifest."""

    def __init__(
        self,
        pipeline: Pipeline,
        manifest: Manifest,
        client: LaminaClient,
        options: ExecOptions,
        *,
        emit: Callable[[Event], None] = lambda e: None,
        downloader: Downloader | None = None,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        import time

        self._p = pipeline
        self._m = manifest
        self._c = client
        self._o = options
        self._emit_cb = emit
        self._dl = downloader
        self._clock = clock or time.monotonic
        self._now = wall_clock or time.time
        self._sleep = sleep
        self._rng = rng or random.Random()
        settings = pipeline.run
        self._settings = settings
        self._slots = _Pool(max(1, settings.concurrency))
        self._step_caps = {
            s.id: _Pool(s.concurrency)
            for s in pipeline.steps
            if s.concurrency is not None and s.concurrency < settings.concurrency
        }
        self._app_locks: defaultdict[str, _Pool] = defaultdict(_Pool)
        self._pools: list[_Pool] = [self._slots, *self._step_caps.values()]  # beside the app locks
        self._never = asyncio.Event()  # a stop that never comes (crash leftovers are reconciled regardless)
        self._until_waiting: defaultdict[asyncio.Event, set[asyncio.Task[Any]]] = defaultdict(set)
        self._until_stopped: set[asyncio.Task[Any]] = set()  # tasks in _until that a stop cancelled
        self._no_starts = asyncio.Event()  # set by any stop: nothing new is started
        self._hard = asyncio.Event()  # set by a signal: waiting is abandoned too
        self._stop_reason: StopReason | None = None
        self._message: str | None = None
        self._fatal: ApiError | None = None
        self._starts = 0
        self._reserved = 0  # starts sent or being sent that may have created a run
        self._starting: set[asyncio.Task[Any]] = set()  # tasks awaiting a start reply
        self._grace_cancelled: set[asyncio.Task[Any]] = set()  # ... that a hard stop's grace ran out on
        self._finished = 0
        self._bad = 0
        self._counts: Counter[RunState] = Counter()
        self._not_started = 0
        self._download_failures = 0
        self._last_notice: dict[str, float] = {}
        self._start_backoffs: dict[str, _Backoff] = {}
        self._receiver: WebhookReceiver | None = None
        self._hooked: dict[str, RemoteRun] = {}  # terminal runs reported by webhook, by remote id
        self._hook_waiters: dict[str, asyncio.Future[RemoteRun]] = {}
        self._error: BaseException | None = None
        self._flush_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ public

    def request_stop(self, reason: StopReason) -> None:
        """Stop starting runs. SIGINT/SIGTERM also abandon waiting (runs stay `running`) and return promptly;
        the other reasons let in-flight runs finish. Call it from the event loop's thread."""
        hard = reason in (StopReason.SIGINT, StopReason.SIGTERM)
        if hard:
            if self._hard.is_set():
                return
            self._stop_reason = reason
            self._set_hard()
        elif self._stop_reason is not None:
            return
        else:
            self._stop_reason = reason
        self._no_starts.set()
        self._interrupt_gates()
        self._emit(Stopping(reason, self._message))

    async def run(self) -> RunResult:
        """Run the batch until every planned run is finished or a stop was requested; never raises for a run's
        own failure (it is recorded), only for bugs and manifest errors."""
        try:
            await self._prepass()
            if not self._hard.is_set():
                if self._o.webhook_url is not None and self._o.listen is not None:
                    await self._start_receiver(*self._o.listen)
                try:
                    await self._stream()
                finally:
                    if self._flush_handle is not None:
                        self._flush_handle.cancel()
                        self._flush_handle = None
                    self._m.flush()
                    if self._receiver is not None:
                        await self._receiver.stop()
                        self._receiver = None
        finally:
            self._until_waiting.clear()
        if self._error is not None:
            raise self._error
        return RunResult(
            stop_reason=self._stop_reason or StopReason.FINISHED,
            counts=dict(self._counts),
            not_started=self._not_started,
            starts=self._starts,
            download_failures=self._download_failures,
            fatal_error=self._fatal,
            message=self._message,
        )

    # ------------------------------------------------------------------ plumbing

    def _emit(self, event: Event) -> None:
        self._emit_cb(event)

    def _notice(self, key: str, message: str) -> None:
        now = self._clock()
        last = self._last_notice.get(key)
        if last is None or now - last >= _NOTICE_EVERY:
            self._last_notice[key] = now
            self._emit(Notice(message))

    def _soft_stop(self, reason: StopReason, message: str) -> None:
        if self._stop_reason is None:
            self._message = message
        self.request_stop(reason)

    def _interrupt_gates(self) -> None:
        """After a stop event was set: wake whoever waits on it (pools, app locks, _until)."""
        for gate in self._app_locks.values():
            gate.interrupt()
        for pool in self._pools:
            pool.interrupt()
        # A task that sets a stop itself is not inside its await: it sees the stop at its next check.
        me = asyncio.current_task()
        for stop, tasks in self._until_waiting.items():
            if stop.is_set():
                for task in tasks:
                    if task is not me and task not in self._until_stopped:
                        self._until_stopped.add(task)
                        task.cancel()

    async def _until(self, aw: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
        """Await `aw` in this task unless `stop` is set first; then cancel it and raise _Interrupted.
        A stop cancels the waiting task itself (as asyncio.timeout does): no helper task, no extra loop turns
        on every poll."""
        if stop.is_set():
            aw.close()
            raise _Interrupted
        me = asyncio.current_task()
        assert me is not None
        waiting = self._until_waiting[stop]
        waiting.add(me)
        try:
            return await aw
        except asyncio.CancelledError:
            if me not in self._until_stopped:
                raise
            self._until_stopped.discard(me)
            me.uncancel()
            raise _Interrupted from None
        finally:
            waiting.discard(me)
            if me in self._until_stopped:  # `aw` swallowed the cancellation: take the request back
                self._until_stopped.discard(me)
                me.uncancel()

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        await self._until(self._sleep(max(0.0, seconds)), stop)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def _slot(self, run: PlannedRun, stop: asyncio.Event) -> AsyncIterator[None]:
        # The step cap first: holding a global slot while queueing for a step cap would starve other steps.
        cap = self._step_caps.get(run.step_id)
        if cap is not None:
            await cap.acquire(stop)
        try:
            await self._slots.acquire(stop)
            try:
                yield
            finally:
                self._slots.release()
        finally:
            if cap is not None:
                cap.release()

    # ------------------------------------------------------------------ streaming the plan

    async def _stream(self) -> None:
        live = _Pool(max(2, 2 * self._settings.concurrency))
        self._pools.append(live)
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            live.release()
            if not task.cancelled() and task.exception() is not None and self._error is None:
                self._error = task.exception()
                self.request_stop(StopReason.FATAL)
                self._set_hard()
                self._interrupt_gates()

        try:
            for plan in expand_runs(self._p, shard=self._o.shard):
                try:
                    await live.acquire(self._hard)
                except _Interrupted:
                    break
                task = asyncio.create_task(self._item(plan))
                tasks.add(task)
                task.add_done_callback(done)
            while tasks:
                await asyncio.wait(set(tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise

    async def _item(self, plan: ItemPlan) -> None:
        if len(plan.runs) == 1:
            await self._run_accounted(plan.runs[0], {})
            return
        by_step: dict[str, asyncio.Task[_Outcome]] = {}
        for run in plan.runs:
            upstream = {step_id: by_step[step_id] for step_id in run.needs if step_id in by_step}
            by_step[run.step_id] = asyncio.create_task(self._run_accounted(run, upstream))
        await asyncio.gather(*by_step.values())

    async def _run_accounted(self, run: PlannedRun, upstream_tasks: Mapping[str, asyncio.Task[_Outcome]]) -> _Outcome:
        outcome = await self._run(run, upstream_tasks)
        if outcome.state is not None:
            self._counts[outcome.state] += 1
        elif outcome.in_flight is not None:
            self._counts[outcome.in_flight] += 1
        else:
            self._not_started += 1
        return outcome

    # ------------------------------------------------------------------ one run

    async def _run(self, run: PlannedRun, upstream_tasks: Mapping[str, asyncio.Task[_Outcome]]) -> _Outcome:
        upstream: dict[str, tuple[RunOutput, ...]] = {}
        failed_upstream: list[tuple[str, RunState]] = []
        unfinished_upstream = False
        for step_id, task in upstream_tasks.items():
            up = await task
            if up.state is RunState.COMPLETED:
                upstream[step_id] = up.outputs
            elif up.state is None:
                unfinished_upstream = True
            else:
                failed_upstream.append((step_id, up.state))
        rec = self._m.get(run.identity)
        if rec is not None and rec.state is RunState.COMPLETED:
            await self._reuse(run, rec, upstream)
            return _Outcome(RunState.COMPLETED, rec.outputs)
        following = rec is not None and rec.remote_id is not None and rec.state in _LIVE_STATES
        if not following:
            if unfinished_upstream:
                return _NOT_STARTED
            if failed_upstream:
                return self._upstream_failed(run, rec, failed_upstream)
            if rec is not None and rec.state.bad and not self._may_restart(rec.state):
                self._emit(_finished_event(run, rec.state, rec.error, kept=True))
                return _Outcome(rec.state)
        return await self._attempts(run, rec, upstream)

    def _record_failure(self, run: PlannedRun, message: str, code: str) -> None:
        """A run that fails without any request (its upstream failed, its inputs do not render)."""
        self._m.ensure_planned(run)
        self._m.finish(run.identity, RunState.FAILED, error=message, error_code=code)

    def _may_restart(self, state: RunState) -> bool:
        if state is RunState.UNKNOWN:
            return self._o.restart_unknown
        return self._o.retry_failed

    def _upstream_failed(
        self, run: PlannedRun, rec: RunRecord | None, failed: Sequence[tuple[str, RunState]]
    ) -> _Outcome:
        if (
            rec is not None
            and rec.state is RunState.FAILED
            and rec.error_code == UPSTREAM_FAILED
            and not self._o.retry_failed
        ):
            self._emit(_finished_event(run, rec.state, rec.error, kept=True))
            return _Outcome(RunState.FAILED)
        step_id, state = failed[0]
        message = f"not started: upstream step '{step_id}' ended {state.value} for this row"
        self._record_failure(run, message, UPSTREAM_FAILED)
        self._emit(_finished_event(run, RunState.FAILED, message))
        return _Outcome(RunState.FAILED)

    async def _attempts(
        self, run: PlannedRun, rec: RunRecord | None, upstream: Mapping[str, Sequence[RunOutput]]
    ) -> _Outcome:
        retries_left = self._settings.retries
        attempt = 0
        while True:
            attempt += 1
            following = rec is not None and rec.remote_id is not None and rec.state in _LIVE_STATES
            stop = self._hard if following else self._no_starts
            try:
                async with self._slot(run, stop):
                    if following:
                        assert rec is not None
                        assert rec.remote_id is not None
                        started: _Started | _Outcome = _Started(
                            rec.remote_id, parse_timestamp(rec.submitted_at) or self._now(), None
                        )
                        self._emit(_adopted(run, rec.remote_id, "resumed"))
                    else:
                        started = await self._start(run, rec, upstream)
                    if isinstance(started, _Outcome):
                        return started
                    try:
                        result = await self._follow(run, started)
                    except _Interrupted:
                        return _Outcome(None, in_flight=RunState.RUNNING)
            except _Interrupted:
                return _NOT_STARTED
            rec = None
            if isinstance(result, _TimedOut):
                return self._finish_bad(run, RunState.TIMED_OUT, self._timeout_message(result), "TIMEOUT")
            if result.status == "completed":
                return await self._complete(run, result, upstream)
            if result.status == "cancelled":
                return self._finish_bad(run, RunState.CANCELLED, result.error_message or "cancelled remotely", None)
            error = result.error_message or "the run failed"
            if retries_left > 0:
                retries_left -= 1
                self._m.finish(run.identity, RunState.FAILED, error=error, error_code=RUN_FAILED)
                self._emit(RunRetrying(run.identity, run.step_id, run.item.row_number, attempt + 1, error))
                continue
            return self._finish_bad(run, RunState.FAILED, error, RUN_FAILED)

    def _timeout_message(self, result: _TimedOut) -> str:
        limit = _human_seconds(self._settings.timeout)
        if not self._c.supports_cancel:
            return f"timed out after {limit} (this API cannot cancel it remotely)"
        if result.remote is not None and result.remote.status == "cancelled":
            return f"timed out after {limit}; the remote run was cancelled"
        return f"timed out after {limit}; cancelling the remote run failed"

    def _finish_bad(self, run: PlannedRun, state: RunState, error: str, code: str | None) -> _Outcome:
        self._m.finish(run.identity, state, error=error, error_code=code)
        self._emit(_finished_event(run, state, error))
        self._judge(state)
        return _Outcome(state)

    def _judge(self, state: RunState) -> None:
        self._finished += 1
        if state.bad:
            self._bad += 1
        limit = self._settings.max_failures
        if state.bad and limit.exceeded(self._bad, self._finished):
            self._soft_stop(
                StopReason.MAX_FAILURES,
                f"{self._bad} of {self._finished} finished runs failed, past max_failures",
            )

    # ------------------------------------------------------------------ starting

    def _may_start(self) -> bool:
        if self._no_starts.is_set():
            return False
        limit = self._settings.max_starts
        if limit is not None and self._reserved >= limit:
            self._soft_stop(StopReason.MAX_STARTS, f"max_starts reached: {self._starts} runs started")
            return False
        return True

    async def _start(
        self, run: PlannedRun, rec: RunRecord | None, upstream: Mapping[str, Sequence[RunOutput]]
    ) -> _Started | _Outcome:
        lock = self._app_locks[run.app_id]
        pending_reconcile = rec is not None and rec.state is RunState.SUBMITTING and rec.remote_id is None
        while True:
            if not pending_reconcile and not self._may_start():
                return _NOT_STARTED
            wait: float | None = None
            try:
                await lock.acquire(self._no_starts if not pending_reconcile else self._hard)
            except _Interrupted:
                return _NOT_STARTED if not pending_reconcile else _Outcome(None, in_flight=RunState.SUBMITTING)
            released = False
            try:
                if pending_reconcile:
                    pending_reconcile = False
                    assert rec is not None
                    verdict = await self._reconcile_locked(run, rec)
                    if verdict is not None:
                        return verdict
                    continue
                if not self._may_start():
                    return _NOT_STARTED
                outcome = await self._start_locked(run, upstream)
                if isinstance(outcome, float):
                    wait = outcome
                else:
                    released = True
                    if lock.release() and isinstance(outcome, _Started):
                        # Starts of an app are serial: let the next one go out before this run sends its
                        # first poll, so the poll is built while that start is in flight, not before it.
                        await asyncio.sleep(0)
                    return outcome
            finally:
                if not released:
                    lock.release()
            if wait is not None:
                try:
                    await self._pause(wait, self._no_starts)
                except _Interrupted:
                    return _NOT_STARTED

    async def _start_locked(
        self, run: PlannedRun, upstream: Mapping[str, Sequence[RunOutput]]
    ) -> _Started | _Outcome | float:
        """One start under the app lock: a float result means 'nothing was created, retry after this delay'."""
        try:
            inputs = render_inputs(self._p, run, upstream)
        except TemplateError as e:
            self._record_failure(run, str(e), TEMPLATE_ERROR)
            self._emit(_finished_event(run, RunState.FAILED, str(e)))
            return _Outcome(RunState.FAILED)
        crashpoint("before-intent")
        rec = self._m.begin_attempt(run, inputs)
        crashpoint("after-intent")
        submitted = parse_timestamp(rec.submitted_at) or self._now()
        self._reserved += 1
        try:
            remote = await self._send_start(run, inputs)
        except _Interrupted:
            return _Outcome(None, in_flight=RunState.SUBMITTING)
        except (ConnectError, RateLimitedError) as e:
            self._reserved -= 1
            self._m.set_state(run.identity, RunState.PENDING)
            delay = self._start_backoff(run.app_id).next(getattr(e, "retry_after", None))
            self._notice(
                f"start:{type(e).__name__}",
                f"start of {run.step_id} not sent ({_describe(e)}); trying again in {delay:.0f} s",
            )
            return delay
        except (UnknownOutcomeError, ServerError, ReadTimeoutError) as e:
            self._notice("start:unknown", f"start reply lost for {run.step_id} ({_describe(e)}): reconciling")
            fresh = self._m.get(run.identity)
            assert fresh is not None
            verdict = await self._reconcile_locked(run, fresh, counted=True)
            if verdict is None:
                return 0.0
            return verdict
        except BatchFatalError as e:
            self._reserved -= 1
            self._m.set_state(run.identity, RunState.PENDING)
            if self._fatal is None:
                self._fatal = e
            self._soft_stop(StopReason.FATAL, _describe(e))
            return _NOT_STARTED
        except ApiError as e:
            # RunFatalError and any other definite refusal: nothing was created.
            self._reserved -= 1
            code = e.code or ("NOT_FOUND" if isinstance(e, NotFoundError) else "START_REFUSED")
            self._m.finish(run.identity, RunState.FAILED, error=str(e), error_code=code, request_id=e.request_id)
            self._emit(_finished_event(run, RunState.FAILED, str(e)))
            self._judge(RunState.FAILED)
            return _Outcome(RunState.FAILED)
        crashpoint("after-reply")
        # The id rides with the next write: the app's next intent (one fsync for both, and that start cannot
        # leave before this id is durable) or the timer flush within FINISH_FLUSH_DELAY, whichever comes first.
        # Only where a crash in between can be reconciled from the runs list (the one unaccounted run of this
        # app is adopted): on the executions API a lost id would make the run `unknown`, so it commits at once.
        defer = self._c.supports_list
        self._m.set_remote_id(run.identity, remote.run_id, remote, defer=defer)
        crashpoint("after-id")
        if defer:
            self._schedule_flush()
        self._starts += 1
        self._start_backoff(run.app_id).reset()
        self._emit(
            RunStarted(run.identity, run.step_id, run.item.row_number, run.item.key, remote.run_id, rec.attempts)
        )
        return _Started(remote.run_id, submitted, remote)

    def _start_backoff(self, app_id: str) -> _Backoff:
        backoff = self._start_backoffs.get(app_id)
        if backoff is None:
            backoff = self._start_backoffs[app_id] = _Backoff(rng=self._rng)
        return backoff

    async def _send_start(self, run: PlannedRun, inputs: Mapping[str, Any]) -> RemoteRun:
        """The start request, awaited in this run's own task: starts of one app are serial, so every loop turn
        spent on a helper task here would be paid by every later start. A hard stop gives it `start_grace`
        seconds to answer (its reply is still recorded), then cancels it: _Interrupted."""
        me = asyncio.current_task()
        assert me is not None
        self._starting.add(me)
        try:
            return await self._c.start(run.app_id, inputs, outputs=run.output_labels, webhook=self._o.webhook_url)
        except asyncio.CancelledError:
            if me not in self._grace_cancelled:
                raise
            self._grace_cancelled.discard(me)
            me.uncancel()
            raise _Interrupted from None
        finally:
            self._starting.discard(me)

    def _set_hard(self) -> None:
        """Abandon waiting; starts in flight get `start_grace` seconds to answer, then are cancelled."""
        if self._hard.is_set():
            return
        self._hard.set()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing can be in flight
            asyncio.get_running_loop().call_later(self._o.start_grace, self._end_grace)

    def _end_grace(self) -> None:
        for task in list(self._starting):
            self._grace_cancelled.add(task)
            task.cancel()

    # ------------------------------------------------------------------ reconciling lost start replies

    async def _prepass(self) -> None:
        """Reconcile crash leftovers (`submitting` without a remote id) before anything new is started."""
        leftovers = [r for r in self._m.iter_runs(states=[RunState.SUBMITTING]) if r.remote_id is None]
        by_app: dict[str, list[RunRecord]] = defaultdict(list)
        for r in leftovers:
            by_app[r.app_id].append(r)
        for app_id, recs in by_app.items():
            recs.sort(key=lambda r: r.submitted_at or "", reverse=True)
            gate = self._app_locks[app_id]
            await gate.acquire(self._never)
            try:
                for r in recs:
                    try:
                        await self._reconcile(r)
                    except _Interrupted:
                        return
            finally:
                gate.release()

    async def _reconcile_locked(
        self, run: PlannedRun, rec: RunRecord, *, counted: bool = False
    ) -> _Started | _Outcome | None:
        """Reconcile `rec` (app lock held): a _Started to follow, a final _Outcome, or None to start again."""
        if not counted:
            self._reserved += 1
        try:
            verdict, remote = await self._reconcile(rec)
        except _Interrupted:
            return _Outcome(None, in_flight=RunState.SUBMITTING)
        if verdict == "adopted":
            assert remote is not None
            self._starts += 1
            self._emit(_adopted(run, remote.run_id, "reconciled"))
            submitted = parse_timestamp(rec.submitted_at) or self._now()
            return _Started(remote.run_id, submitted, None)
        if verdict == "restart":
            self._reserved -= 1
            return None
        self._emit(_finished_event(run, RunState.UNKNOWN, self._m_error(rec.identity)))
        self._judge(RunState.UNKNOWN)
        return _Outcome(RunState.UNKNOWN)

    def _m_error(self, identity: str) -> str | None:
        fresh = self._m.get(identity)
        return fresh.error if fresh is not None else None

    async def _reconcile(self, rec: RunRecord) -> tuple[str, RemoteRun | None]:
        """Decide a `submitting` record without remote id: adopt one listed run, restart, or mark unknown.
        The caller holds the app's start lock, so no start of ours for this app can race the listing."""
        if not self._c.supports_list:
            if self._o.restart_unknown:
                self._m.set_state(rec.identity, RunState.PENDING)
                self._emit(Reconciled(rec.identity, rec.step_id, "restart", None, "--restart-unknown"))
                return "restart", None
            msg = (
                "the start reply was lost and this API cannot list runs, so it may or may not be running; "
                "use --restart-unknown to start it again"
            )
            self._m.set_state(rec.identity, RunState.UNKNOWN, error=msg, error_code=START_UNKNOWN)
            self._emit(Reconciled(rec.identity, rec.step_id, "unknown", None, msg))
            return "unknown", None
        candidates = await self._list_unaccounted(rec)
        if len(candidates) == 1:
            remote = candidates[0]
            self._m.set_remote_id(rec.identity, remote.run_id, remote)
            self._emit(Reconciled(rec.identity, rec.step_id, "adopted", remote.run_id))
            return "adopted", remote
        if not candidates:
            self._m.set_state(rec.identity, RunState.PENDING)
            self._emit(Reconciled(rec.identity, rec.step_id, "restart", None, "no run was created"))
            return "restart", None
        ids = ", ".join(c.run_id for c in candidates[:5])
        msg = f"the start reply was lost and {len(candidates)} unaccounted runs of this app exist ({ids})"
        self._m.set_state(rec.identity, RunState.UNKNOWN, error=msg, error_code=START_UNKNOWN)
        self._emit(Reconciled(rec.identity, rec.step_id, "unknown", None, msg))
        return "unknown", None

    async def _list_unaccounted(self, rec: RunRecord) -> list[RemoteRun]:
        since = (parse_timestamp(rec.submitted_at) or self._now()) - CLOCK_SKEW
        known = self._m.known_remote_ids(rec.app_id)
        found: list[RemoteRun] = []
        offset = 0
        backoff = _Backoff(rng=self._rng)
        while True:
            try:
                page = await self._until(
                    self._c.list_runs(app_id=rec.app_id, since=_iso(since), limit=_LIST_PAGE, offset=offset),
                    self._hard,
                )
            except BatchFatalError as e:
                if self._fatal is None:
                    self._fatal = e
                self._soft_stop(StopReason.FATAL, _describe(e))
                raise _Interrupted from None
            except (TransientError, UnknownOutcomeError) as e:
                delay = backoff.next(getattr(e, "retry_after", None))
                self._notice("list", f"listing runs to reconcile failed ({_describe(e)}); retrying in {delay:.0f} s")
                await self._pause(delay, self._hard)
                continue
            older = False
            for item in page.items:
                created = parse_timestamp(item.created_at)
                if created is not None and created < since:
                    older = True
                    break
                if item.run_id not in known:
                    found.append(item)
            offset += len(page.items)
            if older or not page.items or offset >= page.total:
                return found

    # ------------------------------------------------------------------ webhook mode

    async def _start_receiver(self, host: str, port: int) -> None:
        cache = self._p.manifest.with_name(self._p.manifest.name + ".webhook-keys.json")
        from .webhooks import SigningKeys, WebhookReceiver  # webhook mode only: keeps cryptography off start-up

        keys = await SigningKeys.load(cache, self._c.signing_keys)
        receiver = WebhookReceiver(host, port, keys, self._on_delivery)
        await receiver.start()
        self._receiver = receiver

    async def _on_delivery(self, delivery: Delivery) -> bool:
        """A verified delivery: deduplicated in the manifest, handed to the run waiting for it."""
        run = delivery.run
        new = self._m.record_webhook(delivery.request_id, run.run_id, run.status)
        # A redelivery after a restart may be the only news of a run: hand it over even when seen before.
        if run.terminal:
            self._hooked[run.run_id] = run
            waiter = self._hook_waiters.pop(run.run_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(run)
        return new

    async def _await_webhook(self, run: PlannedRun, remote_id: str, deadline: float) -> RemoteRun | None:
        """The run's webhook result, or None after the grace period (then the caller polls as a safety net)."""
        if remote_id in self._hooked:
            return self._hooked.pop(remote_id)
        if self._o.webhook_grace is not None:
            grace = self._o.webhook_grace
        else:
            grace = max(60.0, 2.0 * (self._median(run.app_id) or 0.0))
        grace = min(grace, max(0.0, deadline - self._now()))
        waiter: asyncio.Future[RemoteRun] = asyncio.get_running_loop().create_future()
        self._hook_waiters[remote_id] = waiter
        timer = asyncio.ensure_future(self._sleep(grace))
        stop = asyncio.ensure_future(self._hard.wait())
        pending: set[asyncio.Future[Any]] = {waiter, timer, stop}
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            stop.cancel()
            self._hook_waiters.pop(remote_id, None)
        if waiter.done():
            self._hooked.pop(remote_id, None)
            return waiter.result()
        waiter.cancel()
        if self._hard.is_set():
            raise _Interrupted
        self._notice("webhook-late", f"no webhook within {grace:.0f} s for a {run.step_id} run: polling it")
        return None

    # ------------------------------------------------------------------ waiting for a result

    async def _follow(self, run: PlannedRun, started: _Started) -> RemoteRun | _TimedOut:
        deadline = started.submitted_at + self._settings.timeout
        if started.first is not None and started.first.terminal:
            return started.first
        if self._receiver is not None:
            hooked = await self._await_webhook(run, started.remote_id, deadline)
            if hooked is not None:
                return hooked
        if self._c.supports_wait:
            return await self._follow_wait(run, started.remote_id, deadline)
        return await self._follow_poll(run, started.remote_id, deadline, started.submitted_at)

    async def _follow_wait(self, run: PlannedRun, remote_id: str, deadline: float) -> RemoteRun | _TimedOut:
        backoff = _Backoff(rng=self._rng)
        while True:
            left = deadline - self._now()
            if left <= 0:
                return await self._time_out(remote_id)
            seconds = int(min(120, max(1, math.ceil(min(self._o.wait_timeout, left)))))
            remote = await self._poll_once(run, self._c.wait(remote_id, timeout=seconds), backoff)
            if remote is not None and remote.terminal:
                return remote

    async def _follow_poll(
        self, run: PlannedRun, remote_id: str, deadline: float, submitted: float
    ) -> RemoteRun | _TimedOut:
        interval = self._settings.poll_interval
        # Near the median when requests are free. When the request budget binds, a poll that finds the run
        # still going is a request another run needed: wait until nearly every run would have finished.
        q = LATE_FIRST_POLL_QUANTILE if self._c.budget_bound else 0.5
        estimate = self._m.duration_quantile(run.app_id, q)
        first = interval if estimate is None else max(0.0, estimate - (self._now() - submitted))
        delay = first
        backoff = _Backoff(rng=self._rng)
        while True:
            left = deadline - self._now()
            if left <= 0:
                return await self._time_out(remote_id)
            await self._pause(min(delay, left), self._hard)
            if deadline - self._now() <= 0:
                return await self._time_out(remote_id)
            remote = await self._poll_once(run, self._c.get_run(remote_id), backoff)
            if remote is not None and remote.terminal:
                return remote
            delay = interval

    async def _poll_once(
        self, run: PlannedRun, call: Coroutine[Any, Any, RemoteRun], backoff: _Backoff
    ) -> RemoteRun | None:
        """One status request; transport trouble never fails a run, it backs off and returns None."""
        try:
            remote = await self._until(call, self._hard)
        except (TransientError, UnknownOutcomeError) as e:
            delay = backoff.next(getattr(e, "retry_after", None))
            self._notice(
                f"poll:{type(e).__name__}", f"status request failed ({_describe(e)}); retrying in {delay:.0f} s"
            )
            await self._pause(delay, self._hard)
            return None
        except BatchFatalError as e:
            if self._fatal is None:
                self._fatal = e
            self._soft_stop(StopReason.FATAL, _describe(e))
            raise _Interrupted from None
        except NotFoundError as e:
            return RemoteRun(run_id="", status="failed", error_message=f"the remote run is gone: {_describe(e)}")
        backoff.reset()
        return remote

    async def _time_out(self, remote_id: str) -> RemoteRun | _TimedOut:
        """Cancel a run past its timeout where the API allows; one that completed meanwhile is kept."""
        if not self._c.supports_cancel:
            return _TimedOut()
        for _ in range(3):
            try:
                reply = await self._until(self._c.cancel(remote_id), self._hard)
            except (TransientError, UnknownOutcomeError):
                await self._pause(1.0, self._hard)
                continue
            except ApiError:
                return _TimedOut()
            if reply is not None and reply.status == "completed":
                return reply
            return _TimedOut(reply if reply is not None else RemoteRun(remote_id, "cancelled"))
        return _TimedOut()

    def _median(self, app_id: str) -> float | None:
        # The writer's manifest keeps a rolling window that every completion of this invocation feeds.
        return self._m.median_duration(app_id)

    # ------------------------------------------------------------------ completion and downloads

    async def _complete(
        self, run: PlannedRun, remote: RemoteRun, upstream: Mapping[str, Sequence[RunOutput]]
    ) -> _Outcome:
        duration = _remote_duration(remote)
        # Deferred: it rides along with the next intent's commit (or a flush within FINISH_FLUSH_DELAY) instead
        # of costing its own fsync on the event loop; lost in a crash, the run is still `running` with its
        # remote id, so a resume asks for its status once and records it: nothing is started or paid again.
        self._m.finish(
            run.identity,
            RunState.COMPLETED,
            outputs=remote.outputs,
            remote_duration=duration,
            defer=True,
            app_id=run.app_id,
        )
        self._schedule_flush()
        await self._download(run, remote.outputs, upstream, ())
        self._emit(_finished_event(run, RunState.COMPLETED, None))
        self._judge(RunState.COMPLETED)
        return _Outcome(RunState.COMPLETED, remote.outputs)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FINISH_FLUSH_DELAY, self._flush_finishes)

    def _flush_finishes(self) -> None:
        self._flush_handle = None
        try:
            self._m.flush()
        except BaseException as e:  # a manifest that cannot be written is fatal, as it is for any other write
            if self._error is None:
                self._error = e
                self.request_stop(StopReason.FATAL)
                self._set_hard()
                self._interrupt_gates()

    async def _reuse(self, run: PlannedRun, rec: RunRecord, upstream: Mapping[str, Sequence[RunOutput]]) -> None:
        await self._download(run, rec.outputs, upstream, rec.downloads)
        self._emit(RunReused(run.identity, run.step_id, run.item.row_number, run.item.key))

    async def _download(
        self,
        run: PlannedRun,
        outputs: Sequence[RunOutput],
        upstream: Mapping[str, Sequence[RunOutput]],
        existing: Sequence[Any],
    ) -> None:
        if self._p.download is None or self._dl is None:
            return
        dl = self._dl
        valid = {d.output_index: d for d in existing if dl.verify(d)}
        wanted = [(i, o) for i, o in enumerate(outputs) if isinstance(o.value, str) and o.value]
        if all(i in valid for i, _ in wanted):
            return
        self._m.flush()  # the run is recorded completed before any file of it is written
        crashpoint("before-download")
        if len(valid) != len(existing):
            self._m.clear_downloads(run.identity)
            for d in valid.values():
                self._m.add_download(run.identity, d)
        errors: list[str] = []
        for index, output in wanted:
            if index in valid:
                continue
            value = str(output.value)
            try:
                rel = render_download_path(self._p, run, output, index, guess_ext(output), upstream)
                if value.startswith(("http://", "https://")):
                    record = await dl.fetch(value, rel, output_index=index, label=output.label)
                else:
                    record = await asyncio.to_thread(dl.write_text, rel, value, output_index=index, label=output.label)
            except (DownloadError, TemplateError) as e:
                text = f"download of output '{output.label}' failed: {e}"
                errors.append(text)
                self._emit(DownloadFailed(run.identity, run.step_id, run.item.row_number, output.label, str(e)))
                continue
            self._m.add_download(run.identity, record)
        if errors:
            self._download_failures += 1
            self._m.set_state(run.identity, RunState.COMPLETED, error="; ".join(errors), error_code="DOWNLOAD_FAILED")


_LIVE_STATES = frozenset({RunState.RUNNING, RunState.SUBMITTING})


def _finished_event(run: PlannedRun, state: RunState, error: str | None, *, kept: bool = False) -> RunFinished:
    return RunFinished(run.identity, run.step_id, run.item.row_number, run.item.key, state, error, kept)


def _adopted(run: PlannedRun, remote_id: str, how: str) -> RunAdopted:
    return RunAdopted(run.identity, run.step_id, run.item.row_number, run.item.key, remote_id, how)


def _human_seconds(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
