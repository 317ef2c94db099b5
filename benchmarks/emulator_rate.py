"""Benchmark: sustained requests/s the emulator answers over keep-alive connections.

Runs the emulator in a subprocess (so client and server do not share one GIL), opens N raw keep-alive
connections that each loop GET /v1/runs/{id} for D seconds, and prints a Markdown row and a JSON line.
    .venv/bin/python benchmarks/emulator_rate.py [--connections 64] [--seconds 5] [--client raw|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

import httpx

KEY = "lma_emulator"
SERVER = (
    "import sys\n"
    "from lamina_batch.emulator import EmulatorConfig, serve_forever\n"
    "def say(line):\n"
    "    print(line, flush=True)\n"
    "try:\n"
    "    serve_forever(EmulatorConfig(rate_limit=None, duration=3600.0, seed=1), say)\n"
    "except KeyboardInterrupt:\n"
    "    pass\n"
)


async def _raw_worker(host: str, port: int, path: str, deadline: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    done = 0
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200") or not body:
                raise RuntimeError(f"unexpected reply: {head[:40]!r}")
            latencies.append(time.perf_counter() - t0)
            done += 1
    finally:
        writer.close()
    return done


async def _httpx_worker(client: httpx.AsyncClient, path: str, deadline: float, latencies: list[float]) -> int:
    done = 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        r = await client.get(path)
        r.raise_for_status()
        latencies.append(time.perf_counter() - t0)
        done += 1
    return done


async def _bench(base_url: str, connections: int, seconds: float, client_kind: str) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as setup:
        r = await setup.post("/v1/apps/app_7Hk2/runs", json={"inputs": {"Prompt": "benchmark mug"}})
        run_id = r.json()["data"]["runId"]
    path = f"/v1/runs/{run_id}"
    host, port = base_url.removeprefix("http://").split(":")
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    if client_kind == "raw":
        counts = await asyncio.gather(
            *(_raw_worker(host, int(port), path, deadline, latencies) for _ in range(connections))
        )
    else:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits) as client:
            counts = await asyncio.gather(
                *(_httpx_worker(client, path, deadline, latencies) for _ in range(connections))
            )
    elapsed = time.perf_counter() - start
    latencies.sort()
    total = sum(counts)
    return {
        "requests": total,
        "seconds": round(elapsed, 2),
        "rps": round(total / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw")
    args = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.split(" on ", 1)[1].split(" ", 1)[0]
        result = asyncio.run(_bench(base_url, args.connections, args.seconds, args.client))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    result.update(connections=args.connections, client=args.client)
    print("| client | connections | seconds | requests | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.client} | {args.connections} | {result['seconds']} | {result['requests']} | {result['rps']} "
        f"| {result['p50_ms']} | {result['p99_ms']} |"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
