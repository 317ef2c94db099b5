"""BASELINE written for the lamina-batch benchmark (not part of lamina-batch): the Lamina guide's Python example
(start a run, then poll every 5 s until completed or failed) looped over a CSV, one row after another.

    LAMINA_API_KEY=... python guide_script.py --base-url URL --csv rows.csv [--poll-interval 5] [--api runs]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import httpx

PATHS = {
    "runs": ("/v1/apps/{app}/runs", "/v1/runs/{id}", "runId"),
    "executions": ("/api/apps/{app}/executions", "/api/executions/{id}", "executionId"),
}


def request(client: httpx.Client, method: str, url: str, **kw: object) -> httpx.Response:
    """Send once; on 429 sleep Retry-After and send again, as an afternoon script would."""
    while True:
        r = client.request(method, url, **kw)  # type: ignore[arg-type]
        if r.status_code == 429:
            time.sleep(float(r.headers.get("Retry-After", "5")))
            continue
        r.raise_for_status()
        return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--key", default=None, help="API key (default: $LAMINA_API_KEY)")
    ap.add_argument("--csv", required=True)
    ap.add_argument("--app", default="app_7Hk2")
    ap.add_argument("--column", default="name", help="CSV column sent as the Prompt input")
    ap.add_argument("--concurrency", type=int, default=1, help="ignored: the guide's loop is sequential")
    ap.add_argument("--poll-interval", type=float, default=5.0)
    ap.add_argument("--api", choices=sorted(PATHS), default="runs")
    args = ap.parse_args(argv)
    key = args.key or os.environ.get("LAMINA_API_KEY", "")
    start_path, status_path, id_field = PATHS[args.api]
    failed = 0
    headers = {"Authorization": f"Bearer {key}"}
    with open(args.csv, newline="", encoding="utf-8") as f, httpx.Client(base_url=args.base_url, headers=headers) as c:
        for row in csv.DictReader(f):
            body = {"inputs": {"Prompt": row[args.column]}}
            run_id = request(c, "POST", start_path.format(app=args.app), json=body).json()["data"][id_field]
            while True:
                time.sleep(args.poll_interval)
                data = request(c, "GET", status_path.format(id=run_id)).json()["data"]
                if data["status"] in ("completed", "failed", "cancelled"):
                    break
            failed += data["status"] != "completed"
            print(f"{row.get('key', '')},{run_id},{data['status']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
