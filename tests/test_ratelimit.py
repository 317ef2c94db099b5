"""Tests for ratelimit.py: the sliding-window guarantee, pauses, and the server-stated budget."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina_batch.models import Rate
from lamina_batch.ratelimit import RateLimiter, window_of


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        # A real clock always moves on; float addition of a sub-ulp wait would not.
        self.now = max(self.now + seconds, math.nextafter(self.now, math.inf))


def max_in_any_window(times: list[float], width: float) -> int:
    ordered = sorted(times)
    # A window [t, t + width) starting at each grant is the worst case.
    return max((bisect.bisect_left(ordered, t + width) - i for i, t in enumerate(ordered)), default=0)


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=20),
    per=st.floats(min_value=0.5, max_value=60.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=120),
)
def test_never_exceeds_budget_in_any_window(count: int, per: float, gaps: list[float]) -> None:
    """Whatever the arrival pattern, no window of per_seconds ever holds more than count grants."""
    t = FakeTime()
    limiter = RateLimiter(Rate(count, per), clock=t.clock, sleep=t.sleep)
    grants: list[float] = []
    for gap in gaps:
        t.now += gap
        while (wait := limiter.try_acquire()) > 0:
            t.now += wait
        grants.append(t.now)
    assert max_in_any_window(grants, per) <= count


def test_async_acquire_many_concurrent_waiters() -> None:
    """200 concurrent acquirers at 10/5s are granted no more than 10 per any 5 s window."""
    t = FakeTime()
    limiter = RateLimiter(Rate(10, 5), clock=t.clock, sleep=t.sleep)
    grants: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        grants.append(t.now)

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(200)))

    asyncio.run(main())
    assert len(grants) == 200
    assert max_in_any_window(grants, 5.0) <= 10
    # and it does not idle: 200 grants at 10 per 5 s need just under 100 s
    assert grants[-1] == pytest.approx(95.0)


def test_few_requests_burst_without_spacing() -> None:
    """A client under its budget is not spaced out: 5 requests at 90/min are all granted at once."""
    t = FakeTime()
    limiter = RateLimiter(Rate(90, 60), clock=t.clock, sleep=t.sleep)

    async def main() -> None:
        for _ in range(5):
            await limiter.acquire()

    asyncio.run(main())
    assert t.now == 0.0
    assert t.sleeps == []


def test_pause_holds_grants() -> None:
    """After pause(s) (a 429) nothing is granted for s seconds."""
    t = FakeTime()
    limiter = RateLimiter(Rate(90, 60), clock=t.clock, sleep=t.sleep)
    limiter.pause(7.0)
    assert limiter.try_acquire() == pytest.approx(7.0)
    t.now = 7.0
    assert limiter.try_acquire() == 0.0


def test_pause_only_extends() -> None:
    """A shorter pause does not cut a longer one short."""
    t = FakeTime()
    limiter = RateLimiter(Rate(90, 60), clock=t.clock, sleep=t.sleep)
    limiter.pause(10.0)
    limiter.pause(2.0)
    assert limiter.delay() == pytest.approx(10.0)


def test_server_remaining_zero_waits_for_reset() -> None:
    """RateLimit-Remaining 0 makes the next grant wait for RateLimit-Reset."""
    t = FakeTime()
    limiter = RateLimiter(Rate(90, 60), clock=t.clock, sleep=t.sleep)
    limiter.observe({"RateLimit-Remaining": "0", "RateLimit-Reset": "12"})
    assert limiter.try_acquire() == pytest.approx(12.0)
    t.now = 12.0
    assert limiter.try_acquire() == 0.0


def test_server_remaining_counts_down_locally() -> None:
    """With RateLimit-Remaining 2, two grants pass at once and the third waits for the reset."""
    t = FakeTime()
    limiter = RateLimiter(Rate(90, 60), clock=t.clock, sleep=t.sleep)
    limiter.observe({"ratelimit-remaining": "2", "ratelimit-reset": "30"})
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() == pytest.approx(30.0)


def test_server_budget_allows_bursting_to_own_cap() -> None:
    """A large server-stated remainder still never lets us exceed our own window cap."""
    t = FakeTime()
    limiter = RateLimiter(Rate(3, 60), clock=t.clock, sleep=t.sleep)
    limiter.observe({"RateLimit-Remaining": "100", "RateLimit-Reset": "60"})
    assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire() == pytest.approx(60.0)


def test_bad_headers_are_ignored() -> None:
    """Malformed or partial RateLimit headers change nothing."""
    t = FakeTime()
    limiter = RateLimiter(Rate(90, 60), clock=t.clock, sleep=t.sleep)
    limiter.observe({"RateLimit-Remaining": "x", "RateLimit-Reset": "5"})
    limiter.observe({"RateLimit-Remaining": "0"})
    assert limiter.try_acquire() == 0.0


def test_fractional_rates_become_whole_windows() -> None:
    """0.5/s is one request per 2 s; a non-positive rate is refused."""
    assert window_of(Rate(0.5, 1)) == (1, 2.0)
    assert window_of(Rate(90, 60)) == (90, 60.0)
    with pytest.raises(ValueError, match="positive"):
        window_of(Rate(0, 60))


def test_slot_counts_a_request_from_its_reply_not_its_grant() -> None:
    """A request held in flight keeps its slot until its reply, then for a full window after it."""
    now = [0.0]
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    limiter = RateLimiter(Rate(1, 10), clock=lambda: now[0], sleep=sleep)

    async def go() -> None:
        async with limiter.slot():
            now[0] += 4.0  # the reply takes 4 s: the server may have seen the request as late as t=4
        await limiter.acquire()

    asyncio.run(go())
    assert sleeps == [pytest.approx(10.0)]  # t=4 + 10 s window, i.e. 10 s after the reply at t=4 -> t=14
    assert now[0] == pytest.approx(14.0)


def test_long_poll_slot_counts_shortly_after_its_grant() -> None:
    """A long poll counts from LONG_POLL_ARRIVAL after its grant, however long the server holds it."""
    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += s

    limiter = RateLimiter(Rate(1, 10), clock=lambda: now[0], sleep=sleep)

    async def go() -> None:
        async with limiter.slot(long_poll=True):
            now[0] += 60.0
        await limiter.acquire()

    asyncio.run(go())
    assert now[0] == pytest.approx(60.0)  # its slot (t=1..11) expired while it was held


def test_without_hard_cap_the_server_budget_governs() -> None:
    """With the default rate (no hard cap) a server-stated remainder of 100 is spent at once, past our own 3."""
    t = FakeTime()
    limiter = RateLimiter(Rate(3, 60), hard_cap=False, clock=t.clock, sleep=t.sleep)
    limiter.observe({"RateLimit-Limit": "100", "RateLimit-Remaining": "100", "RateLimit-Reset": "60"})
    assert [limiter.try_acquire() for _ in range(100)] == [0.0] * 100
    assert limiter.try_acquire() == pytest.approx(60.0)
    t.now = 60.0  # the window passes unheard: a fresh one of the stated limit
    assert [limiter.try_acquire() for _ in range(100)] == [0.0] * 100
    assert limiter.try_acquire() > 0.0


def test_replies_discount_requests_the_server_has_not_counted_yet() -> None:
    """A reply saying 5 remain, while 3 other requests are still out, leaves 2 to spend."""
    t = FakeTime()
    limiter = RateLimiter(Rate(90, 60), hard_cap=False, clock=t.clock, sleep=t.sleep)

    async def go() -> list[float]:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(limiter.slot())  # three requests in flight
            limiter.observe({"RateLimit-Remaining": "5", "RateLimit-Reset": "30"}, 99)
            return [limiter.try_acquire() for _ in range(3)]

    assert asyncio.run(go()) == [0.0, 0.0, pytest.approx(30.0)]


def test_without_server_statement_our_own_cap_applies() -> None:
    """Before the server states a budget, the default rate still caps any window."""
    t = FakeTime()
    limiter = RateLimiter(Rate(3, 60), hard_cap=False, clock=t.clock, sleep=t.sleep)
    assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire() == pytest.approx(60.0)


def test_constrained_while_a_grant_waited_within_the_window() -> None:
    """constrained() is true from the moment a grant has to wait until one window later, then false again."""
    t = FakeTime()
    limiter = RateLimiter(Rate(2, 10), clock=t.clock, sleep=t.sleep)
    assert limiter.try_acquire() == 0.0
    assert limiter.try_acquire() == 0.0
    t.advance(2.0)  # past the pace span: only a wait can say the budget binds now
    assert not limiter.constrained()
    assert limiter.try_acquire() > 0
    assert limiter.constrained()
    t.advance(9.9)
    assert limiter.constrained()
    t.advance(0.2)
    assert not limiter.constrained()


def test_constrained_by_a_429_pause() -> None:
    """A 429's pause counts as the budget binding once a request has had to wait for it."""
    t = FakeTime()
    limiter = RateLimiter(Rate(100, 60), clock=t.clock, sleep=t.sleep)
    limiter.pause(5.0)
    assert not limiter.constrained()
    assert limiter.try_acquire() == pytest.approx(5.0)
    assert limiter.constrained()


def test_constrained_when_the_pace_would_spend_the_stated_budget_before_its_reset() -> None:
    """At 5 requests a second with 40 left and 20 s to the server's reset, the budget binds before any wait;
    at a trickle it does not."""
    t = FakeTime()
    limiter = RateLimiter(Rate(90, 60), hard_cap=False, clock=t.clock, sleep=t.sleep)
    limiter.try_acquire()
    limiter.observe({"RateLimit-Limit": "100", "RateLimit-Remaining": "99", "RateLimit-Reset": "60"})
    assert not limiter.constrained()  # one request is too few to judge a pace by
    for _ in range(30):
        t.advance(0.2)
        assert limiter.try_acquire() == 0.0
    limiter.observe({"RateLimit-Limit": "100", "RateLimit-Remaining": "40", "RateLimit-Reset": "20"})
    assert limiter.constrained()  # 5 a second x 20 s = 100 > 40


def test_a_fresh_window_counts_requests_still_on_their_way() -> None:
    """When the server's window passes unheard, requests still in flight may land in the new one: a limit of
    100 with 3 replies outstanding leaves 97 to send at once."""
    t = FakeTime()
    limiter = RateLimiter(Rate(3, 60), hard_cap=False, clock=t.clock, sleep=t.sleep)
    limiter.observe({"RateLimit-Limit": "100", "RateLimit-Remaining": "3", "RateLimit-Reset": "60"})

    async def go() -> list[float]:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(limiter.slot())  # the window's last three, not answered yet
            t.now = 60.0
            return [limiter.try_acquire() for _ in range(98)]

    waits = asyncio.run(go())
    assert waits[:97] == [0.0] * 97
    assert waits[97] > 0.0
