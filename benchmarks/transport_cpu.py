"""Benchmark: the client's own CPU per run (start + /wait) at ~100 runs in flight, per transport under LaminaClient.

DESIGN.md §6 asks to measure this before designing around httpcore. The emulator runs in a child process; this
process drives N runs of D seconds through `LaminaClient.start` + `LaminaClient.wait` with C in flight (one start
at a time, as the executor does) and reports its own CPU seconds (process_time) per run for each transport:
    .venv/bin/python benchmarks/transport_cpu.py [-n 2000] [-c 100] [--duration 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import EmulatorProcess, EmuSettings  # the benchmarks folder is not a package

from lamina_batch.client import LaminaClient
from lamina_batch.models import Rate
from lamina_batch.transport import H11Transport


def _httpx_pool(connections: int) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncHTTPTransport(limits=limits)


class _ThroughHttpx(httpx.AsyncBaseTransport):
    """H11Transport behind the plain httpx interface: LaminaClient then builds an httpx.Request per call and
    gets an httpx.Response back, as it does for any transport that is not H11Transport itself."""

    def __init__(self, connections: int) -> None:
        self._inner = H11Transport(max_connections=connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


TRANSPORTS: dict[str, Callable[[int], httpx.AsyncBaseTransport]] = {
    "httpx.AsyncHTTPTransport (httpcore pool)": _httpx_pool,
    "H11Transport via httpx.Request/Response": _ThroughHttpx,
    "H11Transport.send (lamina-batch's default)": lambda connections: H11Transport(max_connections=connections),
}


async def drive(base_url: str, key: str, transport: httpx.AsyncBaseTransport, n: int, c: int) -> tuple[float, float]:
    """N runs through one LaminaClient with C in flight; returns (wall seconds, CPU seconds of this process)."""
    client = LaminaClient(base_url, key, rate=Rate(100_000, 1), transport=transport)
    gate = asyncio.Lock()  # one start in flight, as the executor's per-app gate
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            async with gate:
                run = await client.start("app_7Hk2", {"Prompt": f"transport benchmark {i}"})
            done = await client.wait(run.run_id, timeout=60)
            if done.status != "completed":
                raise RuntimeError(f"run {run.run_id} ended {done.status}")

    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(worker() for _ in range(c)))
    finally:
        await client.aclose()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="runs per transport (default 2000)")
    ap.add_argument("-c", type=int, default=100, help="runs in flight (default 100)")
    ap.add_argument("--duration", type=float, default=0.5, help="emulated run duration in seconds (default 0.5)")
    args = ap.parse_args(argv)
    print("| transport | runs | in flight | wall s | client CPU s | CPU ms per run (start + wait) |")
    print("|---|---|---|---|---|---|")
    for name, make in TRANSPORTS.items():
        emu = EmulatorProcess(EmuSettings(duration=args.duration, rate_limit=None))
        try:
            wall, cpu = asyncio.run(drive(emu.base_url, emu.key, make(args.c + 8), args.n, args.c))
        finally:
            emu.close()
        print(f"| {name} | {args.n} | {args.c} | {wall:.1f} | {cpu:.2f} | {1000 * cpu / args.n:.2f} |")
        print(json.dumps({"transport": name, "n": args.n, "c": args.c, "wall": wall, "cpu": cpu}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
