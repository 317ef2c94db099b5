"""Following a started run to its end: its webhook (webhook mode), the runs API's /wait long poll, or polling timed
by the durations learned per app; a run past its timeout is cancelled where the API can. Status-request trouble
never fails a run: it backs off and asks again."""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from lamina_batch.errors import ApiError, BatchFatalError, NotFoundError, TransientError, UnknownOutcomeError
from lamina_batch.models import PlannedRun, RemoteRun
from lamina_batch.retry import Backoff

from .context import BatchContext, describe
from .outcomes import Started, TimedOut
from .scope import Interrupted

if TYPE_CHECKING:
    from lamina_batch.manifest import Manifest
    from lamina_batch.webhooks import Delivery, WebhookReceiver

__all__ = ["DURATION_WINDOW", "LATE_FIRST_POLL_QUANTILE", "Durations", "Follower", "WebhookWaits"]

# The median of recent durations is what adaptive polling needs; old runs say little about today's queue.
DURATION_WINDOW = 200
# Executions API, while the request budget binds: the first status poll waits for this quantile of the app's
# learned durations (not the median), so about one run in twenty needs a second poll instead of one in two.
LATE_FIRST_POLL_QUANTILE = 0.95


class Durations:
    """Each app's recent remote durations: the last DURATION_WINDOW completed runs, read from the manifest the
    first time an app is asked about, then fed by every completion of this batch."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._windows: dict[str, deque[float]] = {}

    def add(self, app_id: str, seconds: float) -> None:
        window = self._windows.get(app_id)
        if window is not None:  # else the manifest has it when the app is first asked about
            window.append(seconds)

    def median(self, app_id: str) -> float | None:
        return self.quantile(app_id, 0.5)

    def quantile(self, app_id: str, q: float) -> float | None:
        """The `q` quantile (0.5: the median; else nearest rank) of the app's recent durations, or None."""
        window = self._windows.get(app_id)
        if window is None:
            recent = self._manifest.recent_durations(app_id, DURATION_WINDOW)
            window = self._windows[app_id] = deque(recent, maxlen=DURATION_WINDOW)
        if not window:
            return None
        if q == 0.5:
            return statistics.median(window)
        ranked = sorted(window)
        return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


class WebhookWaits:
    """Webhook mode: the receiver, and runs waiting for their delivery (deduplicated in the manifest)."""

    def __init__(self, ctx: BatchContext, durations: Durations) -> None:
        self._ctx = ctx
        self._durations = durations
        self._receiver: WebhookReceiver | None = None
        self._hooked: dict[str, RemoteRun] = {}  # terminal runs reported by webhook, by remote id
        self._waiters: dict[str, asyncio.Future[RemoteRun]] = {}

    @property
    def listening(self) -> bool:
        return self._receiver is not None

    async def start(self, host: str, port: int) -> None:
        pipeline = self._ctx.pipeline
        cache = pipeline.manifest.with_name(pipeline.manifest.name + ".webhook-keys.json")
        from lamina_batch.webhooks import SigningKeys, WebhookReceiver  # webhook mode only: no cryptography at start-up

        keys = await SigningKeys.load(cache, self._ctx.client.signing_keys)
        receiver = WebhookReceiver(host, port, keys, self._on_delivery)
        await receiver.start()
        self._receiver = receiver

    async def stop(self) -> None:
        if self._receiver is not None:
            await self._receiver.stop()
            self._receiver = None

    async def _on_delivery(self, delivery: Delivery) -> bool:
        """A verified delivery: deduplicated in the manifest, handed to the run waiting for it."""
        run = delivery.run
        new = self._ctx.manifest.record_webhook(delivery.request_id, run.run_id, run.status)
        # A redelivery after a restart may be the only news of a run: hand it over even when seen before.
        if run.terminal:
            self._hooked[run.run_id] = run
            waiter = self._waiters.pop(run.run_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(run)
        return new

    async def wait(self, run: PlannedRun, remote_id: str, deadline: float) -> RemoteRun | None:
        """The run's webhook result, or None after the grace period (then the caller polls as a safety net)."""
        ctx = self._ctx
        if remote_id in self._hooked:
            return self._hooked.pop(remote_id)
        if ctx.options.webhook_grace is not None:
            grace = ctx.options.webhook_grace
        else:
            grace = max(60.0, 2.0 * (self._durations.median(run.app_id) or 0.0))
        grace = min(grace, max(0.0, deadline - ctx.now()))
        waiter: asyncio.Future[RemoteRun] = asyncio.get_running_loop().create_future()
        self._waiters[remote_id] = waiter
        timer = asyncio.ensure_future(ctx.sleep(grace))
        stop = asyncio.ensure_future(ctx.scope.hard.wait())
        pending: set[asyncio.Future[Any]] = {waiter, timer, stop}
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            stop.cancel()
            self._waiters.pop(remote_id, None)
        if waiter.done():
            self._hooked.pop(remote_id, None)
            return waiter.result()
        waiter.cancel()
        if ctx.scope.hard.is_set():
            raise Interrupted
        ctx.notice("webhook-late", f"no webhook within {grace:.0f} s for a {run.step_id} run: polling it")
        return None


class Follower:
    """Waits for a started run's end: webhook first (webhook mode), then /wait or adaptive polling."""

    def __init__(self, ctx: BatchContext, durations: Durations, webhooks: WebhookWaits) -> None:
        self._ctx = ctx
        self._client = ctx.client
        self._durations = durations
        self._webhooks = webhooks

    async def follow(self, run: PlannedRun, started: Started) -> RemoteRun | TimedOut:
        """The run's terminal state, or TimedOut past `timeout` from its intent; Interrupted on a hard stop."""
        deadline = started.submitted_at + self._ctx.settings.timeout
        if started.first is not None and started.first.terminal:
            return started.first
        if self._webhooks.listening:
            hooked = await self._webhooks.wait(run, started.remote_id, deadline)
            if hooked is not None:
                return hooked
        if self._client.supports_wait:
            return await self._follow_wait(run, started.remote_id, deadline)
        return await self._follow_poll(run, started.remote_id, deadline, started.submitted_at)

    async def _follow_wait(self, run: PlannedRun, remote_id: str, deadline: float) -> RemoteRun | TimedOut:
        backoff = Backoff(rng=self._ctx.rng)
        while True:
            left = deadline - self._ctx.now()
            if left <= 0:
                return await self._time_out(remote_id)
            seconds = int(min(120, max(1, math.ceil(min(self._ctx.options.wait_timeout, left)))))
            remote = await self._poll_once(run, self._client.wait(remote_id, timeout=seconds), backoff)
            if remote is not None and remote.terminal:
                return remote

    async def _follow_poll(
        self, run: PlannedRun, remote_id: str, deadline: float, submitted: float
    ) -> RemoteRun | TimedOut:
        ctx = self._ctx
        interval = ctx.settings.poll_interval
        # Near the median when requests are free. When the request budget binds, a poll that finds the run
        # still going is a request another run needed: wait until nearly every run would have finished.
        q = LATE_FIRST_POLL_QUANTILE if self._client.budget_bound else 0.5
        estimate = self._durations.quantile(run.app_id, q)
        delay = interval if estimate is None else max(0.0, estimate - (ctx.now() - submitted))
        backoff = Backoff(rng=ctx.rng)
        while True:
            left = deadline - ctx.now()
            if left <= 0:
                return await self._time_out(remote_id)
            await ctx.scope.pause(min(delay, left), ctx.scope.hard)
            if deadline - ctx.now() <= 0:
                return await self._time_out(remote_id)
            remote = await self._poll_once(run, self._client.get_run(remote_id), backoff)
            if remote is not None and remote.terminal:
                return remote
            delay = interval

    async def _poll_once(
        self, run: PlannedRun, call: Coroutine[Any, Any, RemoteRun], backoff: Backoff
    ) -> RemoteRun | None:
        """One status request; transport trouble never fails a run, it backs off and returns None."""
        ctx = self._ctx
        try:
            remote = await ctx.scope.until(call, ctx.scope.hard)
        except (TransientError, UnknownOutcomeError) as e:
            delay = backoff.next(getattr(e, "retry_after", None))
            ctx.notice(f"poll:{type(e).__name__}", f"status request failed ({describe(e)}); retrying in {delay:.0f} s")
            await ctx.scope.pause(delay, ctx.scope.hard)
            return None
        except BatchFatalError as e:
            ctx.guards.fatal_answer(e)
            raise Interrupted from None
        except NotFoundError as e:
            return RemoteRun(run_id="", status="failed", error_message=f"the remote run is gone: {describe(e)}")
        backoff.reset()
        return remote

    async def _time_out(self, remote_id: str) -> RemoteRun | TimedOut:
        """Cancel a run past its timeout where the API allows; one that completed meanwhile is kept."""
        if not self._client.supports_cancel:
            return TimedOut()
        scope = self._ctx.scope
        for _ in range(3):
            try:
                reply = await scope.until(self._client.cancel(remote_id), scope.hard)
            except (TransientError, UnknownOutcomeError):
                await scope.pause(1.0, scope.hard)
                continue
            except ApiError:
                return TimedOut()
            if reply is not None and reply.status == "completed":
                return reply
            return TimedOut(reply if reply is not None else RemoteRun(remote_id, "cancelled"))
        return TimedOut()

    def timeout_message(self, result: TimedOut) -> str:
        limit = _human_seconds(self._ctx.settings.timeout)
        if not self._client.supports_cancel:
            return f"timed out after {limit} (this API cannot cancel it remotely)"
        if result.remote is not None and result.remote.status == "cancelled":
            return f"timed out after {limit}; the remote run was cancelled"
        return f"timed out after {limit}; cancelling the remote run failed"


def _human_seconds(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
