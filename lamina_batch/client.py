"""LaminaClient: the Lamina HTTP API in both dialects (runs / executions) over one raw transport (transport.py),
with one shared rate limiter, retries by phase (idempotent calls retry; a sent start never does) and the
credentials' 401 rule (one resend with a refreshed token). Replies are read and errors mapped by wire.py."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from lamina_batch import wire
from lamina_batch.crash import crashpoint
from lamina_batch.credentials.base import CredentialSource, StaticKeySource
from lamina_batch.errors import (
    ApiError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    LoginRefreshError,
    MissingApiKeyError,
    Problem,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
)
from lamina_batch.models import AppInfo, AppSummary, Dialect, Rate, RemoteRun, RunPage
from lamina_batch.ratelimit import Clock, RateLimiter, Sleep
from lamina_batch.retry import Retrier, RetryBudget, RetryPolicy
from lamina_batch.transport import (
    MAX_REPLY,
    AfterSend,
    H11Transport,
    HttpxAdapter,
    RawTransport,
    Target,
    default_transport,
)

DEFAULT_BASE_URL = "https://app.uselamina.ai"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0  # between bytes of a reply
REPLY_DEADLINE = 60.0  # from a request being written to its reply's last byte (a /wait adds its hold time)
WAIT_GRACE = 15.0  # /wait holds the reply up to its timeout; allow this much on top before calling it lost
DEFAULT_429_PAUSE = 1.0
POOL_TIMEOUT = 60.0  # waiting for a free connection; runs in flight hold theirs during /wait
DEFAULT_RATE = Rate(90, 60)  # under Lamina's 100/min, leaving room for other tools on the same IP

T = TypeVar("T")
Phase = Literal["idempotent", "start"]

__all__ = [
    "DEFAULT_BASE_URL",
    "ClientStats",
    "ConnectionLostError",
    "LaminaClient",
    "UnsupportedOperationError",
]


class UnsupportedOperationError(ApiError):
    """The selected dialect has no endpoint for this operation (e.g. the runs list with `api: executions`)."""


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
    # "." and ".." would be dot-segments that URL normalisation removes: keep them one literal segment
    escaped = quote(value, safe="")
    return escaped.replace(".", "%2E") if escaped in (".", "..") else escaped


class LaminaClient:
    """Async client for one Lamina account. Use as `async with LaminaClient(...) as client:`.

    `credentials` is a key (kept as a `StaticKeySource`) or any `CredentialSource` (credentials/: the
    environment's key, a stored login, an OAuth login kept fresh). Each request asks it for its `Authorization`
    header inside its limiter slot, right before it is sent; a 401 to a header the source has since replaced
    (`unauthorized`) is sent once more with the new one, and a second 401 is fatal (AuthError). A start answered
    401 created nothing, so that resend is no duplicate (DESIGN.md §8, "Credentials"). The client closes the
    source with itself.

    The key lives only inside the `Authorization` header bytes; no attribute, repr, log line or exception of
    ours carries it. Every request goes through one raw-transport call (transport.RawTransport.send: method,
    target, path, headers and body in; status, headers and body out): H11Transport by default, and any other
    httpx transport (`httpx.MockTransport` in tests, httpx's own behind a proxy) inside an HttpxAdapter, so
    both put the same bytes on the wire. The AsyncClient layers (auth flows, redirects, cookies) are nothing
    Lamina's API uses and cost CPU per request (DESIGN.md §6). `max_connections` should be at least the runs
    in flight. A reply is capped at `max_reply` bytes and must be complete `reply_deadline` seconds after its
    request was written (a /wait: plus its hold time).
    """

    def __init__(
        self,
        base_url: str,
        credentials: str | CredentialSource,
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
        max_reply: int = MAX_REPLY,
        reply_deadline: float = REPLY_DEADLINE,
    ) -> None:
        if dialect not in _PATHS:
            raise ConfigError(Problem(f"unknown api dialect {dialect!r}", hint="use 'runs' or 'executions'"))
        url = _base_url(base_url)
        if isinstance(credentials, str):
            _check_key(credentials)
            credentials = StaticKeySource(credentials, base_url, source="environment", base_url_from="LAMINA_BASE_URL")
        self._credentials: CredentialSource = credentials
        self._authorization: tuple[str, bytes] = ("", b"")  # the last header value and its bytes
        self.base_url = base_url.strip().rstrip("/")
        self._shown_url = wire.mask_url(self.base_url)
        self.dialect: Dialect = dialect
        self._paths = _PATHS[dialect]
        self.stats = ClientStats()
        # rate_cap=False: `rate` only paces us while the server states no budget of its own (see ratelimit.py)
        self._limiter = limiter or RateLimiter(rate, hard_cap=rate_cap, clock=clock, sleep=sleep)
        self._budget = budget or RetryBudget(clock=clock)
        self._retrier = Retrier(retry_policy, budget=self._budget, clock=clock, sleep=sleep, rng=rng)
        self._headers: list[tuple[bytes, bytes]] = [  # Authorization is added per request
            (b"Accept", b"application/json"),
            (b"User-Agent", b"lamina-batch/0.1"),
        ]
        self._timeouts = {"connect": CONNECT_TIMEOUT, "read": READ_TIMEOUT, "write": READ_TIMEOUT, "pool": POOL_TIMEOUT}
        self._max_reply = max_reply
        self._reply_deadline = reply_deadline
        chosen = transport or default_transport(self.base_url, max_connections)
        self._raw: RawTransport = (
            chosen if isinstance(chosen, H11Transport) else HttpxAdapter(chosen, max_reply=max_reply)
        )
        self._target = Target.of(url)
        self._prefix = url.raw_path.rstrip(b"/")

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
        return f"LaminaClient(base_url={self._shown_url!r}, dialect={self.dialect!r})"

    async def __aenter__(self) -> LaminaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self._raw.aclose()
        finally:
            await self._credentials.aclose()

    @property
    def credentials(self) -> CredentialSource:
        return self._credentials

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
        return await self._call("GET", self._paths.apps, wire.parse_app_list, params=params)

    async def get_app(self, app_id: str) -> AppInfo:
        return await self._call("GET", self._paths.app.format(app=_seg(app_id)), wire.parse_app)

    async def start(
        self,
        app_id: str,
        inputs: Mapping[str, Any],
        *,
        outputs: list[str] | tuple[str, ...] | None = None,
        webhook: str | None = None,
    ) -> RemoteRun:
        """Start one run. Retried only when nothing was sent or on 429; a lost reply is UnknownOutcomeError.
        Once the request is written, before its reply is read, the crash point "after-send" fires."""
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
            hold=seconds,
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
            "GET", self._paths.runs, lambda body: wire.parse_page(body, self.dialect, limit, offset), params=params
        )

    async def cancel(self, run_id: str) -> RemoteRun | None:
        """Cancel a run (idempotent, runs API only; None with api: executions or when the reply has no run)."""
        if self._paths.cancel is None:
            return None
        return await self._call(
            "POST", self._paths.cancel.format(run=_seg(run_id)), lambda body: wire.optional_run(body, self.dialect)
        )

    async def estimate(self, app_id: str, inputs: Mapping[str, Any]) -> float | None:
        """Estimated credits for one run (runs API only; None when unavailable)."""
        if self._paths.estimate is None:
            return None
        return await self._call(
            "POST",
            self._paths.estimate.format(app=_seg(app_id)),
            wire.parse_estimate,
            body={"inputs": dict(inputs)},
        )

    async def estimate_cost(self, app_id: str, inputs: Mapping[str, Any] | None) -> wire.CostFigures | None:
        """The estimate's figures for one run of `app_id` with `inputs` (None: no body, an app-wide estimate as
        Lamina's SDK asks): expected, min, max credits and the balance (runs API only; None on the executions
        API). A reply without an expected figure is a ServerError."""
        if self._paths.estimate is None:
            return None
        body = None if inputs is None else {"inputs": dict(inputs)}
        return await self._call("POST", self._paths.estimate.format(app=_seg(app_id)), wire.parse_cost, body=body)

    async def signing_keys(self) -> list[dict[str, str]]:
        """The webhook signing JWK set's `keys`."""
        return await self._call("GET", self._paths.signing_key, wire.parse_jwks)

    def _parse_run(self, body: Any) -> RemoteRun:
        return wire.run_from_reply(body, self.dialect)

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
        hold: float = 0.0,
    ) -> T:
        request = self._build(method, path, params, body)
        after_send = _start_sent if phase == "start" else None

        async def attempt() -> T:
            try:
                return await self._attempt(request, parse, read_timeout, hold, after_send)
            except ApiError as exc:
                if phase == "start" and _outcome_unknown(exc):
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

    def _build(
        self, method: str, path: str, params: Mapping[str, str | int] | None, body: Any
    ) -> tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes]:
        """(method, path, target bytes, headers, body bytes): what both transports put on the wire."""
        target = self._prefix + path.encode("ascii")
        if params:
            target += b"?" + str(httpx.QueryParams(params)).encode("ascii")
        headers = self._headers
        content = b""
        if body is not None:
            # as httpx would send them: compact UTF-8 JSON
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            headers = [*headers, (b"Content-Length", b"%d" % len(content)), (b"Content-Type", b"application/json")]
        return method, path, target, headers, content

    async def _attempt(
        self,
        request: tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes],
        parse: Callable[[Any], T],
        read_timeout: float | None,
        hold: float,
        after_send: AfterSend | None,
    ) -> T:
        method, path = request[0], request[1]
        status, reply_headers, body, presented = await self._exchange(request, read_timeout, hold, after_send)
        if status == 401 and await self._credentials.unauthorized(presented):
            # The token this request carried was refused and a newer one is in use now: send it once more. A start
            # answered 401 created nothing, so this resend is no duplicate; a second 401 is fatal below.
            status, reply_headers, body, _ = await self._exchange(request, read_timeout, hold, after_send)
        if not 200 <= status < 300:
            error = wire.error_from_reply(status, reply_headers, body, method=method, path=path, scrub=self._scrub)
            if isinstance(error, RateLimitedError):
                self.stats.rate_limited += 1
                pause = error.retry_after
                self._limiter.pause(pause if pause is not None else DEFAULT_429_PAUSE)
            raise error
        return wire.parse_reply(status, reply_headers, body, parse, method=method, path=path)

    async def _exchange(
        self,
        request: tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes],
        read_timeout: float | None,
        hold: float,
        after_send: AfterSend | None,
    ) -> tuple[int, dict[str, str], bytes, str]:
        """One request on the wire: (status, reply headers, body, the Authorization value it carried)."""
        method, path, target, headers, content = request
        timeouts = self._timeouts if read_timeout is None else {**self._timeouts, "read": read_timeout}
        async with self._limiter.slot(long_poll=hold > 0) as grant:
            # asked for inside the slot, right before the send: an OAuth login due for a refresh is refreshed here
            presented = await self._credentials.authorization()
            self.stats.requests += 1
            self._budget.record_request()
            try:
                status, raw_headers, body = await self._raw.send(
                    method.encode("ascii"),
                    self._target,
                    target,
                    [(b"Authorization", self._header_bytes(presented)), *headers],
                    content,
                    timeouts,
                    deadline=self._reply_deadline + hold,
                    max_reply=self._max_reply,
                    after_send=after_send,
                )
            except httpx.HTTPError as exc:
                raise wire.error_from_transport(
                    exc, base_url=self.base_url, method=method, path=path, scrub=self._scrub
                ) from exc
        reply_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        self._limiter.observe(reply_headers, grant)
        return status, reply_headers, body, presented

    def _header_bytes(self, value: str) -> bytes:
        # encoded once per token, not once per request
        if self._authorization[0] != value:
            self._authorization = (value, value.encode("ascii"))
        return self._authorization[1]

    def _scrub(self, text: str) -> str:
        text = self._credentials.scrub(text)
        return text.replace(self.base_url, self._shown_url) if self._shown_url != self.base_url else text


# ---------------------------------------------------------------------- helpers


def _start_sent() -> None:
    # A start is on the wire and its reply unread: the window where only the write-ahead intent accounts for it.
    crashpoint("after-send")


def _outcome_unknown(exc: ApiError) -> bool:
    """A start that failed this way may have created a run: everything after the request went out, except a
    4xx refusal (other than 408). Connect errors and 429 are retried; TLS and send failures sent nothing. A login
    that could not be refreshed is no answer to the start (which was refused 401 or never sent): nothing was created."""
    if isinstance(exc, ConnectError | RateLimitedError | LoginRefreshError):
        return False
    if isinstance(exc, TransientError):
        return True
    return exc.status is not None and not (400 <= exc.status < 500 and exc.status != 408)


def _base_url(text: str) -> httpx.URL:
    """The parsed base URL, or one ConfigError line that never echoes it (it may carry a password)."""
    text = text.strip()
    problem = None
    if any(not c.isprintable() or c.isspace() for c in text):
        problem = "contains a space, newline or other control character"
    else:
        try:
            url = httpx.URL(text)
        except (httpx.InvalidURL, ValueError, TypeError):
            problem = "is not a URL httpx can parse"
        else:
            if url.scheme not in ("http", "https") or not url.host:
                problem = "must be an http(s) URL with a host"
            else:
                return url
    raise ConfigError(Problem(f"LAMINA_BASE_URL {problem}", hint=f"for example {DEFAULT_BASE_URL}"))


def _check_key(api_key: str) -> None:
    # A key that cannot go into a header would fail later with an encoding error; refuse it here, without
    # echoing it.
    if not api_key or not api_key.isascii() or not api_key.isprintable() or any(c.isspace() for c in api_key):
        raise MissingApiKeyError(
            Problem("LAMINA_API_KEY is empty or malformed", hint="set it to the lma_... key, without spaces")
        )


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
