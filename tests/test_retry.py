"""Tests for retry.py: backoff schedule, bounds, retry budget and Retry-After parsing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from lamina_batch.errors import NotFoundError, RateLimitedError, ServerError, TransientError
from lamina_batch.retry import PERSISTENT, Backoff, Retrier, RetryBudget, RetryPolicy, parse_retry_after


class FakeTime:
    """A clock whose sleep advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(errors: list[Exception], result: str = "ok") -> tuple[Callable[[], Awaitable[str]], list[int]]:
    calls = [0]

    async def attempt() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return attempt, calls


def test_retry_after_seconds() -> None:
    """Retry-After as delta seconds parses to that many seconds; negatives clamp to 0."""
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP-date is the distance from now, never negative."""
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2025, 1, 1, 12, 0, 42, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(42.0)
    earlier = format_datetime(datetime(2025, 1, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(earlier, now=now.timestamp()) == 0.0


def test_retry_after_garbage() -> None:
    """Unusable Retry-After values give None rather than an exception."""
    for value in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(value) is None


def test_backoff_is_full_jitter_under_cap() -> None:
    """Each backoff lies in [0, min(cap, base*2**(n-1))]."""
    policy = RetryPolicy(base=0.5, cap=30.0)
    rng = random.Random(3)
    for n in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (n - 1))
        for _ in range(50):
            assert 0.0 <= policy.backoff(n, rng) <= ceiling


def test_retries_transient_then_succeeds_with_seeded_sleeps() -> None:
    """Transient failures are retried with the seeded full-jitter delays, then the result is returned."""
    t = FakeTime()
    retrier = Retrier(RetryPolicy(), clock=t.clock, sleep=t.sleep, rng=random.Random(7))
    attempt, calls = failing([ServerError("boom", status=503), ServerError("boom", status=500)])
    assert asyncio.run(retrier.call(attempt)) == "ok"
    assert calls[0] == 3
    expected = random.Random(7)
    assert t.sleeps == [expected.uniform(0, 0.5), expected.uniform(0, 1.0)]


def test_non_transient_is_not_retried() -> None:
    """A non-transient error escapes on the first attempt."""
    t = FakeTime()
    retrier = Retrier(clock=t.clock, sleep=t.sleep)
    attempt, calls = failing([NotFoundError("nope", status=404)])
    with pytest.raises(NotFoundError):
        asyncio.run(retrier.call(attempt))
    assert calls[0] == 1
    assert t.sleeps == []


def test_attempts_are_bounded() -> None:
    """After max_attempts the last transient error is raised."""
    t = FakeTime()
    retrier = Retrier(RetryPolicy(max_attempts=4), clock=t.clock, sleep=t.sleep, rng=random.Random(1))
    attempt, calls = failing([ServerError(str(i)) for i in range(10)])
    with pytest.raises(ServerError, match="3"):
        asyncio.run(retrier.call(attempt))
    assert calls[0] == 4
    assert len(t.sleeps) == 3


def test_total_time_is_bounded() -> None:
    """A retry that would start after max_elapsed is not made."""
    t = FakeTime()
    retrier = Retrier(RetryPolicy(max_attempts=50, max_elapsed=10.0), clock=t.clock, sleep=t.sleep)
    attempt, calls = failing([RateLimitedError("slow", retry_after=4.0) for _ in range(10)])
    with pytest.raises(RateLimitedError):
        asyncio.run(retrier.call(attempt))
    assert t.sleeps == [4.0, 4.0]
    assert calls[0] == 3


def test_retry_after_is_honoured() -> None:
    """A 429's retry_after is slept exactly instead of the jittered backoff."""
    t = FakeTime()
    retrier = Retrier(clock=t.clock, sleep=t.sleep)
    attempt, _ = failing([RateLimitedError("slow", retry_after=12.5)])
    asyncio.run(retrier.call(attempt))
    assert t.sleeps == [12.5]


def test_retry_if_filters() -> None:
    """retry_if decides per error: a transient error it refuses escapes at once."""
    t = FakeTime()
    retrier = Retrier(clock=t.clock, sleep=t.sleep)
    attempt, calls = failing([ServerError("boom")])
    with pytest.raises(ServerError):
        asyncio.run(retrier.call(attempt, retry_if=lambda e: isinstance(e, RateLimitedError)))
    assert calls[0] == 1


def test_budget_allows_reserve_plus_ratio() -> None:
    """The budget gives `reserve` retries plus `ratio` per recent request, then refuses."""
    t = FakeTime()
    budget = RetryBudget(ratio=0.2, reserve=2, window=60.0, clock=t.clock)
    for _ in range(10):
        budget.record_request()
    granted = sum(budget.try_spend() for _ in range(10))
    assert granted == 4  # 2 + 0.2 * 10


def test_budget_window_forgets_old_requests() -> None:
    """Requests and retries older than the window stop counting."""
    t = FakeTime()
    budget = RetryBudget(ratio=0.5, reserve=0, window=60.0, clock=t.clock)
    for _ in range(4):
        budget.record_request()
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    t.now = 61.0
    assert not budget.try_spend()  # no recent requests: nothing to spend
    budget.record_request()
    budget.record_request()
    assert budget.try_spend()


def test_spent_budget_raises_immediately() -> None:
    """With the budget spent, a transient error is raised without sleeping (stops retry storms)."""
    t = FakeTime()
    budget = RetryBudget(ratio=0.0, reserve=0, clock=t.clock)
    retrier = Retrier(budget=budget, clock=t.clock, sleep=t.sleep)
    attempt, calls = failing([ServerError("down", status=503)])
    with pytest.raises(ServerError):
        asyncio.run(retrier.call(attempt))
    assert calls[0] == 1
    assert t.sleeps == []


def test_rate_limited_retries_do_not_spend_budget() -> None:
    """429 retries honour the server and are not cut by the storm budget."""
    t = FakeTime()
    budget = RetryBudget(ratio=0.0, reserve=0, clock=t.clock)
    retrier = Retrier(budget=budget, clock=t.clock, sleep=t.sleep)
    attempt, calls = failing([RateLimitedError("slow", retry_after=1.0)])
    assert asyncio.run(retrier.call(attempt)) == "ok"
    assert calls[0] == 2


def test_on_retry_callback_sees_each_retry() -> None:
    """on_retry is told about every retry with its delay."""
    t = FakeTime()
    seen: list[tuple[TransientError, float]] = []
    retrier = Retrier(clock=t.clock, sleep=t.sleep)
    attempt, _ = failing([RateLimitedError("a", retry_after=2.0), RateLimitedError("b", retry_after=3.0)])
    asyncio.run(retrier.call(attempt, on_retry=lambda e, d: seen.append((e, d))))
    assert [d for _, d in seen] == [2.0, 3.0]


def test_persistent_backoff_doubles_to_its_cap_never_under_half_and_resets() -> None:
    """The executor's waiting loops: delays in [c/2, c] for c = 1, 2, 4 ... 30 s, at least a Retry-After, and
    back to the shortest after a success."""
    backoff = Backoff(PERSISTENT, random.Random(5))
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    for ceiling in ceilings:
        delay = backoff.next()
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.next(at_least=45.0) == 45.0
    backoff.reset()
    assert 0.5 <= backoff.next() <= 1.0
