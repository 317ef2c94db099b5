"""Benchmark: the client's rate limiter under load, judged by the server: the worst window it ever filled.

64 tasks call `LaminaClient.get_app` as fast as the shared limiter lets them, for `--seconds`, against an emulator
in a subprocess whose own rate limit is off; the emulator's request log (server-side timestamps) gives the largest
number of requests in any window of the limiter's length. Time is compressed by `--scale` (the budget stays 90 per
window, the window is 60/scale s) so a run takes seconds; `--scale 1` measures real minutes.
    .venv/bin/python benchmarks/limiter_window.py [--scale 10] [--windows 4]
Prints a Markdown row and a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lamina_batch.client import LaminaClient
from lamina_batch.emulator import Emulator, EmulatorConfig
from lamina_batch.models import Rate


def worst_window(times: list[float], window: float) -> int:
    """Largest count of timestamps in any half-open interval [t, t + window)."""
    times = sorted(times)
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + window) - i)
    return best


async def hammer(base_url: str, key: str, rate: Rate, seconds: float, tasks: int) -> int:
    deadline = time.monotonic() + seconds
    sent = 0
    async with LaminaClient(base_url, key, rate=rate) as client:

        async def worker() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                await client.get_app("app_7Hk2")
                sent += 1

        await asyncio.gather(*(worker() for _ in range(tasks)))
    return sent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=10.0, help="time compression (1 = real minutes)")
    ap.add_argument("--windows", type=float, default=4.0, help="how many windows to run for")
    ap.add_argument("--tasks", type=int, default=64)
    args = ap.parse_args()
    window = 60.0 / args.scale
    rate = Rate(90, window)
    with Emulator(EmulatorConfig(rate_limit=None, seed=1)) as emu:
        t0 = time.monotonic()
        sent = asyncio.run(hammer(emu.base_url, emu.key, rate, window * args.windows, args.tasks))
        wall = time.monotonic() - t0
        times = [r.time for r in emu.stats.api_requests()]
    worst = worst_window(times, window)
    row = {
        "benchmark": "limiter_worst_window",
        "budget": 90,
        "window_s": window,
        "scale": args.scale,
        "requests": sent,
        "server_seen": len(times),
        "worst_window": worst,
        "achieved_per_window": round(sent / (wall / window), 1),
        "wall_s": round(wall, 2),
        "never_over": worst <= 90,
    }
    print("| benchmark | budget | window | requests | worst window (server-side) | never over |")
    print("|---|---|---|---|---|---|")
    print(f"| limiter | 90 | {window:g} s | {sent} | {worst} | {'yes' if worst <= 90 else 'NO'} |")
    print(json.dumps(row))
    return 0 if worst <= 90 else 1


if __name__ == "__main__":
    sys.exit(main())
