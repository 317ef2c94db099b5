"""Reconciling a start whose reply was lost (or a crash leftover: an intent without remote id): adopt the one
unaccounted run of that app created since the intent, start again when there is none, else mark it unknown.
"""

from __future__ import annotations

import enum
from collections import defaultdict

from lamina_batch.errors import BatchFatalError, TransientError, UnknownOutcomeError
from lamina_batch.events import Reconciled
from lamina_batch.lifecycle import START_UNKNOWN
from lamina_batch.models import RemoteRun, RunRecord, RunState
from lamina_batch.retry import Backoff
from lamina_batch.times import iso_from_epoch, parse_timestamp

from .context import BatchContext, describe
from .scope import Interrupted

__all__ = ["CLOCK_SKEW", "Reconciler", "Verdict"]

# Server clocks and ours disagree a little; a run created "before" our intent by less than this still counts.
CLOCK_SKEW = 10.0
_LIST_PAGE = 100


class Verdict(enum.Enum):
    """What reconciling a start intent without remote id found."""

    ADOPTED = "adopted"  # exactly one unaccounted run: it is this run's (now `running` with its id)
    RESTART = "restart"  # no run was created: `pending` again, start it
    UNKNOWN = "unknown"  # several candidates, or no way to list: `unknown`, reported


class Reconciler:
    """Decides intents without a remote id, holding the app's start gate so no start of ours races the list."""

    def __init__(self, ctx: BatchContext) -> None:
        self._ctx = ctx
        self._manifest = ctx.manifest
        self._client = ctx.client

    async def prepass(self) -> None:
        """Reconcile crash leftovers (`submitting` without a remote id) before anything new is started."""
        leftovers = [r for r in self._manifest.iter_runs(states=[RunState.SUBMITTING]) if r.remote_id is None]
        by_app: dict[str, list[RunRecord]] = defaultdict(list)
        for r in leftovers:
            by_app[r.app_id].append(r)
        scope = self._ctx.scope
        for app_id, recs in by_app.items():
            recs.sort(key=lambda r: r.submitted_at or "", reverse=True)
            gate = scope.app_gate(app_id)
            await gate.acquire(scope.never)
            try:
                for r in recs:
                    try:
                        await self.reconcile(r)
                    except Interrupted:
                        return
            finally:
                gate.release()

    async def reconcile(self, rec: RunRecord) -> tuple[Verdict, RemoteRun | None]:
        """Decide `rec` and record the verdict; the adopted run with ADOPTED. The caller holds the app's gate.
        Raises Interrupted on a hard stop or a fatal answer (the record stays `submitting`)."""
        if not self._client.supports_list:
            if self._ctx.options.restart_unknown:
                return self._restart(rec, "--restart-unknown")
            msg = (
                "the start reply was lost and this API cannot list runs, so it may or may not be running; "
                "use --restart-unknown to start it again"
            )
            return self._unknown(rec, msg)
        candidates = await self._list_unaccounted(rec)
        if len(candidates) == 1:
            remote = candidates[0]
            self._manifest.set_remote_id(rec.identity, remote.run_id, remote)
            self._ctx.emit(Reconciled(rec.identity, rec.step_id, Verdict.ADOPTED.value, remote.run_id))
            return Verdict.ADOPTED, remote
        if not candidates:
            return self._restart(rec, "no run was created")
        ids = ", ".join(c.run_id for c in candidates[:5])
        return self._unknown(
            rec, f"the start reply was lost and {len(candidates)} unaccounted runs of this app exist ({ids})"
        )

    def _restart(self, rec: RunRecord, why: str) -> tuple[Verdict, None]:
        self._manifest.set_state(rec.identity, RunState.PENDING)
        self._ctx.emit(Reconciled(rec.identity, rec.step_id, Verdict.RESTART.value, None, why))
        return Verdict.RESTART, None

    def _unknown(self, rec: RunRecord, message: str) -> tuple[Verdict, None]:
        self._manifest.set_state(rec.identity, RunState.UNKNOWN, error=message, error_code=START_UNKNOWN)
        self._ctx.emit(Reconciled(rec.identity, rec.step_id, Verdict.UNKNOWN.value, None, message))
        return Verdict.UNKNOWN, None

    async def _list_unaccounted(self, rec: RunRecord) -> list[RemoteRun]:
        """The app's listed runs created since the intent (less CLOCK_SKEW) that no record of ours ever had."""
        ctx = self._ctx
        since = (rec.submitted_epoch or ctx.now()) - CLOCK_SKEW
        known = self._manifest.known_remote_ids(rec.app_id)
        found: list[RemoteRun] = []
        offset = 0
        backoff = Backoff(rng=ctx.rng)
        while True:
            call = self._client.list_runs(
                app_id=rec.app_id, since=iso_from_epoch(since), limit=_LIST_PAGE, offset=offset
            )
            try:
                page = await ctx.scope.until(call, ctx.scope.hard)
            except BatchFatalError as e:
                ctx.guards.fatal_answer(e)
                raise Interrupted from None
            except (TransientError, UnknownOutcomeError) as e:
                delay = backoff.next(getattr(e, "retry_after", None))
                ctx.notice("list", f"listing runs to reconcile failed ({describe(e)}); retrying in {delay:.0f} s")
                await ctx.scope.pause(delay, ctx.scope.hard)
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
