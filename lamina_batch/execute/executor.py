"""The executor: streams the plan item by item (each item's runs a small DAG), decides every run with
`lifecycle.decide`, runs attempts (start or follow, retries), and stops on a guard, a fatal answer or a signal.
Every step of every run is committed to the manifest; progress is reported only through `events`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lamina_batch.errors import ApiError
from lamina_batch.events import Event, RunRetrying, StopReason
from lamina_batch.lifecycle import (
    COMPLETE,
    RUN_FAILED,
    UPSTREAM_FAILED,
    Action,
    Decision,
    Upstream,
    decide,
    redo_reason,
)
from lamina_batch.matrix import expand_runs
from lamina_batch.models import ItemPlan, PlannedRun, RunOutput, RunRecord, RunState

from .budget import CreditBudget
from .complete import Completer
from .context import BatchContext, ExecOptions, Guards, adopted, finished
from .follow import Durations, Follower, WebhookWaits
from .outcomes import IN_FLIGHT_RUNNING, NOT_STARTED, Outcome, Started, StartResult, TimedOut
from .reconcile import Reconciler
from .scope import Interrupted, Pool, StopScope
from .starter import Redo, Starter, StartLedger

if TYPE_CHECKING:
    from lamina_batch.client import LaminaClient
    from lamina_batch.downloads import Downloader
    from lamina_batch.manifest import Manifest
    from lamina_batch.models import Pipeline

__all__ = ["Executor", "RunResult"]

Outputs = dict[str, tuple[RunOutput, ...]]
# A remote failure with `retries` left: a new attempt under this invocation's own decision to retry.
_RETRY = Decision(Action.RESTART_AFTER_FAILURE, "failed remotely: retrying (run.retries)")


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
        self._pipeline = pipeline
        self._manifest = manifest
        self._options = options
        self._choices = options.choices
        self._settings = settings = pipeline.run
        self._scope = scope = StopScope(start_grace=options.start_grace, sleep=sleep)
        self._guards = Guards(settings, scope, emit)
        self._ctx = ctx = BatchContext(
            pipeline=pipeline,
            manifest=manifest,
            client=client,
            options=options,
            emit=emit,
            clock=clock or time.monotonic,
            now=wall_clock or time.time,
            sleep=sleep,
            rng=rng or random.Random(),
            scope=scope,
            guards=self._guards,
        )
        durations = Durations(manifest)
        self._webhooks = WebhookWaits(ctx, durations)
        self._follower = Follower(ctx, durations, self._webhooks)
        self._completer = Completer(ctx, durations, downloader)
        self._reconciler = Reconciler(ctx)
        budget = CreditBudget(settings.max_credits, options.credit_prices, self._guards)
        self._ledger = StartLedger(settings.max_starts, self._guards, budget)
        self._starter = Starter(ctx, self._ledger, self._reconciler, self._completer)
        self._slots = scope.pool(max(1, settings.concurrency))
        self._step_caps: dict[str, Pool] = {
            s.id: scope.pool(s.concurrency)
            for s in pipeline.steps
            if s.concurrency is not None and s.concurrency < settings.concurrency
        }
        self._counts: Counter[RunState] = Counter()
        self._not_started = 0

    # ------------------------------------------------------------------ public

    def request_stop(self, reason: StopReason) -> None:
        """Stop starting runs. SIGINT/SIGTERM also abandon waiting (runs stay `running`) and return promptly;
        the other reasons let in-flight runs finish. Call it from the event loop's thread."""
        self._guards.request_stop(reason)

    async def run(self) -> RunResult:
        """Run the batch until every planned run is finished or a stop was requested; never raises for a run's
        own failure (it is recorded), only for bugs and manifest errors."""
        try:
            await self._reconciler.prepass()
            if not self._scope.hard.is_set():
                if self._options.webhook_url is not None and self._options.listen is not None:
                    await self._webhooks.start(*self._options.listen)
                try:
                    await self._stream()
                finally:
                    self._manifest.flush()
                    await self._webhooks.stop()
        finally:
            self._scope.close()
        guards = self._guards
        if guards.error is not None:
            raise guards.error
        return RunResult(
            stop_reason=guards.reason or StopReason.FINISHED,
            counts=dict(self._counts),
            not_started=self._not_started,
            starts=self._ledger.starts,
            download_failures=self._completer.download_failures,
            fatal_error=guards.fatal,
            message=guards.message,
        )

    # ------------------------------------------------------------------ streaming the plan

    async def _stream(self) -> None:
        live = self._scope.pool(max(2, 2 * self._settings.concurrency))
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            live.release()
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self._guards.internal_error(error)

        try:
            for plan in expand_runs(self._pipeline, shard=self._options.shard, selection=self._options.selection):
                try:
                    await live.acquire(self._scope.hard)
                except Interrupted:
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
        """One item's runs, each started once the runs it needs have ended."""
        if len(plan.runs) == 1:
            await self._run_accounted(plan.runs[0], {})
            return
        by_step: dict[str, asyncio.Task[Outcome]] = {}
        for run in plan.runs:
            upstream = {step_id: by_step[step_id] for step_id in run.needs if step_id in by_step}
            by_step[run.step_id] = asyncio.create_task(self._run_accounted(run, upstream))
        await asyncio.gather(*by_step.values())

    async def _run_accounted(self, run: PlannedRun, upstream_tasks: Mapping[str, asyncio.Task[Outcome]]) -> Outcome:
        outcome = await self._run(run, upstream_tasks)
        if outcome.state is not None:
            self._counts[outcome.state] += 1
        elif outcome.in_flight is not None:
            self._counts[outcome.in_flight] += 1
        else:
            self._not_started += 1
        return outcome

    # ------------------------------------------------------------------ one run

    async def _run(self, run: PlannedRun, upstream_tasks: Mapping[str, asyncio.Task[Outcome]]) -> Outcome:
        upstream, outputs = await _gather(upstream_tasks)
        rec = self._manifest.get(run.identity)
        decision = decide(rec, upstream, self._choices, redo=self._redo_reason(run, rec))
        settled = await self._settle(run, rec, decision, upstream, outputs)
        if settled is not None:
            return settled
        return await self._attempts(run, rec, decision, upstream, outputs)

    async def _settle(
        self, run: PlannedRun, rec: RunRecord | None, decision: Decision, upstream: Upstream, outputs: Outputs
    ) -> Outcome | None:
        """The outcome of a decision that sends no start and follows nothing; None for one that does."""
        action = decision.action
        if action is Action.REUSE:
            assert rec is not None
            return await self._completer.reuse(run, rec, outputs)
        if action is Action.WAIT_FOR_UPSTREAM:
            return NOT_STARTED
        if action is Action.SKIP_UPSTREAM_FAILED:
            return self._upstream_failed(run, rec, upstream)
        if action in (Action.KEEP_FAILED, Action.KEEP_UNKNOWN):
            assert rec is not None
            self._ctx.emit(finished(run, rec.state, rec.error, kept=True))
            return Outcome(rec.state)
        return None

    def _upstream_failed(self, run: PlannedRun, rec: RunRecord | None, upstream: Upstream) -> Outcome:
        """Recorded failed UPSTREAM_FAILED (once: a run already recorded so for the same reason is kept as is)."""
        ended = upstream.ended.value if upstream.ended is not None else RunState.FAILED.value
        message = f"not started: upstream step '{upstream.step_id}' ended {ended} for this row"
        if rec is not None and rec.error_code == UPSTREAM_FAILED and rec.error == message:
            self._ctx.emit(finished(run, rec.state, rec.error, kept=True))
            return Outcome(RunState.FAILED)
        return self._completer.fail_without_request(run, message, UPSTREAM_FAILED)

    async def _attempts(
        self, run: PlannedRun, rec: RunRecord | None, decision: Decision, upstream: Upstream, outputs: Outputs
    ) -> Outcome:
        """Follow or start `run` under a slot until it ends, starting a new attempt while `retries` allow."""
        retries_left = self._settings.retries
        attempt = 0
        while True:
            attempt += 1
            following = decision.action is Action.FOLLOW
            stop = self._scope.hard if following else self._scope.no_starts
            try:
                async with self._slot(run, stop):
                    started = await self._begin(run, rec, decision, upstream, outputs)
                    if isinstance(started, Outcome):
                        return started
                    try:
                        result = await self._follower.follow(run, started)
                    except Interrupted:
                        return IN_FLIGHT_RUNNING
            except Interrupted:
                return NOT_STARTED
            decision = _RETRY
            if isinstance(result, TimedOut):
                return self._completer.finish_bad(
                    run, RunState.TIMED_OUT, self._follower.timeout_message(result), "TIMEOUT"
                )
            if result.status == "completed":
                return await self._completer.complete(run, result, outputs)
            if result.status == "cancelled":
                error = result.error_message or "cancelled remotely"
                return self._completer.finish_bad(run, RunState.CANCELLED, error, None)
            error = result.error_message or "the run failed"
            if retries_left > 0:
                retries_left -= 1
                self._manifest.finish(run.identity, RunState.FAILED, error=error, error_code=RUN_FAILED)
                self._ctx.emit(RunRetrying(run.identity, run.step_id, run.item.row_number, attempt + 1, error))
                continue
            return self._completer.finish_bad(run, RunState.FAILED, error, RUN_FAILED)

    async def _begin(
        self, run: PlannedRun, rec: RunRecord | None, decision: Decision, upstream: Upstream, outputs: Outputs
    ) -> StartResult:
        """The remote run this attempt follows (resumed, reconciled or just started), or how it ended without one."""
        if decision.action is Action.FOLLOW:
            assert rec is not None
            assert rec.remote_id is not None
            self._ctx.emit(adopted(run, rec.remote_id, "resumed"))
            return Started(rec.remote_id, rec.submitted_epoch or self._ctx.now(), None)
        if decision.action is Action.RECONCILE:
            assert rec is not None
            reconciled = await self._starter.reconcile(run, rec)
            if reconciled is not None:
                return reconciled
            # nothing was created: the run is pending again, and decided afresh
            fresh = self._manifest.get(run.identity)
            again = decide(fresh, upstream, self._choices, redo=self._redo_reason(run, fresh))
            settled = await self._settle(run, fresh, again, upstream, outputs)
            if settled is not None:
                return settled
        return await self._starter.start(run, outputs, self._how(run, decision))

    # ------------------------------------------------------------------ redo

    def _redo_reason(self, run: PlannedRun, rec: RunRecord | None) -> str | None:
        """Why a completed run would be redone (`--redo rejected` only): rejected, or an upstream redone."""
        if not self._choices.redo_rejected or rec is None or rec.state is not RunState.COMPLETED:
            return None
        rejected = self._options.rejected.get(run.identity) == max(rec.attempts, 1)
        return redo_reason(rec, rejected, self._upstream_attempts(run))

    def _upstream_attempts(self, run: PlannedRun) -> dict[str, int]:
        """step id -> the current attempt of that upstream run of this item (what a start now consumes)."""
        if not run.needs:
            return {}
        found = self._manifest.get_many(run.needs.values())
        return {step: found[ident].attempts for step, ident in run.needs.items() if ident in found}

    def _how(self, run: PlannedRun, decision: Decision) -> Redo | None:
        redo = decision.action is Action.REDO
        if not redo and not run.needs:
            return None
        archive = (lambda: self._completer.archive_files(run.identity)) if redo else None
        return Redo(redo=redo, upstream_attempts=self._upstream_attempts(run) or None, archive=archive)

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


async def _gather(upstream_tasks: Mapping[str, asyncio.Task[Outcome]]) -> tuple[Upstream, Outputs]:
    """How the runs this one needs ended (waiting for each), and the outputs of the completed ones."""
    outputs: Outputs = {}
    unfinished: str | None = None
    failed: tuple[str, RunState] | None = None
    for step_id, task in upstream_tasks.items():
        up = await task
        if up.state is RunState.COMPLETED:
            outputs[step_id] = up.outputs
        elif up.state is None:
            unfinished = unfinished or step_id
        elif failed is None:
            failed = (step_id, up.state)
    if unfinished is not None:
        return Upstream.unfinished(unfinished), outputs
    if failed is not None:
        return Upstream.failed(*failed), outputs
    return COMPLETE, outputs
