"""Tests for client.py: both dialects' paths and shapes, error mapping, retries by phase, key hygiene."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import HostileServer
from test_transport import Server, _self_signed, reply

from lamina_batch.client import ConnectionLostError, LaminaClient, UnsupportedOperationError
from lamina_batch.credentials import AuthStatus
from lamina_batch.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ConnectError,
    EndpointError,
    ForbiddenError,
    InputValidationError,
    InsufficientCreditsError,
    LoginRefreshError,
    MissingApiKeyError,
    NotFoundError,
    RateLimitedError,
    ReadTimeoutError,
    RunFatalError,
    ServerError,
    TransientError,
    UnknownOutcomeError,
)
from lamina_batch.models import Dialect, Rate
from lamina_batch.retry import RetryBudget, RetryPolicy
from lamina_batch.transport import H11Transport, RawReply, Target

KEY = "lma_SECRET_key_123"
BASE = "https://lamina.test"
T = TypeVar("T")
Handler = Callable[[httpx.Request], httpx.Response]

APP = {
    "appId": "app_1",
    "name": "Product Hero",
    "description": "Makes heroes",
    "somethingNew": {"ignored": True},
    "parameters": [
        {"id": "p1", "key": "prompt", "name": "Prompt", "type": "text", "required": True},
        {
            "id": "p2",
            "name": "Aspect Ratio",
            "type": "options",
            "required": False,
            "options": ["1:1", "16:9"],
            "default": "1:1",
        },
        {"id": "p3", "name": "Seed", "type": "text", "default": None},
        {"id": "p4", "name": "Reference Image", "type": "url", "accept": ["image"], "extra": 1},
    ],
    "outputs": [{"index": 0, "label": "Hero Image", "type": "image"}],
}

RUN = {
    "runId": "run_9",
    "status": "completed",
    "errorMessage": None,
    "createdAt": "2025-01-01T00:00:00Z",
    "startedAt": "2025-01-01T00:00:01Z",
    "completedAt": "2025-01-01T00:00:09Z",
    "outputs": [
        {
            "id": "node-1",
            "label": "Hero Image",
            "type": "image",
            "value": "https://cdn.test/a.png",
            "status": "completed",
            "error": None,
            "newField": 3,
        }
    ],
}


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Recorder:
    """A MockTransport handler that replays scripted replies and records requests."""

    def __init__(self, *replies: httpx.Response | Exception | Handler) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply) and not isinstance(reply, httpx.Response):
            return reply(request)
        return reply


def ok(data: Any, status: int = 200, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"data": data, **extra})


def make(recorder: Recorder, dialect: Dialect = "runs", **kw: Any) -> tuple[LaminaClient, FakeTime]:
    t = FakeTime()
    client = LaminaClient(
        BASE,
        KEY,
        dialect,
        Rate(1000, 1),
        httpx.MockTransport(recorder),
        clock=t.clock,
        sleep=t.sleep,
        rng=random.Random(5),
        **kw,
    )
    return client, t


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def using(client: LaminaClient, fn: Callable[[LaminaClient], Coroutine[Any, Any, T]]) -> T:
    async with client:
        return await fn(client)


# ---------------------------------------------------------------------------- shapes and paths


def test_get_app_parses_and_authenticates() -> None:
    """get_app hits /v1/apps/{id} with a Bearer key and parses parameters, defaults and outputs."""
    rec = Recorder(ok(APP))
    client, _ = make(rec)
    app = run(using(client, lambda c: c.get_app("app_1")))
    request = rec.requests[0]
    assert request.method == "GET"
    assert request.url.path == "/v1/apps/app_1"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert app.app_id == "app_1"
    assert app.name == "Product Hero"
    by_name = {p.name: p for p in app.parameters}
    assert by_name["Prompt"].has_default is False
    assert by_name["Prompt"].required is True
    assert by_name["Prompt"].key == "prompt"
    assert by_name["Aspect Ratio"].options == ("1:1", "16:9")
    assert by_name["Aspect Ratio"].has_default is True
    assert by_name["Aspect Ratio"].default == "1:1"
    assert by_name["Seed"].has_default is True  # "default": null is still a default
    assert by_name["Reference Image"].accept == ("image",)
    assert by_name["Reference Image"].has_default is False
    assert app.outputs[0].label == "Hero Image"


def test_app_ids_are_path_escaped() -> None:
    """An app id cannot smuggle extra path segments."""
    rec = Recorder(ok(APP))
    client, _ = make(rec)
    run(using(client, lambda c: c.get_app("../x y")))
    assert rec.requests[0].url.raw_path == b"/v1/apps/..%2Fx%20y"


def test_list_apps() -> None:
    """list_apps sends search/limit and parses summaries."""
    rec = Recorder(ok([{"appId": "a", "name": "A", "description": None, "isPublic": True, "x": 1}]))
    client, _ = make(rec)
    apps = run(using(client, lambda c: c.list_apps(search="hero", limit=5)))
    assert rec.requests[0].url.path == "/v1/apps"
    assert dict(rec.requests[0].url.params) == {"search": "hero", "limit": "5"}
    assert apps[0].app_id == "a"
    assert apps[0].is_public is True


def test_start_runs_dialect() -> None:
    """start POSTs inputs/outputs to /v1/apps/{id}/runs with the webhook query and parses runId."""
    rec = Recorder(ok({"runId": "run_1", "status": "queued", "outputs": [{"label": "Hero Image"}]}, 202))
    client, _ = make(rec)
    remote = run(
        using(
            client,
            lambda c: c.start("app_1", {"Prompt": "x"}, outputs=["Hero Image"], webhook="https://h.test/w"),
        )
    )
    request = rec.requests[0]
    assert request.method == "POST"
    assert request.url.path == "/v1/apps/app_1/runs"
    assert request.url.params["webhook"] == "https://h.test/w"
    assert json.loads(request.content) == {"inputs": {"Prompt": "x"}, "outputs": ["Hero Image"]}
    assert remote.run_id == "run_1"
    assert remote.status == "queued"
    assert not remote.terminal


def test_get_run_parses_outputs() -> None:
    """get_run parses status, timestamps and outputs, ignoring unknown keys."""
    rec = Recorder(ok(RUN))
    client, _ = make(rec)
    remote = run(using(client, lambda c: c.get_run("run_9")))
    assert rec.requests[0].url.path == "/v1/runs/run_9"
    assert remote.terminal
    assert remote.completed_at == "2025-01-01T00:00:09Z"
    assert remote.outputs[0].value == "https://cdn.test/a.png"
    assert remote.outputs[0].status == "completed"


def test_wait_long_poll_and_read_timeout() -> None:
    """wait uses /wait?timeout=N with a read timeout of N+15 s and reports `timeout: true`."""
    rec = Recorder(ok({**RUN, "status": "running", "timeout": True}))
    client, _ = make(rec)
    remote = run(using(client, lambda c: c.wait("run_9", timeout=60)))
    request = rec.requests[0]
    assert request.url.path == "/v1/runs/run_9/wait"
    assert request.url.params["timeout"] == "60"
    assert request.extensions["timeout"]["read"] == 75.0
    assert remote.timed_out is True
    assert remote.status == "running"


def test_wait_clamps_timeout() -> None:
    """wait's timeout is clamped to the API's 1..120 range."""
    rec = Recorder(ok(RUN))
    client, _ = make(rec)
    run(using(client, lambda c: c.wait("r", timeout=500)))
    assert rec.requests[0].url.params["timeout"] == "120"


def test_normal_requests_use_default_timeouts() -> None:
    """Ordinary requests use connect 10 s / read 30 s."""
    rec = Recorder(ok(RUN))
    client, _ = make(rec)
    run(using(client, lambda c: c.get_run("r")))
    timeout = rec.requests[0].extensions["timeout"]
    assert timeout["connect"] == 10.0
    assert timeout["read"] == 30.0


def test_list_runs_params_and_page() -> None:
    """list_runs sends its filters (since as ISO-8601 Z) and parses pagination."""
    body = {"data": [{"runId": "r2", "status": "running"}], "pagination": {"total": 7, "limit": 1, "offset": 3}}
    rec = Recorder(httpx.Response(200, json=body))
    client, _ = make(rec)
    since = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    page = run(using(client, lambda c: c.list_runs(app_id="app_1", since=since, limit=1, offset=3)))
    params = dict(rec.requests[0].url.params)
    assert rec.requests[0].url.path == "/v1/runs"
    assert params == {"appId": "app_1", "since": "2025-01-02T03:04:05Z", "limit": "1", "offset": "3"}
    assert page.total == 7
    assert page.items[0].run_id == "r2"


def test_cancel_estimate_and_signing_keys() -> None:
    """cancel, estimate and signing_keys use their runs-dialect paths and shapes."""
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "lamina-webhook-v1", "alg": "EdDSA"}
    rec = Recorder(
        ok({"runId": "r", "status": "cancelled"}),
        ok({"credits": 4}),
        httpx.Response(200, json={"keys": [jwk]}),
    )
    client, _ = make(rec)

    async def go(c: LaminaClient) -> tuple[Any, Any, Any]:
        return await c.cancel("r"), await c.estimate("app_1", {"Prompt": "x"}), await c.signing_keys()

    cancelled, credits, keys = run(using(client, go))
    assert [r.url.path for r in rec.requests] == [
        "/v1/runs/r/cancel",
        "/v1/apps/app_1/estimate",
        "/v1/webhooks/signing-key",
    ]
    assert cancelled is not None
    assert cancelled.status == "cancelled"
    assert credits == 4.0
    assert keys == [jwk]


def test_executions_dialect_paths_and_id_field() -> None:
    """The executions dialect uses /api paths and the executionId field; wait falls back to a status GET."""
    rec = Recorder(
        ok(APP),
        ok({"executionId": "ex_1", "status": "queued"}, 202),
        ok({**{k: v for k, v in RUN.items() if k != "runId"}, "executionId": "ex_1"}),
        ok({"executionId": "ex_1", "status": "running"}),
        httpx.Response(200, json={"data": {"keys": []}}),
    )
    client, _ = make(rec, "executions")

    async def go(c: LaminaClient) -> list[Any]:
        return [
            await c.get_app("app_1"),
            await c.start("app_1", {"Prompt": "x"}),
            await c.get_run("ex_1"),
            await c.wait("ex_1"),
            await c.signing_keys(),
        ]

    _, started, status, waited, keys = run(using(client, go))
    assert [r.url.path for r in rec.requests] == [
        "/api/apps/app_1",
        "/api/apps/app_1/executions",
        "/api/executions/ex_1",
        "/api/executions/ex_1",
        "/api/webhooks/signing-key",
    ]
    assert started.run_id == "ex_1"
    assert status.outputs[0].label == "Hero Image"
    assert waited.status == "running"
    assert keys == []
    assert not client.supports_wait
    assert not client.supports_list
    assert not client.supports_cancel
    assert not client.supports_estimate


def test_executions_dialect_unsupported_operations() -> None:
    """With executions, list_runs raises, cancel/estimate return None, and no request is sent."""
    rec = Recorder(ok({}))
    client, _ = make(rec, "executions")

    async def go(c: LaminaClient) -> tuple[Any, Any]:
        with pytest.raises(UnsupportedOperationError):
            await c.list_runs()
        return await c.cancel("x"), await c.estimate("a", {})

    assert run(using(client, go)) == (None, None)
    assert rec.requests == []


def test_runs_dialect_supports_everything() -> None:
    """The runs dialect advertises wait, list, cancel and estimate."""
    client, _ = make(Recorder(ok({})))
    assert client.supports_wait
    assert client.supports_list
    assert client.supports_cancel
    assert client.supports_estimate


# ---------------------------------------------------------------------------- error mapping


def envelope(code: str, message: str = "nope", **extra: Any) -> dict[str, Any]:
    return {"error": message, "code": code, "retryable": False, "requestId": "req_42", **extra}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, envelope("VALIDATION_ERROR", details={"Prompt": "missing"}), InputValidationError),
        (401, envelope("AUTH_INVALID_KEY"), AuthError),
        (403, envelope("FORBIDDEN"), ForbiddenError),
        (404, envelope("NOT_FOUND"), NotFoundError),
        (404, {"error": "App not found"}, NotFoundError),
        (402, {"error": "Insufficient credits for this run"}, InsufficientCreditsError),
        (400, envelope("INSUFFICIENT_CREDITS"), InsufficientCreditsError),
        (409, {"error": "conflict"}, RunFatalError),
    ],
)
def test_error_mapping_non_retryable(status: int, body: dict[str, Any], expected: type[ApiError]) -> None:
    """Each non-retryable status/body maps to its class, once, keeping code, requestId and details."""
    rec = Recorder(httpx.Response(status, json=body))
    client, _ = make(rec)
    with pytest.raises(expected) as info:
        run(using(client, lambda c: c.get_app("app_1")))
    exc = info.value
    assert type(exc) is expected
    assert len(rec.requests) == 1
    assert exc.status == status
    assert exc.method == "GET"
    assert exc.path == "/v1/apps/app_1"
    assert exc.message == body["error"]
    if "requestId" in body:
        assert exc.request_id == "req_42"
        assert exc.code == body["code"]
        assert "req_42" in str(exc)
    if "details" in body:
        assert exc.details == {"Prompt": "missing"}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_server_error_and_retried(status: int) -> None:
    """5xx replies are ServerError, retried up to the attempt bound with jittered sleeps."""
    rec = Recorder(httpx.Response(status, text="<html>Bad gateway</html>"))
    client, t = make(rec, retry_policy=RetryPolicy(max_attempts=3))
    with pytest.raises(ServerError) as info:
        run(using(client, lambda c: c.get_run("r")))
    assert len(rec.requests) == 3
    assert len(t.sleeps) == 2
    assert "Bad gateway" in info.value.message  # non-JSON body text is kept, whitespace-collapsed
    assert client.stats.requests == 3
    assert client.stats.retries == 2


def test_retry_schedule_is_seeded_full_jitter() -> None:
    """GET retries sleep the seeded full-jitter schedule (0.5 s base, doubling) and then succeed."""
    rec = Recorder(httpx.Response(503, json=envelope("RESOURCE_UNAVAILABLE")), httpx.Response(500), ok(RUN))
    client, t = make(rec)
    run(using(client, lambda c: c.get_run("r")))
    rng = random.Random(5)
    assert t.sleeps == [rng.uniform(0, 0.5), rng.uniform(0, 1.0)]


def test_429_retry_after_seconds() -> None:
    """A 429 with Retry-After seconds is retried after exactly that pause, counted in stats."""
    rec = Recorder(
        httpx.Response(429, headers={"Retry-After": "3"}, json=envelope("RATE_LIMITED", retryAfter=9)), ok(RUN)
    )
    client, t = make(rec)
    run(using(client, lambda c: c.get_run("r")))
    assert 3.0 in t.sleeps
    assert sum(t.sleeps) == pytest.approx(3.0)  # the limiter pause and the retry sleep overlap
    assert client.stats.rate_limited == 1
    assert client.stats.retries == 1


def test_429_retry_after_http_date() -> None:
    """A 429 whose Retry-After is an HTTP-date waits until that date."""
    when = datetime.now(UTC) + timedelta(seconds=30)
    rec = Recorder(httpx.Response(429, headers={"Retry-After": format_datetime(when, usegmt=True)}))
    client, _ = make(rec, retry_policy=RetryPolicy(max_attempts=1))
    with pytest.raises(RateLimitedError) as info:
        run(using(client, lambda c: c.get_run("r")))
    assert info.value.retry_after is not None
    assert 25.0 <= info.value.retry_after <= 30.0


def test_429_body_retry_after_fallback() -> None:
    """Without a Retry-After header, the body's retryAfter is used, and the limiter pauses for it."""
    rec = Recorder(httpx.Response(429, json=envelope("RATE_LIMITED", retryAfter=8)))
    client, t = make(rec, retry_policy=RetryPolicy(max_attempts=1))
    with pytest.raises(RateLimitedError) as info:
        run(using(client, lambda c: c.get_run("r")))
    assert info.value.retry_after == 8.0
    assert client.limiter.delay(t.now) == pytest.approx(8.0)


def test_get_read_timeout_is_retried_then_raised() -> None:
    """A GET read timeout is ReadTimeoutError, retried within bounds."""
    rec = Recorder(httpx.ReadTimeout("timed out"))
    client, _ = make(rec, retry_policy=RetryPolicy(max_attempts=2))
    with pytest.raises(ReadTimeoutError):
        run(using(client, lambda c: c.get_run("r")))
    assert len(rec.requests) == 2


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow")])
def test_connect_failures_are_connect_error(exc: Exception) -> None:
    """Connect errors and connect timeouts map to ConnectError."""
    rec = Recorder(exc)
    client, _ = make(rec, retry_policy=RetryPolicy(max_attempts=1))
    with pytest.raises(ConnectError):
        run(using(client, lambda c: c.get_app("a")))


def test_idempotent_connection_loss_is_retried() -> None:
    """A reset on an idempotent request is a transient ConnectionLostError and is retried."""
    rec = Recorder(httpx.RemoteProtocolError("Server disconnected"), ok(RUN))
    client, _ = make(rec)
    assert run(using(client, lambda c: c.get_run("r"))).run_id == "run_9"
    assert len(rec.requests) == 2
    rec2 = Recorder(httpx.ReadError("reset"))
    client2, _ = make(rec2, retry_policy=RetryPolicy(max_attempts=1))
    with pytest.raises(ConnectionLostError):
        run(using(client2, lambda c: c.get_run("r")))


def test_malformed_success_body_is_server_error() -> None:
    """A 2xx that is not JSON or lacks `data` is a (retried) ServerError on a GET."""
    rec = Recorder(httpx.Response(200, text="oops"), httpx.Response(200, json={"nodata": 1}), ok(RUN))
    client, _ = make(rec)
    assert run(using(client, lambda c: c.get_run("r"))).run_id == "run_9"
    assert len(rec.requests) == 3


def test_retry_budget_stops_storms() -> None:
    """With the shared budget spent, a failing GET is raised after one attempt."""
    rec = Recorder(httpx.Response(503))
    t0 = FakeTime()
    client, _ = make(rec, budget=RetryBudget(ratio=0.0, reserve=1, clock=t0.clock))

    async def go(c: LaminaClient) -> None:
        with pytest.raises(ServerError):
            await c.get_run("a")  # 2 attempts: the single reserve retry is spent
        with pytest.raises(ServerError):
            await c.get_run("b")  # 1 attempt: nothing left

    run(using(client, go))
    assert len(rec.requests) == 3


# ---------------------------------------------------------------------------- start: never resend after send


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503, json=envelope("RESOURCE_UNAVAILABLE")),
        httpx.Response(500, text="internal"),
        httpx.Response(502),
        httpx.Response(202, text="not json"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
    ],
)
def test_start_sent_and_lost_is_unknown_outcome(failure: httpx.Response | Exception) -> None:
    """Any failure after a start was sent raises UnknownOutcomeError after exactly one request."""
    rec = Recorder(failure, ok({"runId": "r", "status": "queued"}, 202))
    client, t = make(rec)
    with pytest.raises(UnknownOutcomeError) as info:
        run(using(client, lambda c: c.start("app_1", {"Prompt": "x"})))
    assert len(rec.requests) == 1
    assert t.sleeps == []
    assert info.value.__cause__ is not None
    assert info.value.path == "/v1/apps/app_1/runs"
    assert client.stats.unknown_outcomes == 1


def test_start_retried_when_nothing_was_sent() -> None:
    """A start that failed to connect is retried and succeeds."""
    rec = Recorder(httpx.ConnectError("refused"), ok({"runId": "r", "status": "queued"}, 202))
    client, t = make(rec)
    assert run(using(client, lambda c: c.start("app_1", {}))).run_id == "r"
    assert len(rec.requests) == 2
    assert len(t.sleeps) == 1


def test_start_retried_on_429() -> None:
    """A start refused with 429 is retried after Retry-After."""
    rec = Recorder(httpx.Response(429, headers={"Retry-After": "2"}), ok({"runId": "r", "status": "queued"}, 202))
    client, t = make(rec)
    assert run(using(client, lambda c: c.start("app_1", {}))).run_id == "r"
    assert len(rec.requests) == 2
    assert sum(t.sleeps) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, InputValidationError), (401, AuthError), (403, ForbiddenError), (404, NotFoundError)],
)
def test_start_client_errors_map_directly(status: int, expected: type[ApiError]) -> None:
    """A start's 400/401/403/404 map to their classes, not to UnknownOutcomeError, and are not retried."""
    rec = Recorder(httpx.Response(status, json=envelope("X")))
    client, _ = make(rec)
    with pytest.raises(expected):
        run(using(client, lambda c: c.start("app_1", {})))
    assert len(rec.requests) == 1
    assert client.stats.unknown_outcomes == 0


# ---------------------------------------------------------------------------- the key stays secret


def test_key_absent_from_client_repr() -> None:
    """The client's repr/str show base URL and dialect, never the key."""
    client, _ = make(Recorder(ok({})))
    for text in (repr(client), str(client)):
        assert KEY not in text
        assert BASE in text
        assert "runs" in text


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(401, json={"error": f"bad key {KEY}", "code": "AUTH_INVALID_KEY"}),
        httpx.Response(400, text=f"you sent {KEY}"),
        httpx.Response(503, json={"error": f"Bearer {KEY}"}),
        httpx.Response(429, json={"error": KEY}),
        httpx.ConnectError(f"cannot connect with {KEY}"),
        httpx.ReadTimeout(f"slow {KEY}"),
    ],
)
def test_key_absent_from_every_exception(failure: httpx.Response | Exception) -> None:
    """No exception's str or repr contains the key, even when the server or transport echoes it."""
    rec = Recorder(failure)
    client, _ = make(rec, retry_policy=RetryPolicy(max_attempts=1))
    for call in (lambda c: c.get_run("r"), lambda c: c.start("a", {"Prompt": "p"})):
        with pytest.raises(ApiError) as info:
            run(using(client, call))
        exc: BaseException | None = info.value
        while exc is not None:
            if isinstance(exc, ApiError):  # our own errors; httpx's causes are never shown to users
                assert KEY not in str(exc)
                assert KEY not in repr(exc)
                assert KEY not in repr(vars(exc))
            exc = exc.__cause__ if isinstance(exc.__cause__, ApiError) else None
        client, _ = make(Recorder(failure), retry_policy=RetryPolicy(max_attempts=1))


def test_from_env_requires_key() -> None:
    """from_env without LAMINA_API_KEY raises MissingApiKeyError with a one-line fix."""
    with pytest.raises(MissingApiKeyError) as info:
        LaminaClient.from_env(env={})
    assert "LAMINA_API_KEY" in str(info.value)
    assert "export" in str(info.value)
    assert "\n" not in str(info.value)


def test_from_env_reads_base_url() -> None:
    """from_env takes LAMINA_BASE_URL, defaulting to app.uselamina.ai."""
    default = LaminaClient.from_env(env={"LAMINA_API_KEY": KEY})
    custom = LaminaClient.from_env("executions", env={"LAMINA_API_KEY": KEY, "LAMINA_BASE_URL": BASE + "/"})
    assert default.base_url == "https://app.uselamina.ai"
    assert custom.base_url == BASE
    assert custom.dialect == "executions"
    assert KEY not in repr(custom)


def test_malformed_key_is_refused_without_echo() -> None:
    """A key with whitespace or non-ASCII is refused without repeating it."""
    bad = "lma_bad key"
    with pytest.raises(MissingApiKeyError) as info:
        LaminaClient(BASE, bad)
    assert bad not in str(info.value)


# ---------------------------------------------------------------------------- credentials (the 401 rule)


class FakeSource:
    """A CredentialSource whose token is replaced after a 401 (or not, or not at all: `fail` raises instead)."""

    base_url = BASE

    def __init__(self, *, renews: bool = True, fail: Exception | None = None) -> None:
        self.tokens = ["lma_mcp_at_one", "lma_mcp_at_two", "lma_mcp_at_three"]
        self.current = 0
        self.renews = renews
        self.fail = fail
        self.asked = 0
        self.refused: list[str] = []
        self.closed = False

    async def authorization(self) -> str:
        self.asked += 1
        return f"Bearer {self.tokens[self.current]}"

    async def unauthorized(self, presented: str) -> bool:
        self.refused.append(presented)
        if self.fail is not None:
            raise self.fail
        if self.renews and presented == f"Bearer {self.tokens[self.current]}":
            self.current += 1
        return self.renews

    def describe(self) -> AuthStatus:
        return AuthStatus(usable=True)

    def scrub(self, text: str) -> str:
        for token in self.tokens:
            text = text.replace(token, "***")
        return text

    async def aclose(self) -> None:
        self.closed = True


def with_source(recorder: Recorder, source: FakeSource) -> LaminaClient:
    t = FakeTime()
    transport = httpx.MockTransport(recorder)
    return LaminaClient(BASE, source, "runs", Rate(1000, 1), transport, clock=t.clock, sleep=t.sleep)


def refused() -> httpx.Response:
    return httpx.Response(401, json={"error": "Access token expired", "code": "AUTH_INVALID_KEY"})


def test_every_request_carries_the_header_the_source_gives_then() -> None:
    """The Authorization header is asked of the source for each request, so a refreshed token is used at once;
    the client closes the source with itself."""
    source = FakeSource()
    rec = Recorder(ok(APP))
    client = with_source(rec, source)

    async def two_calls(c: LaminaClient) -> None:
        await c.get_app("app_1")
        source.current = 1  # refreshed between requests (ahead of its expiry)
        await c.get_app("app_1")

    run(using(client, two_calls))
    assert [r.headers["authorization"] for r in rec.requests] == ["Bearer lma_mcp_at_one", "Bearer lma_mcp_at_two"]
    assert source.asked == 2
    assert source.closed


def test_a_401_is_resent_once_with_the_renewed_token() -> None:
    """A 401 the source answers with a new token: the same request once more, with it."""
    source = FakeSource()
    rec = Recorder(refused(), ok(APP))
    client = with_source(rec, source)
    assert run(using(client, lambda c: c.get_app("app_1"))).app_id == "app_1"
    assert [r.headers["authorization"] for r in rec.requests] == ["Bearer lma_mcp_at_one", "Bearer lma_mcp_at_two"]
    assert source.refused == ["Bearer lma_mcp_at_one"]
    assert client.stats.retries == 0


def test_a_start_answered_401_is_resent_once_and_a_second_401_is_fatal() -> None:
    """A start refused 401 created nothing: resent once with the new token (the same body), and a second 401 is
    an AuthError after exactly two requests, never an unknown outcome."""
    source = FakeSource()
    rec = Recorder(refused(), ok({"runId": "r", "status": "queued"}, 202))
    client = with_source(rec, source)
    assert run(using(client, lambda c: c.start("app_1", {"prompt": "x"}))).run_id == "r"
    assert [r.method for r in rec.requests] == ["POST", "POST"]
    assert rec.requests[0].content == rec.requests[1].content

    rec = Recorder(refused())
    client = with_source(rec, FakeSource())
    with pytest.raises(AuthError) as info:
        run(using(client, lambda c: c.start("app_1", {"prompt": "x"})))
    assert not isinstance(info.value, UnknownOutcomeError)
    assert len(rec.requests) == 2
    assert client.stats.unknown_outcomes == 0


def test_a_401_the_source_cannot_renew_is_fatal_at_once() -> None:
    """A static key (or a token no newer one replaced): the 401 is an AuthError, nothing is resent."""
    rec = Recorder(refused())
    client = with_source(rec, FakeSource(renews=False))
    with pytest.raises(AuthError):
        run(using(client, lambda c: c.get_run("r")))
    assert len(rec.requests) == 1


def test_a_login_that_cannot_be_refreshed_after_a_start_401_is_no_unknown_outcome() -> None:
    """The refresh after a start's 401 fails (its server answered 503): LoginRefreshError as it is, not an
    UnknownOutcomeError (the start was refused, so nothing needs reconciling), and nothing is resent."""
    failure = LoginRefreshError("the server refused to refresh the Lamina login", status=503)
    rec = Recorder(refused())
    client = with_source(rec, FakeSource(fail=failure))
    with pytest.raises(LoginRefreshError) as info:
        run(using(client, lambda c: c.start("app_1", {})))
    assert "run `lamina login` again" in str(info.value)
    assert len(rec.requests) == 1
    assert client.stats.unknown_outcomes == 0


def test_tokens_echoed_by_the_server_are_scrubbed_by_the_source() -> None:
    """Error text the server echoes goes through the source's scrub: no token in any message."""
    rec = Recorder(httpx.Response(400, json={"error": "you sent Bearer lma_mcp_at_one", "code": "VALIDATION_ERROR"}))
    client = with_source(rec, FakeSource())
    with pytest.raises(InputValidationError) as info:
        run(using(client, lambda c: c.start("app_1", {})))
    assert "lma_mcp_at_one" not in str(info.value)
    assert "***" in str(info.value)


# ---------------------------------------------------------------------------- shared rate limiter


def test_every_request_goes_through_one_limiter() -> None:
    """All endpoints share the client's limiter: 4 calls at 2/min wait one window (plus the second's 1 s, a
    long poll counting from LONG_POLL_ARRIVAL after its grant)."""
    rec = Recorder(ok(RUN))
    t = FakeTime()
    client = LaminaClient(BASE, KEY, "runs", Rate(2, 60), httpx.MockTransport(rec), clock=t.clock, sleep=t.sleep)

    async def go(c: LaminaClient) -> None:
        await c.get_run("a")
        await c.wait("b")
        await c.get_run("c")
        await c.cancel("d")

    run(using(client, go))
    assert t.sleeps == [60.0, 1.0]
    assert client.stats.requests == 4


def test_server_ratelimit_headers_are_used() -> None:
    """RateLimit-Remaining: 0 with Reset: 20 makes the next request wait 20 s."""
    rec = Recorder(
        httpx.Response(200, json={"data": RUN}, headers={"RateLimit-Remaining": "0", "RateLimit-Reset": "20"}),
        ok(RUN),
    )
    client, t = make(rec)

    async def go(c: LaminaClient) -> None:
        await c.get_run("a")
        await c.get_run("b")

    run(using(client, go))
    assert t.sleeps == [20.0]


# ---------------------------------------------------------------------------- hostile servers and bad endpoints


@pytest.mark.parametrize("via", ["h11", "httpx"])
def test_an_endless_api_reply_is_refused_at_4_mib(via: str) -> None:
    """GET /v1/apps/{id} answered with an endless chunked body ends in one clear line ("reply refused: body
    larger than 4 MiB") within seconds, on the default transport and on httpx's own (the proxy path)."""

    async def go() -> tuple[ApiError, int]:
        async with HostileServer("endless") as server:
            transport = None if via == "h11" else httpx.AsyncHTTPTransport()
            client = LaminaClient(server.url, KEY, transport=transport, retry_policy=RetryPolicy(max_attempts=1))
            try:
                async with asyncio.timeout(30):
                    with pytest.raises(ServerError) as info:
                        await client.get_app("app_1")
            finally:
                await client.aclose()
            return info.value, server.sent

    error, sent = run(go())
    assert "reply refused: body larger than 4 MiB" in str(error)
    assert "\n" not in str(error)
    assert sent < 32 * 1024 * 1024  # the server stopped long before its 64 MiB: nobody was reading


@pytest.mark.parametrize("via", ["h11", "httpx"])
def test_a_trickled_reply_hits_the_deadline_and_a_trickled_start_is_never_resent(via: str) -> None:
    """A reply trickled a byte every 0.2 s is ReadTimeoutError ("reply too slow") at the reply deadline; for a
    start it is UnknownOutcomeError after exactly one request."""

    async def go() -> tuple[ApiError, ApiError, int]:
        async with HostileServer("drip", gap=0.2) as server:
            transport = None if via == "h11" else httpx.AsyncHTTPTransport()
            client = LaminaClient(
                server.url, KEY, transport=transport, retry_policy=RetryPolicy(max_attempts=1), reply_deadline=1.0
            )
            client._timeouts.update(connect=1.0, pool=1.0)  # the httpx path adds these to the deadline
            try:
                with pytest.raises(ReadTimeoutError) as poll:
                    await client.get_run("run_1")
                before = server.requests
                with pytest.raises(UnknownOutcomeError) as start:
                    await client.start("app_1", {"Prompt": "x"})
            finally:
                await client.aclose()
            return poll.value, start.value, server.requests - before

    poll, start, starts = run(go())
    assert "reply too slow" in str(poll)
    assert "reply too slow" in str(start)
    assert starts == 1


def test_tls_verification_failure_is_not_retried_and_says_so(tmp_path: Path) -> None:
    """An untrusted certificate is one EndpointError line naming the host, raised at the first attempt (not
    retried six times as a transient error would be), for a GET and for a start."""
    server_tls, _ = _self_signed(tmp_path)
    t = FakeTime()

    async def go() -> list[ApiError]:
        async with Server(reply(), tls=server_tls) as server:
            client = LaminaClient(server.url, KEY, clock=t.clock, sleep=t.sleep)
            errors = []
            for call in (lambda: client.get_app("a"), lambda: client.start("a", {"Prompt": "x"})):
                with pytest.raises(EndpointError) as info:
                    await call()
                errors.append(info.value)
            await client.aclose()
            assert server.requests == []
            return errors

    errors = run(go())
    assert t.sleeps == []
    for error in errors:
        assert "TLS certificate verification failed for 127.0.0.1" in str(error)
        assert "not retried" in str(error)
        assert "\n" not in str(error)
        assert not isinstance(error, TransientError)


def test_a_redirect_is_a_clear_error_and_a_redirected_start_is_unknown() -> None:
    """A 301 from the API is EndpointError naming where it points (userinfo masked) and LAMINA_BASE_URL, not
    retried and not followed; a start answered 303 may have created a run: UnknownOutcomeError, sent once."""
    moved = httpx.Response(301, headers={"Location": "https://u:pw@app.example/v1/apps/a"}, text="<html>moved</html>")
    rec = Recorder(moved)
    client, t = make(rec)
    with pytest.raises(EndpointError) as info:
        run(using(client, lambda c: c.get_app("a")))
    text = str(info.value)
    assert "301 Moved Permanently" in text
    assert "https://***@app.example/v1/apps/a" in text
    assert "pw" not in text
    assert "LAMINA_BASE_URL" in text
    assert len(rec.requests) == 1
    assert t.sleeps == []
    rec = Recorder(httpx.Response(303, headers={"Location": "/v1/runs/r"}))
    client, _ = make(rec)
    with pytest.raises(UnknownOutcomeError):
        run(using(client, lambda c: c.start("app_1", {"Prompt": "x"})))
    assert len(rec.requests) == 1


def test_a_non_json_reply_names_what_came_instead() -> None:
    """A 200 whose body is an HTML page is a ServerError saying the reply is not JSON, with its Content-Type and
    first characters, and asking whether LAMINA_BASE_URL is Lamina's API."""
    page = httpx.Response(200, html="<!doctype html><title>Welcome</title>")
    client, _ = make(Recorder(page), retry_policy=RetryPolicy(max_attempts=1))
    with pytest.raises(ServerError) as info:
        run(using(client, lambda c: c.get_app("a")))
    text = str(info.value)
    assert "not JSON (text/html, starting '<!doctype html><title>Welcome</title>')" in text
    assert "LAMINA_BASE_URL" in text


def test_userinfo_in_the_base_url_is_masked_everywhere() -> None:
    """LAMINA_BASE_URL=http://user:secret@host: connection errors, reprs and error texts show ***@host only."""
    client = LaminaClient(
        "http://user:s3cr3t@127.0.0.1:9/", KEY, retry_policy=RetryPolicy(max_attempts=1), transport=None
    )
    with pytest.raises(ConnectError) as info:
        run(using(client, lambda c: c.get_app("a")))
    assert "http://***@127.0.0.1:9" in str(info.value)
    for text in (str(info.value), repr(info.value), repr(client)):
        assert "s3cr3t" not in text
        assert "user" not in text
    echoed = Recorder(httpx.Response(500, json={"error": "upstream http://user:s3cr3t@lamina.test failed"}))
    masked = LaminaClient(
        "http://user:s3cr3t@lamina.test",
        KEY,
        transport=httpx.MockTransport(echoed),
        retry_policy=RetryPolicy(max_attempts=1),
    )
    with pytest.raises(ServerError) as err:
        run(using(masked, lambda c: c.get_app("a")))
    assert "s3cr3t" not in str(err.value)


@pytest.mark.parametrize(
    "base_url",
    ["https://app.usel\namina.ai", "https://app.uselamina.ai/\nX-Evil: 1", "http://user:pw@[::1", "ftp://x", "app"],
)
def test_an_unusable_base_url_is_one_config_error_line(base_url: str) -> None:
    """A newline, an unparsable URL or a non-http(s) one in LAMINA_BASE_URL is one ConfigError line that
    never repeats the URL (it may carry a password); surrounding whitespace is trimmed, not refused."""
    with pytest.raises(ConfigError) as info:
        LaminaClient.from_env(env={"LAMINA_API_KEY": KEY, "LAMINA_BASE_URL": base_url})
    text = str(info.value)
    assert text.startswith("LAMINA_BASE_URL ")
    assert "\n" not in text
    assert "pw" not in text
    assert "Evil" not in text
    with pytest.raises(ConfigError):
        LaminaClient(base_url, KEY)
    assert LaminaClient(" https://lamina.test/\n", KEY).base_url == "https://lamina.test"


def test_run_ids_that_are_dot_segments_stay_one_segment() -> None:
    """A run id of ".." is sent escaped (%2E%2E), so URL normalisation cannot turn it into a parent path."""
    rec = Recorder(ok(RUN))
    client, _ = make(rec)
    run(using(client, lambda c: c.get_run("..")))
    assert rec.requests[0].url.raw_path == b"/v1/runs/%2E%2E"


# ---------------------------------------------------------------------------- against the emulator (loopback)

Emu = Any  # lamina_batch.emulator.Emulator; typed loosely so this module does not depend on its internals


def live(emu: Emu, dialect: Dialect, **kw: Any) -> LaminaClient:
    return LaminaClient(emu.base_url, emu.key, dialect, Rate(1000, 1), retry_policy=RetryPolicy(max_attempts=3), **kw)


@pytest.mark.parametrize("dialect", ["runs", "executions"])
def test_emulator_full_lifecycle(emulator: Emu, dialect: Dialect) -> None:
    """Against the emulator: list, inspect, start, wait/poll to completion, in both dialects."""

    async def go(c: LaminaClient) -> None:
        apps = await c.list_apps()
        assert "app_7Hk2" in {a.app_id for a in apps}
        app = await c.get_app("app_7Hk2")
        assert {p.name for p in app.parameters} >= {"Prompt", "Aspect Ratio"}
        prompt = next(p for p in app.parameters if p.name == "Prompt")
        assert not prompt.has_default
        started = await c.start("app_7Hk2", {"Prompt": "a mug"})
        assert started.run_id
        remote = started
        for _ in range(100):  # a poll with a deadline (5 s): get_run (executions) answers at once
            remote = await c.wait(started.run_id, timeout=5)
            if remote.terminal:
                break
            await asyncio.sleep(0.05)
        assert remote.status == "completed"
        assert remote.outputs[0].label == "Hero Image"
        assert str(remote.outputs[0].value).startswith("http")
        keys = await c.signing_keys()
        assert keys[0]["crv"] == "Ed25519"

    run(using(live(emulator, dialect), go))
    assert emulator.stats.starts == 1


def test_emulator_runs_only_endpoints(emulator: Emu) -> None:
    """Against the emulator: list_runs with since, cancel and estimate in the runs dialect."""

    async def go(c: LaminaClient) -> None:
        since = datetime.now(UTC) - timedelta(minutes=1)
        started = await c.start("app_7Hk2", {"Prompt": "x"})
        page = await c.list_runs(app_id="app_7Hk2", since=since)
        assert started.run_id in {r.run_id for r in page.items}
        assert page.total >= 1
        cancelled = await c.cancel(started.run_id)
        assert cancelled is not None
        assert cancelled.run_id == started.run_id
        assert cancelled.status == "cancelled"
        assert (await c.estimate("app_7Hk2", {"Prompt": "x"})) == 4.0

    run(using(live(emulator, "runs"), go))


@pytest.mark.parametrize("dialect", ["runs", "executions"])
def test_emulator_error_mapping(emulator: Emu, dialect: Dialect) -> None:
    """Against the emulator: a wrong key is AuthError, an unknown app NotFoundError, bad inputs 400."""

    async def go(c: LaminaClient) -> None:
        with pytest.raises(NotFoundError):
            await c.get_app("app_nope")
        with pytest.raises(InputValidationError):
            await c.start("app_7Hk2", {"Nope": "x"})

    run(using(live(emulator, dialect), go))
    bad = LaminaClient(emulator.base_url, "lma_wrong", dialect)
    with pytest.raises(AuthError) as info:
        run(using(bad, lambda c: c.get_app("app_7Hk2")))
    assert "lma_wrong" not in str(info.value)
    assert emulator.stats.starts == 0


def test_emulator_insufficient_credits(make_emulator: Callable[..., Emu]) -> None:
    """Against the emulator: an account out of credits raises InsufficientCreditsError on start."""
    emu = make_emulator(credits=1)
    with pytest.raises(InsufficientCreditsError):
        run(using(live(emu, "runs"), lambda c: c.start("app_7Hk2", {"Prompt": "x"})))


def test_emulator_lost_start_reply_is_unknown_not_resent(make_emulator: Callable[..., Emu]) -> None:
    """Against the emulator: a start whose reply is lost raises UnknownOutcomeError and is sent once."""
    from lamina_batch.emulator import Faults

    emu = make_emulator(faults=Faults(p_lost_start_reply=1.0))
    client = live(emu, "runs")
    with pytest.raises(UnknownOutcomeError):
        run(using(client, lambda c: c.start("app_7Hk2", {"Prompt": "x"})))
    assert emu.stats.starts == 1
    assert client.stats.unknown_outcomes == 1


def test_emulator_server_budget_avoids_429(make_emulator: Callable[..., Emu]) -> None:
    """Against the emulator's 3-per-2s limit: RateLimit-Remaining/Reset make us wait, so no 429 is sent."""
    emu = make_emulator(rate_limit=3, rate_window=2.0)
    client = live(emu, "runs")

    async def go(c: LaminaClient) -> None:
        for _ in range(5):
            await c.get_app("app_7Hk2")

    run(using(client, go))
    assert len([r for r in emu.stats.api_requests() if r.status == 200]) == 5
    assert emu.stats.sent_429 == 0
    assert client.stats.rate_limited == 0


SEED_429 = 3  # a seed whose fault draws give a couple of 429s (each costs a real 1 s)


def test_emulator_injected_429_is_retried(make_emulator: Callable[..., Emu]) -> None:
    """Against the emulator's injected 429s (Retry-After: 1): GETs and starts are retried and succeed."""
    from lamina_batch.emulator import Faults

    emu = make_emulator(faults=Faults(p429=0.5), seed=SEED_429)
    client = LaminaClient(emu.base_url, emu.key, "runs", Rate(1000, 1), retry_policy=RetryPolicy(max_attempts=10))

    async def go(c: LaminaClient) -> None:
        await c.get_app("app_7Hk2")
        await c.start("app_7Hk2", {"Prompt": "x"})

    run(using(client, go))
    assert emu.stats.sent_429 > 0
    assert client.stats.rate_limited == emu.stats.sent_429
    assert emu.stats.starts == 1


class HookRecorder(H11Transport):
    """The default transport, noting for every request whether the client passed an `after_send` hook."""

    def __init__(self) -> None:
        super().__init__()
        self.hooked: list[tuple[str, bool]] = []

    async def send(
        self,
        method: bytes,
        target: Target,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Mapping[str, float | None],
        **bounds: Any,
    ) -> RawReply:
        hooked = bounds.get("after_send") is not None
        self.hooked.append((f"{method.decode()} {path.decode().partition('?')[0]}", hooked))
        return await super().send(method, target, path, headers, body, timeouts, **bounds)


@pytest.mark.parametrize("dialect", ["runs", "executions"])
def test_only_a_start_request_carries_the_after_send_hook(emulator: Emu, dialect: Dialect) -> None:
    """The client passes the transport its after-send hook (crash point "after-send") for starts only."""
    transport = HookRecorder()

    async def go(c: LaminaClient) -> None:
        await c.get_app("app_7Hk2")
        started = await c.start("app_7Hk2", {"Prompt": "a mug"})
        await c.wait(started.run_id, timeout=5)
        await c.get_run(started.run_id)

    run(using(live(emulator, dialect, transport=transport), go))
    hooked = [request for request, hook in transport.hooked if hook]
    assert len(transport.hooked) == 4
    assert hooked == [f"POST {'/v1/apps/app_7Hk2/runs' if dialect == 'runs' else '/api/apps/app_7Hk2/executions'}"]
