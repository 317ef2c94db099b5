"""The Lamina-compatible API: admission (faults, outage, rate limit, auth), routing, starts and credits, and the
runners (`Emulator` in a background thread, `serve`/`serve_forever` for `lamina-batch emulator`). Runs live in
runs.py, outgoing webhooks in delivery.py, counters in stats.py, the rate window and key check in gate.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import json
import os
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from lamina_batch.emulator.balance import ESTIMATE_FAULTS, Balance
from lamina_batch.emulator.catalogue import (
    app_detail,
    has_fail_marker,
    list_apps,
    validate_start_body,
)
from lamina_batch.emulator.config import AppDef, EmulatorConfig, Faults
from lamina_batch.emulator.delivery import WebhookSender
from lamina_batch.emulator.gate import RateWindows, auth_problem, error_body
from lamina_batch.emulator.journal import Journal, JournaledRun
from lamina_batch.emulator.oauth import REFRESH_ROUTE, OAuthServer, TokenPair, write_login_file
from lamina_batch.emulator.runs import TERMINAL, Run, await_terminal, file_reply, iso, list_runs
from lamina_batch.emulator.signing import KeyRing
from lamina_batch.emulator.stats import EmulatorStats, RequestLogEntry
from lamina_batch.httpd import DROP, HttpServer, Limits, Reply, Request, descriptor_share, json_reply

_T = TypeVar("_T")
FAIL_MESSAGE = "Generation failed: the model could not produce an output for these inputs"


def banner(base_url: str, key: str) -> str:
    """The first line `lamina-batch emulator` prints."""
    return f"Lamina emulator on {base_url} (key {key})"


class EmulatorCore:
    """All emulator state and request handling; lives on one event loop."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.stats = EmulatorStats()
        self.apps = {a.app_id: a for a in config.apps}
        self.keyring = KeyRing(config.seed, rotated=config.webhook_rotated)
        self.faults: Faults = config.faults
        self.outage = False
        self.outage_drop = config.outage_drop
        self.base_url = ""
        self.balance = Balance(config.credits)
        self.oauth = OAuthServer(config.oauth, self.stats.oauth) if config.oauth is not None else None
        self._rng = random.Random(f"{config.seed}/runs")
        self._journal = Journal(config.state_file) if config.state_file is not None else None
        self._fault_rng = random.Random(f"{config.seed}/faults")
        self._runs: dict[str, Run] = {}
        self._order: list[Run] = []
        self._active: set[str] = set()
        self._ends: list[tuple[float, str]] = []
        rate = config.rate_limit
        self._rates = RateWindows(rate, config.rate_window) if rate is not None else None
        self._request_ids = (f"req_{config.seed:x}_{n:06x}" for n in itertools.count(1))
        self._server: HttpServer | None = None
        self._webhooks = WebhookSender(config, self.keyring, self.stats, self._fault_rng)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Test-only controls, set through `Emulator` methods in the same process; no request can reach them.
        self.start_hook: Callable[[str, dict[str, Any]], None] | None = None
        self.result_hook: Callable[[str], None] | None = None
        self.kill_at: list[int] | None = None  # [pid, runs still to be created before the kill]
        if self._journal is not None:
            self._reload(self._journal)

    # ---- lifecycle of the server ------------------------------------------------------------------

    async def start_server(self) -> str:
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        limits = Limits(
            max_body=cfg.max_body_bytes,
            max_connections=descriptor_share(0.5, 64, 4096),
            idle_timeout=120.0,  # clients retire idle connections within seconds (ours at 4 s, httpx at 5 s)
            request_timeout=60.0,
        )
        self._server = HttpServer(
            self.handle, cfg.host, cfg.port, limits=limits, name="emulator", backlog=1024, on_error=_bug_reply
        )
        await self._server.start()
        port = self._server.port
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "", "::") else cfg.host  # noqa: S104 - mapping, not binding
        if ":" in host:
            host = f"[{host}]"
        self.base_url = f"http://{host}:{port}"
        if self._journal is not None:
            self._journal.listening(port)
        return self.base_url

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop()
        for run in self._order:
            if run.webhook_handle is not None:
                run.webhook_handle.cancel()
        await self._webhooks.close()

    def _reload(self, journal: Journal) -> None:
        """The runs an earlier emulator on the same state file created (their ids are never issued again)."""
        loaded = journal.load()
        # a fresh id sequence per reload: the seeded one would hand out the earlier emulator's ids again
        self._rng = random.Random(f"{self.config.seed}/runs/{len(loaded)}")
        for j in loaded:
            app = self.apps.get(j.app_id)
            if app is None:
                continue
            outputs = tuple(o for o in app.outputs if o.index in j.output_indexes)
            run = Run(j.run_id, app, j.inputs, outputs, j.created, j.start_at, j.end_at, j.fail_message, None)
            run.cancelled_at = j.cancelled_at
            self._runs[run.id] = run
            self._order.append(run)

    # ---- queries usable from tests ----------------------------------------------------------------

    def run_status(self, run_id: str) -> dict[str, Any] | None:
        run = self._runs.get(run_id)
        return None if run is None else self._body(run, time.time(), "runId")

    def run_ids(self) -> list[str]:
        return [r.id for r in list(self._order)]

    # ---- request handling ------------------------------------------------------------------------

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
        retry_after: int | None = None,
        details: Any = None,
    ) -> Reply:
        body, extra = error_body(
            code, message, next(self._request_ids), retryable=retryable, retry_after=retry_after, details=details
        )
        return json_reply(status, body, (*headers, *extra))

    def _logged(self, req: Request, reply: Reply) -> Reply:
        self.stats._log(RequestLogEntry(time.time(), req.method, req.path, reply.status, reply.drop))
        return reply

    def handle(self, req: Request) -> Reply | Awaitable[Reply]:
        path = req.path
        if path.startswith("/files/"):
            return self._logged(req, file_reply(req, self._runs))
        if path == REFRESH_ROUTE and self.oauth is not None:
            return self._logged(req, self._token(req))
        if not path.startswith(("/v1/", "/api/")):
            return self._logged(req, self._error(404, "NOT_FOUND", f"No route for {req.method} {path}"))
        faults = self.faults
        rng = self._fault_rng
        if faults.p_drop and rng.random() < faults.p_drop:
            return self._logged(req, DROP)
        if self.outage:
            if self.outage_drop:
                return self._logged(req, DROP)
            return self._logged(
                req, self._error(503, "RESOURCE_UNAVAILABLE", "Service temporarily unavailable", retryable=True)
            )
        rl_headers: tuple[tuple[str, str], ...] = ()
        if self._rates is not None:
            limited, rl_headers, retry_after = self._rates.count(req.peer)
            if limited:
                self.stats.sent_429 += 1
                return self._logged(
                    req,
                    self._error(
                        429,
                        "RATE_LIMITED",
                        "Rate limit exceeded: 100 requests per minute",
                        retryable=True,
                        headers=rl_headers,
                        retry_after=retry_after,
                    ),
                )
        auth = self._auth(req, rl_headers)
        if auth is not None:
            return self._logged(req, auth)
        if faults.p429 and rng.random() < faults.p429:
            self.stats.sent_429 += 1
            return self._logged(
                req,
                self._error(
                    429, "RATE_LIMITED", "Rate limit exceeded", retryable=True, headers=rl_headers, retry_after=1
                ),
            )
        if faults.p500 and rng.random() < faults.p500:
            return self._logged(
                req, self._error(500, "INTERNAL_ERROR", "Internal error", retryable=True, headers=rl_headers)
            )
        if faults.p503 and rng.random() < faults.p503:
            return self._logged(
                req,
                self._error(503, "RESOURCE_UNAVAILABLE", "Service unavailable", retryable=True, headers=rl_headers),
            )
        slow = faults.slow_seconds if faults.p_slow and rng.random() < faults.p_slow else 0.0
        result = self._route(req, rl_headers)
        if isinstance(result, Reply) and not slow:
            return self._logged(req, result)
        return self._later(req, result, slow)

    async def _later(self, req: Request, result: Reply | Awaitable[Reply], delay: float) -> Reply:
        reply = result if isinstance(result, Reply) else await result
        if delay:
            await asyncio.sleep(delay)
        return self._logged(req, reply)

    def _auth(self, req: Request, headers: tuple[tuple[str, str], ...]) -> Reply | None:
        problem = auth_problem(req.headers, self.config.key, self.oauth)
        return None if problem is None else self._error(401, *problem, headers=headers)

    def _token(self, req: Request) -> Reply:
        """The OAuth refresh grant (emulator/oauth.py); an outage reaches it like any other request."""
        assert self.oauth is not None
        if self.outage:
            return DROP if self.outage_drop else self._error(503, "RESOURCE_UNAVAILABLE", "Service unavailable")
        if req.method != "POST":
            return self._error(404, "NOT_FOUND", f"No route for {req.method} {req.path}")
        status, payload = self.oauth.token_endpoint(req.body, req.headers.get("content-type", ""))
        return json_reply(status, payload)

    def _route(self, req: Request, h: tuple[tuple[str, str], ...]) -> Reply | Awaitable[Reply]:
        parts = req.path.strip("/").split("/")
        m = req.method
        match parts:
            case ["v1" | "api", "apps"] if m == "GET":
                return self._list_apps(req, h)
            case ["v1" | "api", "apps", app_id] if m == "GET":
                app = self.apps.get(app_id)
                if app is None:
                    return self._error(404, "NOT_FOUND", "App not found", headers=h)
                return json_reply(200, {"data": app_detail(app)}, h)
            case ["v1", "apps", app_id, "runs"] if m == "POST":
                return self._start(req, app_id, "runId", h)
            case ["api", "apps", app_id, "executions"] if m == "POST":
                return self._start(req, app_id, "executionId", h)
            case ["v1", "apps", app_id, "estimate"] if m == "POST":
                return self._estimate(req, app_id, h)
            case ["v1", "runs"] if m == "GET":
                return self._list_runs(req, h)
            case ["v1", "runs", run_id] if m == "GET":
                self._result_requested(run_id)
                return self._status(run_id, "runId", h)
            case ["api", "executions", run_id] if m == "GET":
                self._result_requested(run_id)
                return self._status(run_id, "executionId", h)
            case ["v1", "runs", run_id, "wait"] if m == "GET":
                self._result_requested(run_id)
                return self._wait(req, run_id, h)
            case ["v1", "runs", run_id, "cancel"] if m == "POST":
                return self._cancel(run_id, h)
            case ["v1" | "api", "webhooks", "signing-key"] if m == "GET":
                return json_reply(200, self.keyring.jwks(), h)
        return self._error(404, "NOT_FOUND", f"No route for {m} {req.path}", headers=h)

    # ---- endpoints -------------------------------------------------------------------------------

    def _list_apps(self, req: Request, h: tuple[tuple[str, str], ...]) -> Reply:
        data, problem = list_apps(self.apps.values(), req.query)
        if problem is not None:
            return self._validation(problem, [], h)
        return json_reply(200, {"data": data}, h)

    def _validation(self, message: str, details: list[dict[str, str]], h: tuple[tuple[str, str], ...]) -> Reply:
        return self._error(400, "VALIDATION_ERROR", message, headers=h, details=details or None)

    def _parse_body(self, req: Request, h: tuple[tuple[str, str], ...]) -> tuple[Any, Reply | None]:
        try:
            return json.loads(req.body or b"null"), None
        except (ValueError, UnicodeDecodeError):
            return None, self._error(400, "VALIDATION_ERROR", "Request body is not valid JSON", headers=h)

    def _start(
        self, req: Request, app_id: str, id_field: str, h: tuple[tuple[str, str], ...]
    ) -> Reply | Awaitable[Reply]:
        app = self.apps.get(app_id)
        if app is None:
            return self._error(404, "NOT_FOUND", "App not found", headers=h)
        webhook = req.query.get("webhook")
        if webhook is not None:
            parts = urlsplit(webhook)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                return self._error(400, "WEBHOOK_INVALID_URL", "webhook must be an http(s) URL", headers=h)
        body, bad = self._parse_body(req, h)
        if bad is not None:
            return bad
        inputs, labels, problems = validate_start_body(app, body)
        if problems:
            return self._validation(f"Invalid inputs for {app.name}", problems, h)
        if self.start_hook is not None:
            self.start_hook(app.app_id, inputs)
        refused = self.balance.charge(app)
        if refused is not None:
            self.stats.insufficient_credits += 1
            return self._error(402, "INSUFFICIENT_CREDITS", refused, headers=h)
        run = self._create(app, inputs, labels, webhook, id_field)
        self._kill_if_armed()
        faults = self.faults
        if faults.p_lost_start_reply and self._fault_rng.random() < faults.p_lost_start_reply:
            return DROP
        if faults.p_start_500_after_create and self._fault_rng.random() < faults.p_start_500_after_create:
            return self._error(500, "INTERNAL_ERROR", "Internal error", retryable=True, headers=h)
        now = time.time()
        data = {
            id_field: run.id,
            "status": run.status(now),
            "createdAt": iso(run.created),
            "outputs": run.outputs_body("queued", self._files_base),
        }
        return json_reply(202, {"data": data}, h)

    def _create(
        self, app: AppDef, inputs: dict[str, Any], labels: list[str] | None, webhook: str | None, id_field: str
    ) -> Run:
        cfg = self.config
        now = time.time()
        if self._order and now < self._order[-1].created:
            now = self._order[-1].created  # keep creation order monotonic for `since` and newest-first
        dur = app.duration if app.duration is not None else cfg.duration
        seconds = self._rng.uniform(*dur) if isinstance(dur, tuple) else float(dur)
        fail: str | None = None
        if has_fail_marker(inputs):
            fail = FAIL_MESSAGE + " (input contains [[fail]])"
        elif self.faults.p_fail and self._fault_rng.random() < self.faults.p_fail:
            fail = FAIL_MESSAGE
        prefix = "run" if id_field == "runId" else "exe"
        run_id = f"{prefix}_{self._rng.getrandbits(80):020x}"
        while run_id in self._runs:  # never an id an earlier emulator on the same state file gave
            run_id = f"{prefix}_{self._rng.getrandbits(80):020x}"
        outputs = app.outputs if labels is None else tuple(o for o in app.outputs if o.label in labels)
        start_at = now + cfg.queued
        run = Run(run_id, app, inputs, outputs, now, start_at, start_at + seconds, fail, webhook)
        if self._journal is not None:
            # on disk before the start is answered: a client holding this id finds it after a restart
            indexes = tuple(o.index for o in outputs)
            self._journal.created(JournaledRun(run_id, app.app_id, inputs, indexes, now, start_at, run.end_at, fail))
        self._runs[run_id] = run
        self._order.append(run)
        self.stats._start(app.app_id, run.inputs_json, app.credits)
        self._track_active(run, now)
        if webhook is not None and self._loop is not None:
            run.webhook_handle = self._loop.call_later(run.end_at - now, self._terminal, run, id_field)
        return run

    def _kill_if_armed(self) -> None:
        """`Emulator.kill_on_start`: a run was just created and its reply is not written yet."""
        armed = self.kill_at
        if armed is None:
            return
        armed[1] -= 1
        if armed[1] > 0:
            return
        self.kill_at = None
        self.stats.kills += 1
        with contextlib.suppress(ProcessLookupError):
            os.kill(armed[0], signal.SIGKILL)

    def _result_requested(self, run_id: str) -> None:
        if self.result_hook is not None:
            self.result_hook(run_id)

    def _track_active(self, run: Run, now: float) -> None:
        ends = self._ends
        while ends and ends[0][0] <= now:
            self._active.discard(heapq.heappop(ends)[1])
        heapq.heappush(ends, (run.end_at, run.id))
        self._active.add(run.id)
        if len(self._active) > self.stats.peak_active:
            self.stats.peak_active = len(self._active)

    @property
    def _files_base(self) -> str:
        return (self.config.files_base_url or self.base_url).rstrip("/")

    def _body(self, run: Run, now: float, id_field: str) -> dict[str, Any]:
        return run.body(now, id_field, self._files_base)

    def _status(self, run_id: str, id_field: str, h: tuple[tuple[str, str], ...]) -> Reply:
        run = self._runs.get(run_id)
        if run is None:
            return self._error(404, "NOT_FOUND", "Run not found", headers=h)
        return json_reply(200, {"data": self._body(run, time.time(), id_field)}, h)

    def _wait(self, req: Request, run_id: str, h: tuple[tuple[str, str], ...]) -> Reply | Awaitable[Reply]:
        try:
            timeout = float(req.query.get("timeout", "60"))
        except ValueError:
            timeout = -1.0
        if not 1 <= timeout <= 120:
            return self._validation("timeout must be between 1 and 120 seconds", [], h)
        run = self._runs.get(run_id)
        if run is None:
            return self._error(404, "NOT_FOUND", "Run not found", headers=h)
        now = time.time()
        if run.status(now) in TERMINAL:
            return json_reply(200, {"data": self._body(run, now, "runId")}, h)
        body = await_terminal(run, min(timeout, run.end_at - now), timeout, self._files_base)
        return _reply_later(body, h)

    def _cancel(self, run_id: str, h: tuple[tuple[str, str], ...]) -> Reply:
        run = self._runs.get(run_id)
        if run is None:
            return self._error(404, "NOT_FOUND", "Run not found", headers=h)
        now = time.time()
        if run.status(now) not in TERMINAL:
            run.cancelled_at = now
            if self._journal is not None:
                self._journal.cancelled(run.id, now)
            self._active.discard(run.id)
            for fut in run.waiters:
                if not fut.done():
                    fut.set_result(None)
            if run.webhook_handle is not None:
                run.webhook_handle.cancel()
                self._terminal(run, "runId")
        return json_reply(200, {"data": self._body(run, now, "runId")}, h)

    def _estimate(self, req: Request, app_id: str, h: tuple[tuple[str, str], ...]) -> Reply:
        app = self.apps.get(app_id)
        if app is None:
            return self._error(404, "NOT_FOUND", "App not found", headers=h)
        body, bad = self._parse_body(req, h)
        if bad is not None:
            return bad
        # Lamina's SDK posts no body (an app-wide estimate); lamina-batch posts {"inputs": ...}, checked as a start's
        _, _, problems = validate_start_body(app, body, inputs_required=False)
        if problems:
            return self._validation(f"Invalid inputs for {app.name}", problems, h)
        data = self.balance.estimate(app)
        if data is None:
            return self._error(500, "INTERNAL_ERROR", "Estimate failed", headers=h)
        self.stats.estimates_served += 1
        return json_reply(200, {"data": data}, h)

    def _list_runs(self, req: Request, h: tuple[tuple[str, str], ...]) -> Reply:
        body, problems = list_runs(self._order, req.query, time.time())
        if problems:
            return self._validation("Invalid query", problems, h)
        return json_reply(200, body, h)

    # ---- webhooks --------------------------------------------------------------------------------

    def _terminal(self, run: Run, id_field: str) -> None:
        run.webhook_handle = None
        if run.webhook is None or self._loop is None:
            return
        finished = run.end_at if run.cancelled_at is None else run.cancelled_at
        self._webhooks.send(self._loop, run.id, run.webhook, finished, lambda now: self._body(run, now, id_field))


async def _reply_later(body: Awaitable[dict[str, Any]], h: tuple[tuple[str, str], ...]) -> Reply:
    return json_reply(200, {"data": await body}, h)


def _bug_reply(exc: Exception) -> Reply:
    """A handler that raised: 500 in Lamina's error shape, naming the exception type (never its text)."""
    return json_reply(500, {"error": f"emulator bug: {type(exc).__name__}", "code": "INTERNAL_ERROR"})


class Emulator:
    """The emulator on its own event loop in a background thread; a context manager.

    >>> with Emulator(EmulatorConfig(rate_limit=None)) as emu:
    ...     emu.base_url, emu.key, emu.stats.starts
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._core = EmulatorCore(self.config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Emulator(base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return self._core.base_url

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def stats(self) -> EmulatorStats:
        return self._core.stats

    @property
    def credits_remaining(self) -> float | None:
        return self._core.balance.remaining

    def banner(self) -> str:
        return banner(self.base_url, self.key)

    def start(self) -> str:
        """Bind and serve in a daemon thread; returns the base URL."""
        with self._lock:
            if self._thread is not None:
                return self.base_url
            self._ready.clear()
            self._thread = threading.Thread(target=self._main, name="lamina-emulator", daemon=True)
            self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.base_url

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._core.start_server())
        except BaseException as e:
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._core.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def stop(self) -> None:
        """Close every connection and the server, and join the thread. Safe to call twice."""
        with self._lock:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            self._thread = None
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- thread-safe controls --------------------------------------------------------------------

    def set_outage(self, on: bool, *, drop: bool | None = None) -> None:
        """Answer every API request 503 (or drop the connection when `drop`, default from config)."""
        if drop is not None:
            self._core.outage_drop = drop
        self._core.outage = on

    def set_faults(self, faults: Faults) -> None:
        self._core.faults = faults

    def rotate_webhook_key(self) -> str:
        """Publish a new signing key (the old stays in the set) and sign with it; returns its kid."""
        return self._core.keyring.rotate().kid

    def run_status(self, run_id: str) -> dict[str, Any] | None:
        """The status body GET /v1/runs/{id} would return now, or None for an unknown id."""
        return self._core.run_status(run_id)

    def run_ids(self) -> list[str]:
        return self._core.run_ids()

    # ---- test-only controls: in-process calls only, off until called, never reachable over HTTP ----------

    def kill_on_start(self, pid: int, nth: int = 1) -> None:
        """SIGKILL process `pid` when the `nth` run from now is created, before that start's reply is written:
        the client dies with the run created remotely and its reply unread. One arming, one kill (counted in
        `stats.kills`); arming again replaces it, `cancel_kill()` disarms."""
        if nth < 1:
            raise ValueError("nth must be at least 1")
        self._core.kill_at = [pid, nth]

    def cancel_kill(self) -> None:
        """Disarm `kill_on_start`."""
        self._core.kill_at = None

    def on_start(self, hook: Callable[[str, dict[str, Any]], None] | None) -> None:
        """Call `hook(app_id, inputs)` on the emulator's thread for every valid start request, when it arrives
        and before its run is created (None removes it). The hook must not raise; it may block briefly."""
        self._core.start_hook = hook

    def on_result_request(self, hook: Callable[[str], None] | None) -> None:
        """Call `hook(run_id)` on the emulator's thread for every status or /wait request, when it arrives and
        before it is answered (None removes it). The hook must not raise; it may block briefly."""
        self._core.result_hook = hook

    def fail_estimates(self, fault: str | None) -> None:
        """Test-only: answer every estimate with `fault`: "500" (INTERNAL_ERROR) or "malformed" (200 without an
        expected figure); None answers them again."""
        if fault is not None and fault not in ESTIMATE_FAULTS:
            raise ValueError(f"unknown estimate fault {fault!r}")

        def change() -> None:
            self._core.balance.estimate_fault = fault

        self._on_loop(change)

    def top_up(self, credits: float) -> float:
        """Add `credits` to the balance, between requests; returns the new balance (tests: "insufficient credits
        mid-batch, then top up and resume"). ValueError when the balance is unlimited or `credits` <= 0."""
        return self._on_loop(lambda: self._core.balance.top_up(credits))

    def set_credits(self, balance: float | None) -> None:
        """Set the balance outright (None: unlimited)."""

        def change() -> None:
            self._core.balance.remaining = balance

        self._on_loop(change)

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` on the emulator's loop (state is only ever changed there) and wait for its result."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running() or threading.current_thread() is self._thread:
            return fn()
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as e:  # handed to the calling thread
                done.set_exception(e)

        loop.call_soon_threadsafe(call)
        return done.result(timeout=10)

    def seed_login(self, *, access_ttl: float | None = None) -> TokenPair:
        """A new OAuth login (config `oauth` must be on); write `pair.login_document(emu.base_url)` to a test's
        `~/.lamina/config.json`."""
        if self._core.oauth is None:
            raise RuntimeError("this emulator's OAuth is off: configure oauth=OAuthConfig(...)")
        return self._core.oauth.seed_login(access_ttl=access_ttl)

    def expire_tokens(self, access_token: str | None = None) -> int:
        """Expire one access token now, or every live one (a server expiring tokens early); returns how many."""
        return 0 if self._core.oauth is None else self._core.oauth.expire(access_token)

    def issued_tokens(self) -> tuple[str, ...]:
        """Every OAuth access and refresh token this emulator handed out (none when OAuth is off)."""
        return () if self._core.oauth is None else self._core.oauth.issued()

    def with_config(self, **changes: Any) -> Emulator:
        """A new (not started) emulator with some config fields changed."""
        return Emulator(replace(self.config, **changes))


async def serve(config: EmulatorConfig, announce: Callable[[str], None], *, login_file: Path | None = None) -> None:
    """Serve on the running loop until cancelled; `announce` gets the banner line once bound. With `login_file`
    (config `oauth` on), a new OAuth login for this server is written there, as `lamina login` would."""
    core = EmulatorCore(config)
    base = await core.start_server()
    announce(banner(base, config.key))
    try:
        if login_file is not None:
            if core.oauth is None:
                raise ValueError("a login file needs the emulator's OAuth side (config `oauth`)")
            write_login_file(login_file, core.oauth.seed_login(), base)
            announce(f"OAuth login for this emulator written to {login_file}{_home_hint(login_file)}")
        await asyncio.Event().wait()
    finally:
        await core.close()


def _home_hint(path: Path) -> str:
    if path.name == "config.json" and path.parent.name == ".lamina":
        return f" (use it with HOME={path.parent.parent})"
    return ""


def serve_forever(config: EmulatorConfig, announce: Callable[[str], None], *, login_file: Path | None = None) -> None:
    """Blocking `serve`; KeyboardInterrupt propagates to the caller (the CLI maps it to exit 130)."""
    asyncio.run(serve(config, announce, login_file=login_file))
