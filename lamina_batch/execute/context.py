"""What every part of one batch shares: the pipeline, manifest, client and options, the injected clocks, the
stop scope, and the guards (why the batch stops, the fatal API answer, the failure guard, rate-limited notices).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lamina_batch.errors import ApiError
from lamina_batch.events import Event, Notice, RunAdopted, RunFinished, Stopping, StopReason
from lamina_batch.lifecycle import Choices
from lamina_batch.models import AppInfo, PlannedRun, RunSettings, RunState

from .scope import StopScope

if TYPE_CHECKING:
    from lamina_batch.client import LaminaClient
    from lamina_batch.manifest import Manifest
    from lamina_batch.models import Pipeline
    from lamina_batch.selection import Selection

__all__ = ["START_GRACE", "BatchContext", "ExecOptions", "Guards", "adopted", "describe", "finished"]

# After a signal, in-flight start requests get this long to answer and be recorded; an abandoned one stays
# `submitting` without a remote id, which the next invocation reconciles, so cutting it short is still safe.
START_GRACE = 5.0
_NOTICE_EVERY = 10.0


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
    # expected credits of one run per app (the estimates `run` fetched): each start commits its app's against
    # max_credits and is recorded with it; an app missing here costs nothing known
    credit_prices: Mapping[str, float] = field(default_factory=dict)
    # `--redo rejected`: start again completed runs whose current attempt is rejected (`rejected`: identity -> the
    # newest rejected attempt, from the verdicts) and the runs downstream of them
    redo_rejected: bool = False
    rejected: Mapping[str, int] = field(default_factory=dict)
    # `--redo-set NAME=TEMPLATE`: inputs varied from attempt 2 on, beside (and over) the spec's `review.vary`
    redo_set: Mapping[str, str] = field(default_factory=dict)
    # the apps the preflight fetched (app id -> AppInfo): varied inputs resolve against their parameters
    apps: Mapping[str, AppInfo] = field(default_factory=dict)
    selection: Selection | None = None  # --rows / --limit: a subset, identities as in the full batch

    @property
    def choices(self) -> Choices:
        """The restart choices `lifecycle.decide` weighs."""
        return Choices(
            retry_failed=self.retry_failed, restart_unknown=self.restart_unknown, redo_rejected=self.redo_rejected
        )


def describe(e: BaseException) -> str:
    if isinstance(e, ApiError):
        return e.message
    return str(e) or e.__class__.__name__


def finished(run: PlannedRun, state: RunState, error: str | None, *, kept: bool = False) -> RunFinished:
    return RunFinished(run.identity, run.step_id, run.item.row_number, run.item.key, state, error, kept)


def adopted(run: PlannedRun, remote_id: str, how: str) -> RunAdopted:
    return RunAdopted(run.identity, run.step_id, run.item.row_number, run.item.key, remote_id, how)


class Guards:
    """Why the batch stops (the first reason wins; a signal overrides), the fatal API answer that stopped it, an
    internal error to re-raise, and the `max_failures` guard judged on every finished run."""

    def __init__(self, settings: RunSettings, scope: StopScope, emit: Callable[[Event], None]) -> None:
        self._settings = settings
        self._scope = scope
        self._emit = emit
        self.reason: StopReason | None = None
        self.message: str | None = None
        self.fatal: ApiError | None = None
        self.error: BaseException | None = None
        self._finished = 0
        self._bad = 0

    def request_stop(self, reason: StopReason) -> None:
        """Stop starting runs. SIGINT/SIGTERM also abandon waiting (runs stay `running`) and return promptly;
        the other reasons let in-flight runs finish."""
        if reason in (StopReason.SIGINT, StopReason.SIGTERM):
            if self._scope.hard.is_set():
                return
            self.reason = reason
            self._scope.stop_hard()
        elif self.reason is not None:
            return
        else:
            self.reason = reason
        self._scope.stop_starts()
        self._emit(Stopping(reason, self.message))

    def soft_stop(self, reason: StopReason, message: str) -> None:
        if self.reason is None:
            self.message = message
        self.request_stop(reason)

    def fatal_answer(self, e: ApiError) -> None:
        """An answer that stops every new start (401, 403, out of credits): exit 3, resumable."""
        if self.fatal is None:
            self.fatal = e
        self.soft_stop(StopReason.FATAL, describe(e))

    def internal_error(self, e: BaseException) -> None:
        """A bug or an unwritable manifest: stop at once; `Executor.run` re-raises it."""
        if self.error is None:
            self.error = e
            self.request_stop(StopReason.FATAL)
            self._scope.stop_hard()
            self._scope.interrupt()

    def judge(self, state: RunState) -> None:
        self._finished += 1
        if state.bad:
            self._bad += 1
        limit = self._settings.max_failures
        if state.bad and limit.exceeded(self._bad, self._finished):
            self.soft_stop(
                StopReason.MAX_FAILURES,
                f"{self._bad} of {self._finished} finished runs failed, past max_failures",
            )


@dataclass
class BatchContext:
    """The shared parts of one batch, handed to each part of the executor."""

    pipeline: Pipeline
    manifest: Manifest
    client: LaminaClient
    options: ExecOptions
    emit: Callable[[Event], None]
    clock: Callable[[], float]  # monotonic: rate-limits notices
    now: Callable[[], float]  # wall clock, epoch seconds: deadlines, reconcile windows
    sleep: Callable[[float], Awaitable[None]]
    rng: random.Random
    scope: StopScope
    guards: Guards
    _last_notice: dict[str, float] = field(default_factory=dict)

    @property
    def settings(self) -> RunSettings:
        return self.pipeline.run

    def notice(self, key: str, message: str) -> None:
        """A warning for the user, at most one per `key` every ten seconds."""
        now = self.clock()
        last = self._last_notice.get(key)
        if last is None or now - last >= _NOTICE_EVERY:
            self._last_notice[key] = now
            self.emit(Notice(message))
