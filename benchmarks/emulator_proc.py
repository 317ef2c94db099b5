"""The benchmark's emulator process: serves one Lamina emulator and answers stats queries over stdin/stdout.

Kept in its own process so the contender being measured never shares a GIL (or rusage) with the server.
    python emulator_proc.py '{"duration": [2, 4], "rate_limit": 100, "rate_window": 60, "seed": 1}'
First stdout line is the emulator banner; then each stdin line `stats` gets one JSON line back; EOF stops it.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

from lamina_batch.emulator import Emulator, EmulatorConfig


def snapshot(emu: Emulator) -> dict[str, Any]:
    """What the benchmark reports, counted by the server (never by the contender)."""
    st = emu.stats
    statuses: dict[str, int] = {}
    for run_id in emu.run_ids():
        body = emu.run_status(run_id)
        status = str(body["status"]) if body else "missing"
        statuses[status] = statuses.get(status, 0) + 1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    api = st.api_requests()
    return {
        "api_requests": len(api),
        # estimate requests (at most one per app per invocation) are counted in api_requests like any other
        # request against the rate limit, and reported on their own so the per-run figure can be read honestly
        "estimate_requests": sum(1 for r in api if r.path.endswith("/estimate")),
        "first_api_time": min((r.time for r in api), default=None),
        "starts": st.starts,
        "duplicate_starts": sum(n - 1 for n in st.duplicate_starts().values()),
        "sent_429": st.sent_429,
        "peak_active": st.peak_active,
        "webhooks_delivered": st.webhooks_delivered,
        "webhooks_failed": st.webhooks_failed,
        "statuses": statuses,
        "server_cpu": ru.ru_utime + ru.ru_stime,
    }


def main() -> int:
    opts = json.loads(sys.argv[1])
    dur = opts.get("duration", 1.0)
    config = EmulatorConfig(
        seed=int(opts.get("seed", 1)),
        duration=tuple(dur) if isinstance(dur, list) else float(dur),
        queued=float(opts.get("queued", 0.0)),
        rate_limit=opts.get("rate_limit"),
        rate_window=float(opts.get("rate_window", 60.0)),
    )
    with Emulator(config) as emu:
        print(emu.banner(), flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "starts":  # cheap: polled many times a second while waiting to kill a contender
                print(json.dumps({"starts": emu.stats.starts}), flush=True)
            elif cmd == "stats":
                print(json.dumps(snapshot(emu)), flush=True)
            elif cmd == "quit":
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
