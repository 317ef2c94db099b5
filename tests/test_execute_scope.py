"""The stop scope: FIFO pools whose waiters a stop interrupts, waits a stop ends without helper tasks, and the
grace a start request gets after a hard stop."""

from __future__ import annotations

import asyncio

import pytest

from lamina_batch.execute.scope import Interrupted, Pool, StopScope


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def test_pool_hands_places_over_in_order_and_a_stop_interrupts_only_its_waiters() -> None:
    """A freed place goes to the longest waiter; interrupt() wakes only waiters whose stop is set."""

    async def scenario() -> list[str]:
        pool = Pool(2)
        soft, hard = asyncio.Event(), asyncio.Event()
        order: list[str] = []

        async def take(name: str, stop: asyncio.Event) -> None:
            try:
                await pool.acquire(stop)
            except Interrupted:
                order.append(f"{name}:interrupted")
                return
            order.append(name)

        await take("a", soft)
        await take("b", soft)
        waiters = [asyncio.create_task(take(n, s)) for n, s in (("c", soft), ("d", hard), ("e", soft))]
        await asyncio.sleep(0)
        hard.set()
        pool.interrupt()
        assert pool.release() is True  # to c, the longest waiter
        await asyncio.sleep(0)
        assert pool.release() is True  # to e: d was interrupted
        await asyncio.gather(*waiters)
        assert pool.release() is False
        assert pool.release() is False
        return order

    assert asyncio.run(scenario()) == ["a", "b", "d:interrupted", "c", "e"]


def test_pool_place_handed_to_a_cancelled_waiter_passes_on() -> None:
    """A waiter cancelled just after a place was handed to it passes the place on instead of losing it."""

    async def scenario() -> bool:
        pool = Pool(1)
        stop = asyncio.Event()
        await pool.acquire(stop)
        first = asyncio.create_task(pool.acquire(stop))
        second = asyncio.create_task(pool.acquire(stop))
        await asyncio.sleep(0)
        pool.release()  # handed to `first` ...
        first.cancel()  # ... which is cancelled before it runs
        await asyncio.sleep(0)
        await second
        return first.cancelled()

    assert asyncio.run(scenario())


def test_until_turns_a_stop_into_interrupted_but_lets_other_cancels_through() -> None:
    """A stop ends a wait in `until` with Interrupted; a cancel from anyone else stays a CancelledError."""

    async def scenario() -> tuple[str, str, bool]:
        scope = StopScope(start_grace=1.0, sleep=_no_sleep)
        never = asyncio.get_running_loop().create_future()

        async def wait_on(fut: asyncio.Future[None]) -> str:
            try:
                await scope.until(fut, scope.no_starts)  # type: ignore[arg-type]
            except Interrupted:
                return "interrupted"
            return "done"

        stopped = asyncio.create_task(wait_on(never))
        await asyncio.sleep(0)
        scope.stop_starts()
        first = await stopped
        cancelled = asyncio.create_task(scope.until(asyncio.sleep(3600), scope.hard))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return first, "cancelled", stopped.cancelling() == 0

    assert asyncio.run(scenario()) == ("interrupted", "cancelled", True)


def test_until_a_stop_already_set_does_not_start_the_wait() -> None:
    """A wait asked for after its stop is set raises Interrupted at once and never runs the awaitable."""

    async def scenario() -> bool:
        scope = StopScope(start_grace=1.0, sleep=_no_sleep)
        scope.stop_starts()
        ran = False

        async def work() -> None:
            nonlocal ran
            ran = True

        with pytest.raises(Interrupted):
            await scope.until(work(), scope.no_starts)
        with pytest.raises(Interrupted):
            await scope.pause(5.0, scope.no_starts)
        return ran

    assert asyncio.run(scenario()) is False


def test_stops_interrupt_the_waiters_of_their_own_pools_and_gates() -> None:
    """stop_starts wakes waiters stopped by `no_starts` in every pool and app gate; `hard` ones keep waiting."""

    async def scenario() -> list[str]:
        scope = StopScope(start_grace=1.0, sleep=_no_sleep)
        slots, gate = scope.pool(1), scope.app_gate("app_a")
        assert scope.app_gate("app_a") is gate
        await slots.acquire(scope.never)
        await gate.acquire(scope.never)
        seen: list[str] = []

        async def take(pool: Pool, stop: asyncio.Event, name: str) -> None:
            try:
                await pool.acquire(stop)
            except Interrupted:
                seen.append(f"{name}:interrupted")
                return
            seen.append(name)

        tasks = [
            asyncio.create_task(take(slots, scope.no_starts, "slot")),
            asyncio.create_task(take(gate, scope.no_starts, "gate")),
            asyncio.create_task(take(gate, scope.hard, "follow")),
        ]
        await asyncio.sleep(0)
        scope.stop_starts()
        await asyncio.sleep(0)
        gate.release()
        await asyncio.gather(*tasks)
        return seen

    assert asyncio.run(scenario()) == ["slot:interrupted", "gate:interrupted", "follow"]


@pytest.mark.parametrize(("reply_after", "expected"), [(0.01, "answered"), (None, "interrupted")])
def test_a_start_request_gets_its_grace_after_a_hard_stop(reply_after: float | None, expected: str) -> None:
    """After a hard stop a start request in flight may still answer within the grace; past it, it is cancelled
    and raises Interrupted (its run stays `submitting` for the next invocation to reconcile)."""

    async def scenario() -> str:
        scope = StopScope(start_grace=0.05, sleep=_no_sleep)

        async def request() -> str:
            if reply_after is None:
                await asyncio.Event().wait()
            await asyncio.sleep(reply_after or 0)
            return "answered"

        task = asyncio.create_task(scope.start_request(request()))
        await asyncio.sleep(0)
        scope.stop_hard()
        scope.stop_hard()  # a second stop does not start a second grace
        try:
            return await asyncio.wait_for(task, 5)
        except Interrupted:
            return "interrupted"

    assert asyncio.run(scenario()) == expected
