"""LaminaClient: the Lamina HTTP API over httpx in both dialects (runs / executions), with error mapping into
errors.py, one shared rate limiter, and retries by phase (idempotent calls retry; a sent start never does)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from lamina_batch.crash import crashpoint
from lamina_batch.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ConnectError,
    ForbiddenError,
    InputValidationError,
    InsufficientCreditsError,
    MissingApiKeyError,
    NotFoundError,
    Problem,
    RateLimitedError,
    ReadTimeoutError,
    RunFatalError,
    ServerError,
    TransientError,
    UnknownOutcomeError,
)
from lamina_batch.models import (
    AppInfo,
    AppOutput,
    AppParameter,
    AppSummary,
    Dialect,
    Rate,
    RemoteRun,
    RunOutput,
    RunPage,
)
from lamina_batch.ratelimit import Clock, RateLimiter, Sleep
from lamina_batch.retry import Retrier, RetryBudget, RetryPolicy, parse_retry_after
from lamina_batch.transport import H11Transport, Target, default_transport

DEFAULT_BASE_URL = "https://app.uselamina.ai"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
WAIT_GRACE = 15.0  # /wait holds the reply up to its timeout; allow this much on top before calling it lost
DEFAULT_429_PAUSE = 1.0
POOL_TIMEOUT = 60.0  # waiting for a free connection; runs in flight hold theirs during /wait
# Request bodies as httpx would send them (compact UTF-8); one encoder, built once.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
DEFAULT_RATE = Rate(90, 60)  # under Lamina's 100/min, leaving room for other tools on the same IP

T = TypeVar("T")
Phase = Literal["idempotent", "start"]


class ConnectionLostError(TransientError):
    """An idempotent request's connection broke after it was sent (reset, protocol error); safe to resend."""


class UnsupportedOperationError(ApiError):
    """The selected dialect has no endpoint for this operation (e.g. the runs list with `api: executions`)."""


class ErrorEnvelope(TypedDict, total=False):
    """Lamina's error body; older replies carry only `error`."""

    error: str
    code: str
    retryable: bool
    requestId: str
    retryAfter: float
    details: Any


@dataclass
class ClientStats:
    """Counters for benchmarks and reports (mutable on purpose: the client bumps them)."""

    requests: int = 0  # API requests sent, retries included
    retries: int = 0
    rate_limited: int = 0  # 429 replies received
    unknown_outcomes: int = 0  # starts sent whose reply was lost


@dataclass(frozen=True)
class _Paths:
    apps: str
    app: str
    start: str
    run: str
    signing_key: str
    wait: str | None = None
    runs: str | None = None
    cancel: str | None = None
    estimate: str | None = None


_PATHS: dict[str, _Paths] = {
    "runs": _Paths(
        apps="/v1/apps",
        app="/v1/apps/{app}",
        start="/v1/apps/{app}/runs",
        run="/v1/runs/{run}",
        signing_key="/v1/webhooks/signing-key",
        wait="/v1/runs/{run}/wait",
        runs="/v1/runs",
        cancel="/v1/runs/{run}/cancel",
        estimate="/v1/apps/{app}/estimate",
    ),
    "executions": _Paths(
        apps="/api/apps",
        app="/api/apps/{app}",
        start="/api/apps/{app}/executions",
        run="/api/executions/{run}",
        signing_key="/api/webhooks/signing-key",
    ),
}


def _seg(value: str) -> str:
    return quote(value, safe="")


class LaminaClient:
    """Async client for one Lamina account. Use as `async with LaminaClient(...) as client:`.

    The key lives only inside the `Authorization` header of an `httpx.Headers` (httpx masks it in reprs); no
    attribute, repr, log line or exception of ours carries it. Requests are `httpx.Request`s handed straight to
    the transport (default: transport.H11Transport; tests pass `httpx.MockTransport`): the AsyncClient layers
    (auth flows, redirects, cookies) are nothing Lamina's API uses and cost CPU per request (DESIGN.md §6).
    `max_connections` should be at least the runs in flight.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        dialect: Dialect = "runs",
        rate: Rate = DEFAULT_RATE,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        rate_cap: bool = True,
        max_connections: int = 128,
        limiter: RateLimiter | None = None,
        retry_policy: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if dialect not in _PATHS:
            raise ConfigError(Problem(f"unknown api dialect {dialect!r}", hint="use 'runs' or 'executions'"))
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(Problem("LAMINA_BASE_URL must be an http(s) URL", hint=DEFAULT_BASE_URL))
        _check_key(api_key)
        self.base_url = base_url.rstrip("/")
        self.dialect: Dialect = dialect
        self._paths = _PATHS[dialect]
        self.stats = ClientStats()
        # rate_cap=False: `rate` only paces us while the server states no budget of its own (see ratelimit.py)
        self._limiter = limiter or RateLimiter(rate, hard_cap=rate_cap, clock=clock, sleep=sleep)
        self._budget = budget or RetryBudget(clock=clock)
        self._retrier = Retrier(retry_policy, budget=self._budget, clock=clock, sleep=sleep, rng=rng)
        self._key_text = api_key  # only for scrubbing server-echoed text; never rendered (see __repr__)
        self._headers = httpx.Headers(
            {
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": "lamina-batch/0.1",
            }
        )
        self._timeouts = {"connect": CONNECT_TIMEOUT, "read": READ_TIMEOUT, "write": READ_TIMEOUT, "pool": POOL_TIMEOUT}
        self._transport = transport or default_transport(self.base_url, max_connections)
        # Our own transport is driven directly (no httpx.Request/Response per call); any other one (a proxy's,
        # a test's MockTransport) through the standard httpx interface. Replies of both then go the same way.
        self._direct: tuple[H11Transport, Target, bytes, list[tuple[bytes, bytes]]] | None = None
        if isinstance(self._transport, H11Transport):
            url = httpx.URL(self.base_url)
            self._direct = (self._transport, Target.of(url), url.raw_path.rstrip(b"/"), self._headers.raw)

    # ------------------------------------------------------------------ construction / lifecycle

    @classmethod
    def from_env(
        cls,
        dialect: Dialect = "runs",
        *,
        rate: Rate = DEFAULT_RATE,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 128,
    ) -> LaminaClient:
        """Build from `LAMINA_API_KEY` (required) and `LAMINA_BASE_URL` (default app.uselamina.ai)."""
        source = os.environ if env is None else env
        key = source.get("LAMINA_API_KEY", "").strip()
        if not key:
            raise MissingApiKeyError(
                Problem(
                    "LAMINA_API_KEY is not set",
                    hint="export LAMINA_API_KEY=lma_... (from your Lamina settings), or use --emulator",
                )
            )
        base_url = source.get("LAMINA_BASE_URL", "").strip() or DEFAULT_BASE_URL
        return cls(base_url, key, dialect, rate, transport, max_connections=max_connections)

    def __repr__(self) -> str:
        return f"LaminaClient(base_url={self.base_url!r}, dialect={self.dialect!r})"

    async def __aenter__(self) -> LaminaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    @property
    def budget_bound(self) -> bool:
        """Requests, not time, bound the batch right now (RateLimiter.constrained)."""
        return self._limiter.constrained()

    @property
    def supports_wait(self) -> bool:
        return self._paths.wait is not None

    @property
    def supports_list(self) -> bool:
        return self._paths.runs is not None

    @property
    def supports_cancel(self) -> bool:
        return self._paths.cancel is not None

    @property
    def supports_estimate(self) -> bool:
        return self._paths.estimate is not None

    # ------------------------------------------------------------------ endpoints

    async def list_apps(self, search: str | None = None, limit: int | None = None) -> list[AppSummary]:
        params: dict[str, str | int] = {}
        if search:
            params["search"] = search
        if limit is not None:
            params["limit"] = limit
        return await self._call("GET", self._paths.apps, _parse_app_list, params=params)

    async def get_app(self, app_id: str) -> AppInfo:
        return await self._call("GET", self._paths.app.format(app=_seg(app_id)), _parse_app)

    async def start(
        self,
        app_id: str,
        inputs: Mapping[str, Any],
        *,
        outputs: list[str] | tuple[str, ...] | None = None,
        webhook: str | None = None,
    ) -> RemoteRun:
        """Start one run. Retried only when nothing was sent or on 429; a lost reply is UnknownOutcomeError."""
        body: dict[str, Any] = {"inputs": dict(inputs)}
        if outputs is not None:
            body["outputs"] = list(outputs)
        params = {"webhook": webhook} if webhook else None
        return await self._call(
            "POST",
            self._paths.start.format(app=_seg(app_id)),
            self._parse_run,
            params=params,
            body=body,
            phase="start",
        )

    async def get_run(self, run_id: str) -> RemoteRun:
        return await self._call("GET", self._paths.run.format(run=_seg(run_id)), self._parse_run)

    async def wait(self, run_id: str, timeout: float = 60) -> RemoteRun:  # noqa: ASYNC109 - server-side hold time
        """Long-poll until the run ends or `timeout` (1..120 s) passes (`.timed_out`); executions: get_run."""
        if self._paths.wait is None:
            return await self.get_run(run_id)
        seconds = int(min(120, max(1, round(timeout))))
        return await self._call(
            "GET",
            self._paths.wait.format(run=_seg(run_id)),
            self._parse_run,
            params={"timeout": seconds},
            read_timeout=seconds + WAIT_GRACE,
            long_poll=True,
        )

    async def list_runs(
        self,
        app_id: str | None = None,
        status: str | None = None,
        since: str | datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> RunPage:
        """One page of runs, newest first (runs API only)."""
        if self._paths.runs is None:
            raise UnsupportedOperationError(
                "the runs list is not available with api: executions", method="GET", path="/v1/runs"
            )
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if app_id:
            params["appId"] = app_id
        if status:
            params["status"] = status
        if since is not None:
            params["since"] = _iso(since) if isinstance(since, datetime) else since
        return await self._call(
            "GET", self._paths.runs, lambda body: self._parse_page(body, limit, offset), params=params
        )

    async def cancel(self, run_id: str) -> RemoteRun | None:
        """Cancel a run (idempotent, runs API only; None with api: executions or when the reply has no run)."""
        if self._paths.cancel is None:
            return None
        return await self._call("POST", self._paths.cancel.format(run=_seg(run_id)), self._parse_optional_run)

    async def estimate(self, app_id: str, inputs: Mapping[str, Any]) -> float | None:
        """Estimated credits for one run (runs API only; None when unavailable)."""
        if self._paths.estimate is None:
            return None
        return await self._call(
            "POST",
            self._paths.estimate.format(app=_seg(app_id)),
            _parse_estimate,
            body={"inputs": dict(inputs)},
        )

    async def signing_keys(self) -> list[dict[str, str]]:
        """The webhook signing JWK set's `keys`."""
        return await self._call("GET", self._paths.signing_key, _parse_jwks)

    # ------------------------------------------------------------------ the request core

    async def _call(
        self,
        method: str,
        path: str,
        parse: Callable[[Any], T],
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        phase: Phase = "idempotent",
        read_timeout: float | None = None,
        long_poll: bool = False,
    ) -> T:

        async def attempt() -> T:
            try:
                return await self._attempt(method, path, parse, params, body, read_timeout, long_poll, phase)
            except TransientError as exc:
                if phase == "start" and not isinstance(exc, ConnectError | RateLimitedError):
                    self.stats.unknown_outcomes += 1
                    raise UnknownOutcomeError(
                        f"start sent but its reply was lost ({exc.message}); reconcile, do not resend",
                        status=exc.status,
                        code=exc.code,
                        request_id=exc.request_id,
                        method=method,
                        path=path,
                    ) from exc
                raise

        def count_retry(exc: TransientError, delay: float) -> None:
            self.stats.retries += 1

        if phase == "start":
            return await self._retrier.call(
                attempt, retry_if=lambda e: isinstance(e, ConnectError | RateLimitedError), on_retry=count_retry
            )
        return await self._retrier.call(attempt, on_retry=count_retry)

    async def _attempt(
        self,
        method: str,
        path: str,
        parse: Callable[[Any], T],
        params: Mapping[str, str | int] | None,
        body: Any,
        read_timeout: float | None,
        long_poll: bool = False,
        phase: Phase = "idempotent",
    ) -> T:
        async with self._limiter.slot(long_poll=long_poll) as grant:
            self.stats.requests += 1
            self._budget.record_request()
            try:
                if self._direct is not None:
                    sent = _start_sent if phase == "start" else None
                    status, headers, content = await self._direct_request(
                        method, path, params, body, read_timeout, sent
                    )
                    reply_headers: Mapping[str, str] = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
                else:
                    response = await self._httpx_request(method, path, params, body, read_timeout)
                    status, reply_headers, content = response.status_code, response.headers, response.content
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, method, path) from exc
        self._limiter.observe(reply_headers, grant)
        if not 200 <= status < 300:
            if self._direct is not None:
                response = httpx.Response(status, headers=headers, content=content)
            raise self._http_error(response, method, path)
        try:
            return parse(json.loads(content))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ServerError(
                f"malformed reply ({type(exc).__name__})", status=status, method=method, path=path
            ) from exc

    async def _direct_request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        body: Any,
        read_timeout: float | None,
        after_send: Callable[[], None] | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self._direct is not None
        transport, target, prefix, headers = self._direct
        timeouts = self._timeouts if read_timeout is None else {**self._timeouts, "read": read_timeout}
        url = prefix + path.encode("ascii")
        if params:
            url += b"?" + str(httpx.QueryParams(params)).encode("ascii")
        content = b""
        if body is not None:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            headers = [*headers, (b"Content-Length", b"%d" % len(content)), (b"Content-Type", b"application/json")]
        return await transport.send(method.encode("ascii"), target, url, list(headers), content, timeouts, after_send)

    async def _httpx_request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        body: Any,
        read_timeout: float | None,
    ) -> httpx.Response:
        timeouts = self._timeouts if read_timeout is None else {**self._timeouts, "read": read_timeout}
        request = httpx.Request(
            method,
            self.base_url + path,
            params=params,
            headers=self._headers,
            json=body,
            extensions={"timeout": timeouts},
        )
        response = await self._transport.handle_async_request(request)
        await response.aread()
        return response

    def _scrub(self, text: str) -> str:
        return text.replace(self._key_text, "***") if self._key_text else text

    def _transport_error(self, exc: httpx.HTTPError, method: str, path: str) -> ApiError:
        reason = self._scrub(f"{type(exc).__name__}: {exc}".rstrip(": "))
        kw: dict[str, Any] = {"method": method, "path": path}
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return ConnectError(f"could not connect to {self.base_url} ({reason})", **kw)
        if isinstance(exc, httpx.ReadTimeout):
            return ReadTimeoutError(f"no reply in time ({reason})", **kw)
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            return ApiError(f"request could not be sent ({reason})", **kw)
        if isinstance(exc, httpx.DecodingError):
            return ServerError(f"undecodable reply ({reason})", **kw)
        return ConnectionLostError(f"connection lost ({reason})", **kw)

    def _http_error(self, response: httpx.Response, method: str, path: str) -> ApiError:
        status = response.status_code
        envelope = _error_envelope(response)
        message = self._scrub(str(envelope.get("error") or "")) or _fallback_message(response)
        message = self._scrub(message)
        code = envelope.get("code")
        code = str(code) if code is not None else None
        request_id = envelope.get("requestId") or response.headers.get("x-request-id")
        kw: dict[str, Any] = {
            "status": status,
            "code": code,
            "request_id": str(request_id) if request_id is not None else None,
            "method": method,
            "path": path,
            "details": envelope.get("details"),
        }
        if code == "INSUFFICIENT_CREDITS" or "insufficient credit" in message.lower():
            return InsufficientCreditsError(message, **kw)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is None:
                retry_after = _number(envelope.get("retryAfter"))
            self.stats.rate_limited += 1
            self._limiter.pause(retry_after if retry_after is not None else DEFAULT_429_PAUSE)
            return RateLimitedError(message, retry_after=retry_after, **kw)
        if status == 400:
            return InputValidationError(message, **kw)
        if status == 401:
            return AuthError(message, **kw)
        if status == 403:
            return ForbiddenError(message, **kw)
        if status == 404:
            return NotFoundError(message, **kw)
        if status >= 500 or status == 408:
            return ServerError(message, **kw)
        if 400 <= status < 500:
            return RunFatalError(message, **kw)
        return ApiError(message, **kw)

    # ------------------------------------------------------------------ parsing (dialect-aware parts)

    def _parse_run(self, body: Any) -> RemoteRun:
        return _remote_run(_data(body), self.dialect)

    def _parse_optional_run(self, body: Any) -> RemoteRun | None:
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict) and _run_id(data, self.dialect):
            return _remote_run(data, self.dialect)
        return None

    def _parse_page(self, body: Any, limit: int, offset: int) -> RunPage:
        items = tuple(_remote_run(d, self.dialect) for d in _data(body))
        pagination = body.get("pagination") or {}
        return RunPage(
            items=items,
            total=int(pagination.get("total", len(items))),
            limit=int(pagination.get("limit", limit)),
            offset=int(pagination.get("offset", offset)),
        )


# ---------------------------------------------------------------------- wire helpers


def _start_sent() -> None:
    # A start is on the wire and its reply unread: the window where only the write-ahead intent accounts for it.
    crashpoint("after-send")


def _check_key(api_key: str) -> None:
    # A key httpx cannot put in a header would fail later with an encoding error; refuse it here, without
    # echoing it.
    if not api_key or not api_key.isascii() or not api_key.isprintable() or any(c.isspace() for c in api_key):
        raise MissingApiKeyError(
            Problem("LAMINA_API_KEY is empty or malformed", hint="set it to the lma_... key, without spaces")
        )


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0.0, float(value))


def _error_envelope(response: httpx.Response) -> ErrorEnvelope:
    try:
        body = response.json()
    except ValueError:
        return {}
    if isinstance(body, dict):
        envelope: ErrorEnvelope = {}
        if "error" in body:
            error = body["error"]
            # Some gateways nest the envelope: {"error": {"message": ..., "code": ...}}.
            if isinstance(error, dict):
                body = {**body, **error}
                error = error.get("message", "")
            envelope["error"] = str(error)
        for name in ("code", "requestId", "retryAfter", "details", "retryable"):
            if name in body:
                envelope[name] = body[name]
        return envelope
    return {}


def _fallback_message(response: httpx.Response) -> str:
    text = " ".join(response.text.split())[:160]
    reason = response.reason_phrase or "error"
    return f"{reason}: {text}" if text else reason


def _data(body: Any) -> Any:
    if not isinstance(body, dict) or "data" not in body:
        raise KeyError("data")
    return body["data"]


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _run_id(data: Mapping[str, Any], dialect: Dialect) -> str | None:
    first, second = ("runId", "executionId") if dialect == "runs" else ("executionId", "runId")
    value = data.get(first) or data.get(second) or data.get("id")
    return None if value is None else str(value)


def _remote_run(data: Any, dialect: Dialect) -> RemoteRun:
    if not isinstance(data, dict):
        raise TypeError("run is not an object")
    run_id = _run_id(data, dialect)
    if not run_id:
        raise KeyError("runId")
    outputs = data.get("outputs") or []
    return RemoteRun(
        run_id=run_id,
        status=str(data.get("status") or "queued"),
        error_message=_opt_str(data.get("errorMessage")),
        created_at=_opt_str(data.get("createdAt")),
        started_at=_opt_str(data.get("startedAt")),
        completed_at=_opt_str(data.get("completedAt")),
        outputs=tuple(_run_output(o) for o in outputs if isinstance(o, dict)),
        timed_out=bool(data.get("timeout", False)),
    )


def _run_output(data: Mapping[str, Any]) -> RunOutput:
    return RunOutput(
        id=str(data.get("id") or ""),
        label=str(data.get("label") or ""),
        type=str(data.get("type") or ""),
        value=data.get("value"),
        status=str(data.get("status") or "pending"),
        error=_opt_str(data.get("error")),
    )


def _str_tuple(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list | tuple):
        return None
    return tuple(str(v.get("label", v.get("value", ""))) if isinstance(v, dict) else str(v) for v in value)


def _parse_app(body: Any) -> AppInfo:
    data = _data(body)
    parameters = tuple(
        AppParameter(
            id=str(p.get("id") or ""),
            name=str(p["name"]),
            type=str(p.get("type") or "text"),
            required=bool(p.get("required", False)),
            key=_opt_str(p.get("key")),
            options=_str_tuple(p.get("options")),
            default=p.get("default"),
            has_default="default" in p,
            accept=_str_tuple(p.get("accept")),
        )
        for p in data.get("parameters") or []
    )
    outputs = tuple(
        AppOutput(index=int(o.get("index", i)), label=str(o.get("label") or ""), type=str(o.get("type") or ""))
        for i, o in enumerate(data.get("outputs") or [])
    )
    return AppInfo(
        app_id=str(data["appId"]),
        name=str(data.get("name") or data["appId"]),
        description=_opt_str(data.get("description")),
        parameters=parameters,
        outputs=outputs,
    )


def _parse_app_list(body: Any) -> list[AppSummary]:
    return [
        AppSummary(
            app_id=str(a["appId"]),
            name=str(a.get("name") or a["appId"]),
            description=_opt_str(a.get("description")),
            is_public=bool(a.get("isPublic", False)),
        )
        for a in _data(body)
    ]


def _parse_estimate(body: Any) -> float | None:
    data = _data(body)
    if isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if isinstance(data, dict):
        for name in ("credits", "estimatedCredits", "estimate", "cost"):
            value = data.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


def _parse_jwks(body: Any) -> list[dict[str, str]]:
    container = body.get("data", body) if isinstance(body, dict) else body
    keys = container["keys"]
    return [{str(k): str(v) for k, v in key.items()} for key in keys if isinstance(key, dict)]


__all__ = [
    "DEFAULT_BASE_URL",
    "ClientStats",
    "ConnectionLostError",
    "LaminaClient",
    "UnsupportedOperationError",
]
