"""A run as the emulator keeps it (fixed facts; status computed from the clock, so 20k runs need no timers), its
timestamps as Lamina shows them, and `GET /v1/runs` (filters, `since`, pagination) over the creation order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from lamina_batch.emulator.catalogue import canonical_inputs, generated_text
from lamina_batch.emulator.config import AppDef, OutputDef
from lamina_batch.emulator.png import image_key, render_png
from lamina_batch.httpd import Reply, Request, json_reply

__all__ = ["STATUSES", "TERMINAL", "Run", "await_terminal", "epoch_ms", "file_reply", "iso", "list_runs"]

TERMINAL = frozenset({"completed", "failed", "cancelled"})
STATUSES = ("queued", "running", "completed", "failed", "cancelled")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def epoch_ms(ts: float) -> int:
    """The millisecond `iso(ts)` shows (microseconds rounded as datetime rounds them, then cut), as an integer."""
    when = datetime.fromtimestamp(ts, UTC)
    return int(when.replace(microsecond=0).timestamp()) * 1000 + when.microsecond // 1000


class Run:
    """A run's fixed facts; its status is computed from the clock, so 20k runs need no timers."""

    __slots__ = (
        "app",
        "cancelled_at",
        "created",
        "created_ms",
        "end_at",
        "fail_message",
        "id",
        "inputs",
        "inputs_json",
        "outputs",
        "start_at",
        "waiters",
        "webhook",
        "webhook_handle",
    )

    def __init__(
        self,
        run_id: str,
        app: AppDef,
        inputs: dict[str, Any],
        outputs: tuple[OutputDef, ...],
        created: float,
        start_at: float,
        end_at: float,
        fail_message: str | None,
        webhook: str | None,
    ) -> None:
        self.id = run_id
        self.app = app
        self.inputs = inputs
        self.inputs_json = canonical_inputs(inputs)
        self.outputs = outputs
        self.created = created
        self.created_ms = epoch_ms(created)
        self.start_at = start_at
        self.end_at = end_at
        self.fail_message = fail_message
        self.cancelled_at: float | None = None
        self.webhook = webhook
        self.webhook_handle: asyncio.TimerHandle | None = None
        self.waiters: list[asyncio.Future[None]] = []

    def status(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if now >= self.end_at:
            return "failed" if self.fail_message else "completed"
        if now >= self.start_at:
            return "running"
        return "queued"

    def summary(self, now: float, id_field: str) -> dict[str, Any]:
        s = self.status(now)
        started = (
            self.start_at
            if now >= self.start_at and (self.cancelled_at is None or self.cancelled_at >= self.start_at)
            else None
        )
        completed = self.cancelled_at if s == "cancelled" else (self.end_at if s in TERMINAL else None)
        return {
            id_field: self.id,
            "appId": self.app.app_id,
            "status": s,
            "errorMessage": self.fail_message if s == "failed" else ("Cancelled" if s == "cancelled" else None),
            "createdAt": iso(self.created),
            "startedAt": iso(started),
            "completedAt": iso(completed),
        }

    def outputs_body(self, status: str, base_url: str) -> list[dict[str, Any]]:
        """The `outputs` array for `status`: values only once completed (text generated, images as file URLs)."""
        run = self
        app = run.app
        out: list[dict[str, Any]] = []
        for o in run.outputs:
            value: str | None = None
            ostatus, error = "pending", None
            if status == "completed":
                ostatus = "completed"
                if o.type == "text":
                    value = generated_text(app, run.inputs, o.label)
                else:
                    value = f"{base_url}/files/{run.id}/{o.index}.png"
            elif status in ("failed", "cancelled"):
                ostatus, error = "error", ("Run cancelled" if status == "cancelled" else "Run failed")
            out.append(
                {
                    "id": o.output_id(app.app_id),
                    "label": o.label,
                    "type": o.type,
                    "value": value,
                    "status": ostatus,
                    "error": error,
                }
            )
        return out

    def body(self, now: float, id_field: str, base_url: str) -> dict[str, Any]:
        """The run object Lamina answers with: the summary plus its outputs."""
        body = self.summary(now, id_field)
        body["outputs"] = self.outputs_body(body["status"], base_url)
        return body


async def await_terminal(run: Run, delay: float, limit: float, base_url: str) -> dict[str, Any]:
    """`/wait`: hold until the run ends or `delay` passes (a cancel wakes it); its body, `timeout` if not ended."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    run.waiters.append(fut)
    handle = loop.call_later(max(0.0, delay), _resolve, fut)
    try:
        await fut
    finally:
        handle.cancel()
        run.waiters.remove(fut)
    now = time.time()
    # the timer may fire a hair before the lazy clock says terminal
    if run.cancelled_at is None and 0 < run.end_at - now < 0.05 and delay < limit:
        await asyncio.sleep(run.end_at - now)
        now = time.time()
    body = run.body(now, "runId", base_url)
    if body["status"] not in TERMINAL:
        body["timeout"] = True
    return body


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def file_reply(req: Request, runs: Mapping[str, Run]) -> Reply:
    """`GET /files/{run}/{index}.png`: the image output's PNG, only once its run completed."""
    parts = req.path.split("/")
    if req.method not in ("GET", "HEAD") or len(parts) != 4 or not parts[3].endswith(".png"):
        return _no_file()
    run = runs.get(parts[2])
    try:
        index = int(parts[3][:-4])
    except ValueError:
        return _no_file()
    if run is None or run.status(time.time()) != "completed":
        return _no_file()
    if not any(o.index == index and o.type == "image" for o in run.outputs):
        return _no_file()
    png = render_png(image_key(run.app.app_id, run.inputs_json, index, run.inputs))
    cache = (("Cache-Control", "public, max-age=86400"),)
    return Reply(200, b"" if req.method == "HEAD" else png, "image/png", cache)


def _no_file() -> Reply:
    return json_reply(404, {"error": "File not found", "code": "NOT_FOUND", "retryable": False})


def list_runs(order: Sequence[Run], q: Mapping[str, str], now: float) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The `GET /v1/runs` body, newest first, or the query's problems (field + message) when it is invalid."""
    problems: list[dict[str, str]] = []
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        problems.append({"field": "status", "message": f"must be one of {', '.join(STATUSES)}"})
    app_id = q.get("appId") or None
    since: int | None = None
    if q.get("since"):
        # compared at the millisecond `createdAt` shows: a run made in the same millisecond is never lost
        since = _parse_since(q["since"])
        if since is None:
            problems.append({"field": "since", "message": "must be an ISO-8601 timestamp"})
    limit, offset = 20, 0
    try:
        limit = int(q.get("limit", "20"))
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        problems.append({"field": "limit", "message": "must be an integer 1..100"})
    try:
        offset = int(q.get("offset", "0"))
        if offset < 0:
            raise ValueError
    except ValueError:
        problems.append({"field": "offset", "message": "must be a non-negative integer"})
    if problems:
        return {}, problems
    matched: list[dict[str, Any]] = []
    total = 0
    for run in reversed(order):
        if since is not None and run.created_ms < since:
            break  # creation order is monotonic: nothing older can match
        if app_id is not None and run.app.app_id != app_id:
            continue
        if status is not None and run.status(now) != status:
            continue
        if offset <= total < offset + limit:
            matched.append(run.summary(now, "runId"))
        total += 1
    return {"data": matched, "pagination": {"total": total, "limit": limit, "offset": offset}}, []


def _parse_since(v: str) -> int | None:
    """`since` (ISO-8601, or epoch seconds) as epoch milliseconds, or None when it is neither."""
    try:
        return epoch_ms(float(v))
    except (ValueError, OverflowError, OSError):
        pass
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.replace(microsecond=0).timestamp()) * 1000 + dt.microsecond // 1000
