"""The one request-rate limiter shared by every Lamina API request of a client.

A sliding-window log rather than a token bucket: a bucket of capacity N refilling at N/window lets a full
bucket burst N and then refill N more inside the same window (~2N per window), which breaks a server limit
of "N per any window". The log keeps the grant times of the last `count` requests, so any window of
`per_seconds` holds at most `count` grants, while a client that needs few requests still bursts at once.
Requests sent through `slot()` count from their *reply* instead of their grant: the server sees a request
somewhere between the two, and a burst that queued before reaching it must not spill into the next window.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from lamina_batch.models import Rate

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# While the oldest counted request is still in flight its time is not known yet: look again this soon.
IN_FLIGHT_RECHECK = 0.05
# A long poll (/wait) is held by the server for up to minutes; it is counted as arriving this long after
# its grant rather than at its reply, so holding a poll open does not hold a slot of the budget too.
LONG_POLL_ARRIVAL = 1.0
# How long after its grant a request may still be on its way to the server, uncounted by a reply we read.
IN_TRANSIT = 0.1
# constrained() judges the pace of requests over this share of the window (at least PACE_SPAN_MIN seconds).
PACE_SPAN_SHARE = 0.1
PACE_SPAN_MIN = 0.5
PACE_MIN_REQUESTS = 5


@dataclass
class _Grant:
    """One counted request: `at` is when it counts from; `open` while its reply is still outstanding."""

    at: float
    open: bool = False
    seq: int = 0


def window_of(rate: Rate) -> tuple[int, float]:
    """(whole requests, seconds) equivalent to `rate`: 0.5/s becomes 1 per 2 s, 90.5/min 90 per ~59.7 s."""
    if not (rate.count > 0 and rate.per_seconds > 0):
        raise ValueError(f"rate must be positive, got {rate}")
    count = max(1, math.floor(rate.count))
    if count == rate.count:
        return count, rate.per_seconds  # exact: no float round trip through count / count
    return count, rate.per_seconds * count / rate.count


class RateLimiter:
    """`await acquire()` (or `async with slot()`) before each API request; `observe(headers)` after each
    reply; `pause(s)` on 429.

    The server-stated budget (`RateLimit-Remaining` with `RateLimit-Reset`) is always respected: at 0 we wait
    for its reset, and requests we sent that its count may not include yet are taken off what it says. With
    `hard_cap` (a rate the user chose), our own cap of `count` per any `per_seconds` applies as well. Without
    it (the default rate), the server's statement governs while it makes one: we spend exactly what it grants
    in its window, so a batch under the limit finishes as soon as the server allows instead of at our pace;
    when its window passes unheard we assume a fresh window of its stated `RateLimit-Limit`, and our own cap
    applies only while the server has stated nothing. Grants are served first come, first served (one waiter
    sleeps at a time under a lock), so no caller starves and the log is never raced."""

    def __init__(
        self, rate: Rate, *, hard_cap: bool = True, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.rate = rate
        self.hard_cap = hard_cap
        self.count, self.per_seconds = window_of(rate)
        self._clock = clock
        self._sleep = sleep
        self._grants: deque[_Grant] = deque()
        self._seq = 0  # grants issued so far
        self._last_seq = -1  # the newest grant whose reply set the server budget
        self._open = 0  # requests sent whose replies are outstanding (not long polls)
        self._recent_polls: deque[float] = deque()  # grant times of long polls that may not have arrived yet
        self._paused_until = -math.inf
        # The server's own view of our budget; None when it does not say.
        self._server_remaining: int | None = None
        self._server_reset_at = -math.inf
        self._server_limit: int | None = None
        self._server_window = 0.0  # the longest Reset it has stated: our guess of its window's length
        self._lock: asyncio.Lock | None = None
        self._waited_at = -math.inf  # when a grant last had to wait for budget
        self._first_grant_at = math.inf

    # ------------------------------------------------------------------ pure core (tested with a fake clock)

    def delay(self, now: float | None = None) -> float:
        """Seconds until the next grant may happen (0.0: now). Has no side effect on the budget."""
        now = self._clock() if now is None else now
        # Same expression as the wait below, so float rounding can never both keep a grant and report 0 wait.
        while self._grants and not self._grants[0].open and self._grants[0].at + self.per_seconds <= now:
            self._grants.popleft()
        wait = 0.0
        if self._paused_until > now:
            wait = self._paused_until - now
        if self._server_remaining is not None and self._server_reset_at <= now:
            if self._server_limit is not None and not self.hard_cap:
                # Its window passed unheard: a fresh one (a 429 corrects us if its window is not fixed). Requests
                # still on their way may land in it rather than in the old one: count them there.
                while self._recent_polls and self._recent_polls[0] + IN_TRANSIT <= now:
                    self._recent_polls.popleft()
                self._server_remaining = max(0, self._server_limit - self._open - len(self._recent_polls))
                self._server_reset_at = now + max(self._server_window, 1.0)
            else:
                self._server_remaining = None
        if self._server_remaining is not None and self._server_remaining <= 0:
            wait = max(wait, self._server_reset_at - now)
        if (self.hard_cap or self._server_remaining is None) and len(self._grants) >= self.count:
            head = self._grants[0]
            wait = max(wait, IN_FLIGHT_RECHECK if head.open else head.at + self.per_seconds - now)
        return wait

    def try_acquire(self, now: float | None = None) -> float:
        """Grant at `now` if allowed (returns 0.0), else return the wait without granting."""
        now = self._clock() if now is None else now
        wait = self.delay(now)
        if wait > 0.0:
            self._waited_at = now
            return wait
        self._grants.append(_Grant(now, seq=self._seq))
        self._first_grant_at = min(self._first_grant_at, now)
        self._seq += 1
        if self._server_remaining is not None:
            self._server_remaining -= 1
        return 0.0

    def constrained(self, now: float | None = None) -> bool:
        """Requests, not time, bound the batch right now: a grant had to wait for budget (ours, the server's,
        or a 429's pause) within the last window, or at the pace of the last few seconds the budget runs out
        before its window resets."""
        now = self._clock() if now is None else now
        server = self._server_remaining is not None and self._server_reset_at > now
        window = max(self._server_window, 1.0) if server and not self.hard_cap else self.per_seconds
        if now - self._waited_at < window:
            return True
        # the pace over the last share of the window, or since the first request if that was more recent
        span = max(PACE_SPAN_MIN, min(PACE_SPAN_SHARE * window, now - self._first_grant_at))
        recent = sum(1 for g in self._grants if g.at >= now - span)
        if recent < PACE_MIN_REQUESTS:
            return False  # too few to call it a pace
        pace = recent / span
        if server:
            return pace * (self._server_reset_at - now) > (self._server_remaining or 0)
        return pace * self.per_seconds > self.count

    # ------------------------------------------------------------------ async interface

    async def acquire(self) -> None:
        """Wait until a request may be sent, and count it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                wait = self.try_acquire()
                if wait <= 0.0:
                    return
                await self._sleep(wait)

    @contextlib.asynccontextmanager
    async def slot(self, *, long_poll: bool = False) -> AsyncIterator[int]:
        """Acquire, then hold the grant open until the reply: it counts from the reply's time (a long poll
        counts from `LONG_POLL_ARRIVAL` after its grant). Yields the grant's sequence number for observe()."""
        await self.acquire()
        grant = self._grants[-1]  # ours: nothing ran between the grant and here
        if long_poll:
            self._recent_polls.append(grant.at)
            grant.at += LONG_POLL_ARRIVAL
            yield grant.seq
            return
        grant.open = True
        self._open += 1
        try:
            yield grant.seq
        finally:
            self._open -= 1
            grant.at = max(grant.at, self._clock())
            grant.open = False

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` from now (a 429's Retry-After); pauses only ever extend."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def observe(self, headers: Mapping[str, str], seq: int | None = None) -> None:
        """Adopt the server-stated budget from `RateLimit-Remaining` / `RateLimit-Reset` (delta seconds).

        `seq` is the reply's grant (from slot()). Requests still on their way may not be in the server's count
        yet (other replies outstanding, long polls granted in the last IN_TRANSIT s), so they are taken
        off what it says remains; a reply to a request older than the one that last set the budget is ignored."""
        lowered = {k.lower(): v for k, v in headers.items()}
        remaining = _int_header(lowered.get("ratelimit-remaining"))
        reset = _float_header(lowered.get("ratelimit-reset"))
        if remaining is None or reset is None:
            return
        now = self._clock()
        if seq is not None:
            if seq < self._last_seq:
                return  # a reply to an older request (a long poll held open): newer replies know better
            self._last_seq = seq
        while self._recent_polls and self._recent_polls[0] + IN_TRANSIT <= now:
            self._recent_polls.popleft()
        self._server_remaining = max(0, remaining - self._open - len(self._recent_polls))
        # Reset is whole seconds rounded up, so each reply bounds the window's end from above: within one
        # window keep the tightest bound seen (replies spread over a window pin it to a fraction of a second).
        candidate = now + max(0.0, reset)
        same_window = self._server_reset_at > now and abs(candidate - self._server_reset_at) < 1.0 + 1e-6
        self._server_reset_at = min(candidate, self._server_reset_at) if same_window else candidate
        self._server_window = max(self._server_window, reset)
        limit = _int_header(lowered.get("ratelimit-limit"))
        if limit is not None and limit > 0:
            self._server_limit = limit


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _float_header(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None
