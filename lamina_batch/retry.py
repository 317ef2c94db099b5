"""Retry policy for Lamina API calls and the executor's waiting loops: jittered backoff with attempt/time bounds,
a shared retry budget, and Retry-After parsing. Which failures are retryable is decided by the caller."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from lamina_batch.errors import RateLimitedError, TransientError

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value: delta seconds or an HTTP-date (RFC 9110); None if unusable.

    `now` is wall-clock epoch seconds (injectable so tests can pin HTTP-date arithmetic)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT by definition; a naive parse means "-0000"
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of one logical request's retries. Delays are jittered: uniform(floor x c, c) with
    c = min(cap, base * 2**n); floor 0 is full jitter."""

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int = 6  # attempts in total, the first included
    max_elapsed: float = 120.0  # never start a retry that would begin later than this after the first try
    floor: float = 0.0  # the least share of the ceiling a delay may be (0.5: never less than half)

    def backoff(self, retry_number: int, rng: random.Random) -> float:
        """Delay before retry `retry_number` (1-based)."""
        ceiling = min(self.cap, self.base * (2.0 ** (retry_number - 1)))
        return rng.uniform(self.floor * ceiling, ceiling)


# The executor's loops that wait for something to work again (a start never sent, a status poll, a runs list):
# they never give up on their own (a `Backoff` has no attempt or time bound), and no delay is under half its
# ceiling, so an outage is not hammered.
PERSISTENT = RetryPolicy(base=1.0, cap=30.0, floor=0.5)


class Backoff:
    """A policy's delays for a loop that retries until it succeeds: `next()` grows them, `reset()` after a
    success starts again from the shortest. `at_least` (a server's Retry-After) is honoured."""

    def __init__(self, policy: RetryPolicy = PERSISTENT, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._retries = 0

    def next(self, at_least: float | None = None) -> float:
        self._retries += 1
        delay = self.policy.backoff(self._retries, self._rng)
        return delay if at_least is None else max(delay, at_least)

    def reset(self) -> None:
        self._retries = 0


class RetryBudget:
    """Retries may be at most `ratio` of the requests sent in the last `window` seconds, plus `reserve`.

    Per-request attempt bounds alone let an outage multiply load by max_attempts; a shared budget keeps the
    extra load to a fixed share, so during an outage calls fail fast and the caller backs off as a whole."""

    def __init__(
        self, *, ratio: float = 0.2, reserve: int = 10, window: float = 60.0, clock: Clock = time.monotonic
    ) -> None:
        self.ratio = ratio
        self.reserve = reserve
        self.window = window
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        for log in (self._requests, self._retries):
            while log and log[0] <= horizon:
                log.popleft()

    def record_request(self) -> None:
        """Count one request sent (first attempts and retries alike)."""
        now = self._clock()
        self._trim(now)
        self._requests.append(now)

    def available(self) -> float:
        now = self._clock()
        self._trim(now)
        return self.reserve + self.ratio * len(self._requests) - len(self._retries)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        if self.available() < 1.0:
            return False
        self._retries.append(self._clock())
        return True


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


class Retrier:
    """Runs an attempt function until it succeeds, a non-retryable error escapes, or a bound is reached.

    429s honour Retry-After and do not draw on the budget: the server asked us to come back, that is not a
    storm. Other transient errors draw on the shared budget; when it is spent the error is raised at once."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        budget: RetryBudget | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.budget = budget
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    def delay_for(self, exc: TransientError, retry_number: int) -> float:
        retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
        if retry_after is not None:
            return retry_after
        return self.policy.backoff(retry_number, self._rng)

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        retry_if: Callable[[TransientError], bool] = is_transient,
        on_retry: Callable[[TransientError, float], None] | None = None,
    ) -> T:
        started = self._clock()
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt()
            except TransientError as exc:
                if not retry_if(exc) or tries >= self.policy.max_attempts:
                    raise
                delay = self.delay_for(exc, tries)
                if self._clock() - started + delay > self.policy.max_elapsed:
                    raise
                rate_limited = isinstance(exc, RateLimitedError)
                if not rate_limited and self.budget is not None and not self.budget.try_spend():
                    raise
                if on_retry is not None:
                    on_retry(exc, delay)
                await self._sleep(delay)
