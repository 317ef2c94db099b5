"""The credits budget of one invocation: the starts' expected credits committed against max_credits, given back
when a start created nothing, and the stop (MAX_CREDITS) at the first start that would pass the limit."""

from __future__ import annotations

import asyncio

from lamina_batch.events import Stopping, StopReason
from lamina_batch.execute.budget import CreditBudget
from lamina_batch.execute.context import Guards
from lamina_batch.execute.scope import StopScope
from lamina_batch.execute.starter import StartLedger
from lamina_batch.models import RunSettings


async def _no_sleep(seconds: float) -> None:
    return None


def test_a_start_that_would_pass_max_credits_stops_new_starts() -> None:
    """Starts commit their app's expected credits; the one that would pass the limit is refused and stops the
    batch (MAX_CREDITS) naming the figures; a start that created nothing gives its credits back."""
    asyncio.run(_scenario())


async def _scenario() -> None:
    seen: list[object] = []
    scope = StopScope(start_grace=1.0, sleep=_no_sleep)
    guards = Guards(RunSettings(max_credits=10), scope, seen.append)
    ledger = StartLedger(None, guards, CreditBudget(10, {"app_a": 4.0, "app_b": 6.0}, guards))
    assert ledger.may_start("app_a")
    ledger.reserve(4.0).confirm()
    assert ledger.may_start("app_b")
    refused = ledger.reserve(6.0)
    assert ledger.budget is not None
    assert ledger.budget.committed == 10
    refused.release()  # e.g. a 429 that created nothing: its credits are free again
    assert ledger.budget.committed == 4
    ledger.reserve(6.0).confirm()
    assert not scope.no_starts.is_set()
    assert not ledger.may_start("app_a")  # 10 + 4 > 10
    assert guards.reason is StopReason.MAX_CREDITS
    assert scope.no_starts.is_set()
    assert guards.message is not None
    assert "10 of 10 credits committed" in guards.message
    assert [type(e) for e in seen] == [Stopping]


def test_without_a_limit_every_start_fits() -> None:
    """No max_credits: the budget only counts (the manifest still records each start's estimate)."""

    async def go() -> None:
        scope = StopScope(start_grace=1.0, sleep=_no_sleep)
        guards = Guards(RunSettings(), scope, lambda e: None)
        budget = CreditBudget(None, {"app_a": 4.0}, guards)
        for _ in range(100):
            assert budget.fits("app_a")
            budget.commit(4.0)
        assert budget.committed == 400
        assert guards.reason is None

    asyncio.run(go())
