"""Starting a run: one start in flight per app (its gate), the write-ahead intent, the request, the remote id
handed to the manifest, and the ledger of starts this invocation made (or may have made) against max_starts.
Nothing is sent again blindly: a start is repeated only when nothing was created (not sent, 429, or refused)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lamina_batch.crash import crashpoint
from lamina_batch.errors import (
    ApiError,
    BatchFatalError,
    ConnectError,
    NotFoundError,
    RateLimitedError,
    ReadTimeoutError,
    ServerError,
    TemplateError,
    UnknownOutcomeError,
)
from lamina_batch.events import RunStarted, StopReason
from lamina_batch.lifecycle import TEMPLATE_ERROR
from lamina_batch.manifest import Durability
from lamina_batch.matrix import render_inputs, render_vary
from lamina_batch.models import AppInfo, DownloadRecord, PlannedRun, RemoteRun, RunOutput, RunRecord, RunState
from lamina_batch.params import ParameterIndex, normalise, override_inputs
from lamina_batch.retry import Backoff

from .budget import CreditBudget
from .complete import Completer
from .context import BatchContext, Guards, adopted, describe, finished
from .outcomes import IN_FLIGHT_SUBMITTING, NOT_STARTED, Outcome, Started, StartResult, TryAgain
from .reconcile import Reconciler, Verdict
from .scope import Interrupted

__all__ = ["Redo", "Reservation", "StartLedger", "Starter", "apply_vary"]

# Moves the superseded attempt's files to history and returns their records as moved (history.py).
Archive = Callable[[], Sequence[DownloadRecord] | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Redo:
    """What a start carries besides the run: a redo of a completed run (`redo`), the upstream attempts it
    consumes (step id -> attempt, recorded with the intent) and how to archive the attempt it supersedes."""

    redo: bool = False
    upstream_attempts: Mapping[str, int] | None = None
    archive: Archive | None = None


def apply_vary(inputs: Mapping[str, Any], vary: Mapping[str, Any], app: AppInfo | None = None) -> dict[str, Any]:
    """`inputs` with the varied values applied. With the app known, an entry resolves like an input (key, name or
    id): it replaces the input setting that parameter, or is added; an entry naming no parameter of this app is
    left out (a pipeline's steps run different apps). Without it, an entry replaces the input of the same name
    (case, spaces and punctuation aside) and is otherwise left out."""
    if app is not None:
        index = ParameterIndex(app)
        return override_inputs(index, inputs, {n: v for n, v in vary.items() if index.resolve(n) is not None})
    out = dict(inputs)
    spelled = {normalise(name): name for name in inputs}
    for name, value in vary.items():
        if normalise(name) in spelled:
            out[spelled[normalise(name)]] = value
    return out


class StartLedger:
    """Starts of this invocation: `reserved` counts those sent or being sent that may have created a run (what
    max_starts bounds), `starts` those known to have (a reply, or a run adopted by reconciling)."""

    def __init__(self, max_starts: int | None, guards: Guards, budget: CreditBudget | None = None) -> None:
        self._max = max_starts
        self._guards = guards
        self.budget = budget
        self.reserved = 0
        self.starts = 0

    def may_start(self, app_id: str | None = None) -> bool:
        """False once max_starts starts are reserved (and then the batch stops starting, MAX_STARTS), or when a
        run of `app_id` would take the credits committed past max_credits (MAX_CREDITS)."""
        if self._max is not None and self.reserved >= self._max:
            self._guards.soft_stop(StopReason.MAX_STARTS, f"max_starts reached: {self.starts} runs started")
            return False
        return app_id is None or self.budget is None or self.budget.fits(app_id)

    def price(self, app_id: str) -> float | None:
        """The expected credits of one run of `app_id` (None: unknown)."""
        return None if self.budget is None else self.budget.price(app_id)

    def reserve(self, credits: float = 0.0) -> Reservation:
        """A start about to be sent, committing `credits` (its expected cost) until it is known to have created
        nothing."""
        self.reserved += 1
        if self.budget is not None:
            self.budget.commit(credits)
        return Reservation(self, credits)


class Reservation:
    """One start that may have created a run: `release()` when it created nothing, `confirm()` when it did;
    left as it is (a run may exist: reply lost, or abandoned at a stop) it keeps counting against max_starts."""

    def __init__(self, ledger: StartLedger, credits: float = 0.0) -> None:
        self._ledger = ledger
        self._credits = credits
        self._open = True

    def release(self) -> None:
        if self._open:
            self._open = False
            self._ledger.reserved -= 1
            if self._ledger.budget is not None:
                self._ledger.budget.commit(-self._credits)

    def confirm(self) -> None:
        if self._open:
            self._open = False
            self._ledger.starts += 1


class Starter:
    """Starts runs under their app's gate and reconciles intents whose reply was lost."""

    def __init__(self, ctx: BatchContext, ledger: StartLedger, reconciler: Reconciler, completer: Completer) -> None:
        self._ctx = ctx
        self._manifest = ctx.manifest
        self._client = ctx.client
        self._ledger = ledger
        self._reconciler = reconciler
        self._completer = completer
        self._backoffs: dict[str, Backoff] = {}
        self._varies = bool(ctx.pipeline.review.vary or ctx.options.redo_set)

    def _may_start(self, app_id: str | None = None) -> bool:
        return not self._ctx.scope.no_starts.is_set() and self._ledger.may_start(app_id)

    async def start(
        self, run: PlannedRun, upstream: Mapping[str, Sequence[RunOutput]], how: Redo | None = None
    ) -> StartResult:
        """Start `run` (a new attempt): a Started to follow, or how it ended without one."""
        scope = self._ctx.scope
        gate = scope.app_gate(run.app_id)
        while True:
            if not self._may_start(run.app_id):
                return NOT_STARTED
            try:
                await gate.acquire(scope.no_starts)
            except Interrupted:
                return NOT_STARTED
            try:
                result = await self._start_once(run, upstream, how) if self._may_start(run.app_id) else NOT_STARTED
            except BaseException:
                gate.release()
                raise
            if gate.release() and isinstance(result, Started):
                # Starts of an app are serial: let the next one go out before this run sends its first poll,
                # so the poll is built while that start is in flight, not before it.
                await asyncio.sleep(0)
            if not isinstance(result, TryAgain):
                return result
            try:
                await scope.pause(result.delay, scope.no_starts)
            except Interrupted:
                return NOT_STARTED

    async def reconcile(self, run: PlannedRun, rec: RunRecord) -> StartResult | None:
        """Decide an intent without remote id under the app's gate: a Started to follow, an Outcome, or None
        when nothing was created (the run is `pending` again)."""
        scope = self._ctx.scope
        gate = scope.app_gate(run.app_id)
        try:
            await gate.acquire(scope.hard)
        except Interrupted:
            return IN_FLIGHT_SUBMITTING
        try:
            return await self._reconcile_locked(run, rec, self._ledger.reserve())
        finally:
            gate.release()

    async def _start_once(
        self, run: PlannedRun, upstream: Mapping[str, Sequence[RunOutput]], how: Redo | None
    ) -> Started | Outcome | TryAgain:
        """One start under the app's gate: intent, request, remote id."""
        redo = how is not None and how.redo
        try:
            inputs = self._inputs(run, upstream, redo=redo)
        except TemplateError as e:
            if redo:  # a completed run keeps its result: the redo is not made, and says why
                self._ctx.notice(f"redo:{run.identity}", f"redo of {run.step_id} row {run.item.row_number}: {e}")
                return NOT_STARTED
            return self._completer.fail_without_request(run, str(e), TEMPLATE_ERROR)
        crashpoint("before-intent")
        price = self._ledger.price(run.app_id)
        archived = how.archive() if how is not None and how.archive is not None else None
        rec = self._manifest.begin_attempt(
            run,
            inputs,
            credits_estimate=price,
            redo=redo,
            upstream_attempts=how.upstream_attempts if how is not None else None,
            archived_downloads=archived,
        )
        crashpoint("after-intent")
        submitted = rec.submitted_epoch or self._ctx.now()
        reservation = self._ledger.reserve(price or 0.0)
        try:
            remote = await self._send(run, inputs)
        except Interrupted:
            return IN_FLIGHT_SUBMITTING
        except (UnknownOutcomeError, ServerError, ReadTimeoutError) as e:
            self._ctx.notice("start:unknown", f"start reply lost for {run.step_id} ({describe(e)}): reconciling")
            fresh = self._manifest.get(run.identity)
            assert fresh is not None
            verdict = await self._reconcile_locked(run, fresh, reservation)
            return TryAgain(0.0) if verdict is None else verdict
        except ApiError as e:
            reservation.release()
            return self._not_created(run, e)
        crashpoint("after-reply")
        # The id rides with the next write: the app's next intent (one fsync for both, and that start cannot
        # leave before this id is durable) or the group-commit timer, whichever comes first. Only where a crash in
        # between can be reconciled from the runs list (the one unaccounted run of this app is adopted): on the
        # executions API a lost id would make the run `unknown`, so it commits at once.
        durability = Durability.WITH_NEXT_INTENT if self._client.supports_list else Durability.NOW
        self._manifest.set_remote_id(run.identity, remote.run_id, remote, durability=durability)
        crashpoint("after-id")
        reservation.confirm()
        self._backoff(run.app_id).reset()
        self._ctx.emit(
            RunStarted(run.identity, run.step_id, run.item.row_number, run.item.key, remote.run_id, rec.attempts)
        )
        return Started(remote.run_id, submitted, remote)

    def _inputs(self, run: PlannedRun, upstream: Mapping[str, Sequence[RunOutput]], *, redo: bool) -> dict[str, Any]:
        """The inputs to send: rendered with the upstream's outputs; from attempt 2 on (only looked up where the
        spec's `review.vary` or `--redo-set` could change them, or on a redo) with `attempt` and the varied ones."""
        pipeline = self._ctx.pipeline
        if not (redo or self._varies):
            return render_inputs(pipeline, run, upstream)
        current = self._manifest.get(run.identity)
        attempt = (current.attempts if current is not None else 0) + 1
        inputs = render_inputs(pipeline, run, upstream, attempt=attempt)
        vary = render_vary(pipeline, run, upstream, attempt=attempt, overrides=self._ctx.options.redo_set)
        return apply_vary(inputs, vary, self._ctx.options.apps.get(run.app_id)) if vary else inputs

    def _not_created(self, run: PlannedRun, e: ApiError) -> Outcome | TryAgain:
        """A start answered or failed in a way that created nothing: try again later, stop, or fail the run."""
        ctx = self._ctx
        if isinstance(e, ConnectError | RateLimitedError):
            self._manifest.set_state(run.identity, RunState.PENDING)
            delay = self._backoff(run.app_id).next(getattr(e, "retry_after", None))
            ctx.notice(
                f"start:{type(e).__name__}",
                f"start of {run.step_id} not sent ({describe(e)}); trying again in {delay:.0f} s",
            )
            return TryAgain(delay)
        if isinstance(e, BatchFatalError):
            self._manifest.set_state(run.identity, RunState.PENDING)
            ctx.guards.fatal_answer(e)
            return NOT_STARTED
        # RunFatalError and any other definite refusal: nothing was created.
        code = e.code or ("NOT_FOUND" if isinstance(e, NotFoundError) else "START_REFUSED")
        self._manifest.finish(run.identity, RunState.FAILED, error=str(e), error_code=code, request_id=e.request_id)
        ctx.emit(finished(run, RunState.FAILED, str(e)))
        ctx.guards.judge(RunState.FAILED)
        return Outcome(RunState.FAILED)

    async def _send(self, run: PlannedRun, inputs: Mapping[str, Any]) -> RemoteRun:
        request = self._client.start(
            run.app_id, inputs, outputs=run.output_labels, webhook=self._ctx.options.webhook_url
        )
        return await self._ctx.scope.start_request(request)

    async def _reconcile_locked(self, run: PlannedRun, rec: RunRecord, reservation: Reservation) -> StartResult | None:
        """Reconcile `rec` (app gate held): a Started to follow, a final Outcome, or None to start again."""
        try:
            verdict, remote = await self._reconciler.reconcile(rec)
        except Interrupted:
            return IN_FLIGHT_SUBMITTING
        if verdict is Verdict.ADOPTED:
            assert remote is not None
            reservation.confirm()
            self._ctx.emit(adopted(run, remote.run_id, "reconciled"))
            return Started(remote.run_id, rec.submitted_epoch or self._ctx.now(), None)
        if verdict is Verdict.RESTART:
            reservation.release()
            return None
        fresh = self._manifest.get(rec.identity)
        self._ctx.emit(finished(run, RunState.UNKNOWN, fresh.error if fresh is not None else None))
        self._ctx.guards.judge(RunState.UNKNOWN)
        return Outcome(RunState.UNKNOWN)

    def _backoff(self, app_id: str) -> Backoff:
        backoff = self._backoffs.get(app_id)
        if backoff is None:
            backoff = self._backoffs[app_id] = Backoff(rng=self._ctx.rng)
        return backoff
