"""The stop scope of a batch: the two stops (no new starts; abandon waiting), the FIFO pools that hand out slots,
step caps and the one-start-per-app gates, and waits that a stop interrupts without a helper task per wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Interrupted", "Pool", "StopScope"]

T = TypeVar("T")


class Interrupted(Exception):
    """The awaited thing was abandoned because a stop was requested."""


class Pool:
    """A FIFO counting semaphore (size 1: the one-start-in-flight-per-app gate) that hands a freed place
    straight to the next waiter (one loop turn, no watcher task per waiter) and whose waiters a stop
    interrupts (`interrupt`)."""

    def __init__(self, size: int = 1) -> None:
        self._free = size
        self._waiters: deque[tuple[asyncio.Future[None], asyncio.Event]] = deque()

    async def acquire(self, stop: asyncio.Event) -> None:
        """Take a place, or raise Interrupted if `stop` is (or becomes) set first."""
        if stop.is_set():
            raise Interrupted
        if self._free > 0:
            self._free -= 1
            return
        entry = (asyncio.get_running_loop().create_future(), stop)
        self._waiters.append(entry)
        try:
            await entry[0]
        except BaseException:
            fut = entry[0]
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise

    def release(self) -> bool:
        """Give a place back; True when it passed straight to a waiter."""
        while self._waiters:
            fut, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the place passes on; _free is unchanged
                return True
        self._free += 1
        return False

    def interrupt(self) -> None:
        """Wake every waiter whose stop event is set with Interrupted."""
        for entry in [e for e in self._waiters if e[1].is_set()]:
            self._waiters.remove(entry)
            if not entry[0].done():
                entry[0].set_exception(Interrupted())


class StopScope:
    """The batch's stops and every wait they end.

    `no_starts` (any stop): nothing new is started. `hard` (a signal, or an internal error): waiting is abandoned
    too, and start requests already sent get `start_grace` seconds to answer (their id is still recorded) before
    they are cancelled. `never`: a stop that never comes (crash leftovers are reconciled regardless)."""

    def __init__(self, *, start_grace: float, sleep: Callable[[float], Awaitable[None]]) -> None:
        self.no_starts = asyncio.Event()
        self.hard = asyncio.Event()
        self.never = asyncio.Event()
        self._start_grace = start_grace
        self._sleep = sleep
        self._pools: list[Pool] = []
        self._gates: dict[str, Pool] = {}
        self._waiting: defaultdict[asyncio.Event, set[asyncio.Task[Any]]] = defaultdict(set)
        self._stopped: set[asyncio.Task[Any]] = set()  # tasks in `until` that a stop cancelled
        self._starting: set[asyncio.Task[Any]] = set()  # tasks awaiting a start reply
        self._grace_cancelled: set[asyncio.Task[Any]] = set()  # ... that a hard stop's grace ran out on

    # ------------------------------------------------------------------ pools

    def pool(self, size: int) -> Pool:
        """A pool whose waiters the stops interrupt."""
        pool = Pool(size)
        self._pools.append(pool)
        return pool

    def app_gate(self, app_id: str) -> Pool:
        """The app's start gate: at most one start request in flight per app."""
        gate = self._gates.get(app_id)
        if gate is None:
            gate = self._gates[app_id] = self.pool(1)
        return gate

    # ------------------------------------------------------------------ stopping

    def stop_starts(self) -> None:
        self.no_starts.set()
        self.interrupt()

    def stop_hard(self) -> None:
        """Abandon waiting; starts in flight get `start_grace` seconds to answer, then are cancelled."""
        if self.hard.is_set():
            return
        self.hard.set()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing can be in flight
            asyncio.get_running_loop().call_later(self._start_grace, self._end_grace)

    def interrupt(self) -> None:
        """After a stop event was set: wake whoever waits on it (pools, gates, `until`)."""
        for pool in self._pools:
            pool.interrupt()
        # A task that sets a stop itself is not inside its await: it sees the stop at its next check.
        me = asyncio.current_task()
        for stop, tasks in self._waiting.items():
            if stop.is_set():
                for task in tasks:
                    if task is not me and task not in self._stopped:
                        self._stopped.add(task)
                        task.cancel()

    def close(self) -> None:
        self._waiting.clear()

    def _end_grace(self) -> None:
        for task in list(self._starting):
            self._grace_cancelled.add(task)
            task.cancel()

    # ------------------------------------------------------------------ waiting

    async def until(self, aw: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
        """Await `aw` in this task unless `stop` is set first; then cancel it and raise Interrupted.
        A stop cancels the waiting task itself (as asyncio.timeout does): no helper task, no extra loop turns
        on every poll."""
        if stop.is_set():
            aw.close()
            raise Interrupted
        me = asyncio.current_task()
        assert me is not None
        waiting = self._waiting[stop]
        waiting.add(me)
        try:
            return await aw
        except asyncio.CancelledError:
            if me not in self._stopped:
                raise
            self._stopped.discard(me)
            me.uncancel()
            raise Interrupted from None
        finally:
            waiting.discard(me)
            if me in self._stopped:  # `aw` swallowed the cancellation: take the request back
                self._stopped.discard(me)
                me.uncancel()

    async def pause(self, seconds: float, stop: asyncio.Event) -> None:
        await self.until(self._sleep(max(0.0, seconds)), stop)  # type: ignore[arg-type]

    async def start_request(self, aw: Coroutine[Any, Any, T]) -> T:
        """A start request, awaited in this run's own task: starts of one app are serial, so every loop turn
        spent on a helper task here would be paid by every later start. A hard stop gives it `start_grace`
        seconds to answer, then cancels it: Interrupted."""
        me = asyncio.current_task()
        assert me is not None
        self._starting.add(me)
        try:
            return await aw
        except asyncio.CancelledError:
            if me not in self._grace_cancelled:
                raise
            self._grace_cancelled.discard(me)
            me.uncancel()
            raise Interrupted from None
        finally:
            self._starting.discard(me)
