"""BASELINE written for the lamina-batch benchmark (not part of lamina-batch): an afternoon's asyncio script,
httpx.AsyncClient and a semaphore of C runs in flight, each started then polled every 5 s until it ends.

    LAMINA_API_KEY=... python async_script.py --base-url URL --csv rows.csv [--concurrency 8] [--poll-interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
from typing import Any

import httpx

PATHS = {
    "runs": ("/v1/apps/{app}/runs", "/v1/runs/{id}", "runId"),
    "executions": ("/api/apps/{app}/executions", "/api/executions/{id}", "executionId"),
}


async def request(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    """Send once; on 429 sleep Retry-After and send again."""
    while True:
        r = await client.request(method, url, **kw)
        if r.status_code == 429:
            await asyncio.sleep(float(r.headers.get("Retry-After", "5")))
            continue
        r.raise_for_status()
        return r


async def one(client: httpx.AsyncClient, sem: asyncio.Semaphore, args: argparse.Namespace, row: dict[str, str]) -> str:
    start_path, status_path, id_field = PATHS[args.api]
    async with sem:
        body = {"inputs": {"Prompt": row[args.column]}}
        r = await request(client, "POST", start_path.format(app=args.app), json=body)
        run_id = r.json()["data"][id_field]
        while True:
            await asyncio.sleep(args.poll_interval)
            data = (await request(client, "GET", status_path.format(id=run_id))).json()["data"]
            if data["status"] in ("completed", "failed", "cancelled"):
                print(f"{row.get('key', '')},{run_id},{data['status']}", flush=True)
                return str(data["status"])


async def amain(args: argparse.Namespace, rows: list[dict[str, str]]) -> int:
    key = args.key or os.environ.get("LAMINA_API_KEY", "")
    sem = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, limits=limits, timeout=30) as client:
        results = await asyncio.gather(*(one(client, sem, args, row) for row in rows))
    return 1 if any(s != "completed" for s in results) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--key", default=None, help="API key (default: $LAMINA_API_KEY)")
    ap.add_argument("--csv", required=True)
    ap.add_argument("--app", default="app_7Hk2")
    ap.add_argument("--column", default="name", help="CSV column sent as the Prompt input")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--poll-interval", type=float, default=5.0)
    ap.add_argument("--api", choices=sorted(PATHS), default="runs")
    args = ap.parse_args(argv)
    with open(args.csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return asyncio.run(amain(args, rows))


if __name__ == "__main__":
    sys.exit(main())
