"""Tests for wire.py: one rule for a run object (client replies and webhook bodies alike), the error mapping
from raw status/headers/body and from transport failures, and URL masking."""

from __future__ import annotations

import json
import ssl
from typing import Any

import httpx
import pytest

from lamina_batch import wire
from lamina_batch.errors import (
    ApiError,
    AuthError,
    ConnectError,
    ConnectionLostError,
    EndpointError,
    ForbiddenError,
    InputValidationError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitedError,
    ReadTimeoutError,
    RunFatalError,
    ServerError,
    TransientError,
)
from lamina_batch.transport import ReplyDeadlineError, ReplyTooLargeError, TlsVerifyError

RUN: dict[str, Any] = {
    "runId": "run_1",
    "status": "completed",
    "errorMessage": None,
    "createdAt": "2025-01-01T00:00:00Z",
    "outputs": [
        {"id": "n1", "label": "Hero Image", "type": "image", "value": "https://x/a.png", "status": "completed"}
    ],
}


def both(obj: Any) -> list[Any]:
    """The run as the client reads a reply and as the receiver reads a webhook body (wrapped and bare)."""
    return [
        wire.run_from_reply({"data": obj}, "runs"),
        wire.run_from_webhook({"data": obj}),
        wire.run_from_webhook(obj),
    ]


# ---------------------------------------------------------------------------- the run object


def test_client_replies_and_webhook_bodies_give_the_same_run() -> None:
    """One object read as a status reply and as a webhook body (wrapped or bare) is the same RemoteRun."""
    first, *others = both(RUN)
    assert all(other == first for other in others)
    assert first.terminal
    assert first.outputs[0].value == "https://x/a.png"


@pytest.mark.parametrize("status", [None, "", 7, ["completed"], {"s": "failed"}], ids=repr)
def test_a_missing_or_odd_status_reads_as_queued_everywhere(status: Any) -> None:
    """A run without a usable status is "queued" in client replies and webhook bodies alike: never terminal,
    never failed (a failed run may be restarted: paid twice), never completed (no outputs)."""
    obj = {k: v for k, v in RUN.items() if k != "status"}
    if status is not None:
        obj["status"] = status
    for run in both(obj):
        assert run.status == "queued"
        assert not run.terminal


def test_unknown_status_strings_are_kept_and_not_terminal() -> None:
    """A status the API does not document is kept as given and is not terminal."""
    for run in both({**RUN, "status": "paused"}):
        assert (run.status, run.terminal) == ("paused", False)


@pytest.mark.parametrize(
    "obj",
    [
        {"status": "completed"},
        {"runId": "", "status": "completed"},
        {"runId": True, "status": "completed"},
        {"runId": None, "status": "completed"},
        {**RUN, "outputs": {"label": "x"}},
        {**RUN, "outputs": ["not an object"]},
        "run_1",
        [RUN],
    ],
    ids=repr,
)
def test_malformed_runs_are_refused_everywhere(obj: Any) -> None:
    """No id, outputs that are not a list of objects, or not an object at all: WireFormatError (a ValueError)
    for the client and the receiver alike."""
    with pytest.raises(wire.WireFormatError):
        wire.run_from_reply({"data": obj}, "runs")
    with pytest.raises(ValueError, match=r"."):
        wire.run_from_webhook(obj)


def test_ids_by_dialect_and_tolerated_shapes() -> None:
    """The dialect's id field wins, `id` is the fallback, integer ids become text; null outputs are none,
    numbers in text fields are kept as text, other types dropped; `timeout: true` marks a /wait reply."""
    mixed = {"runId": "r", "executionId": "e", "status": "running", "outputs": None, "createdAt": 5, "startedAt": {}}
    assert wire.parse_run(mixed, "runs").run_id == "r"
    assert wire.parse_run(mixed, "executions").run_id == "e"
    run = wire.parse_run({"id": 42, "status": "running", "timeout": True}, "runs")
    assert (run.run_id, run.timed_out, run.outputs) == ("42", True, ())
    parsed = wire.parse_run(mixed, "runs")
    assert (parsed.created_at, parsed.started_at, parsed.outputs) == ("5", None, ())


def test_output_defaults() -> None:
    """An output missing fields reads as id "", label "", status "pending"; its error is text or None."""
    (out,) = wire.parse_run({"runId": "r", "status": "completed", "outputs": [{"value": 1, "error": 3}]}).outputs
    assert (out.id, out.label, out.type, out.value, out.status, out.error) == ("", "", "", 1, "pending", "3")


def test_pages_and_optional_runs() -> None:
    """The runs list reads every item by the same rule; a cancel reply without a run is None."""
    body = {"data": [RUN, {"runId": "r2"}], "pagination": {"total": 9, "limit": "x"}}
    page = wire.parse_page(body, "runs", limit=2, offset=4)
    assert [r.status for r in page.items] == ["completed", "queued"]
    assert (page.total, page.limit, page.offset) == (9, 2, 4)
    assert wire.optional_run({"data": {"ok": True}}, "runs") is None
    assert wire.optional_run({"data": RUN}, "runs") == both(RUN)[0]


def test_parse_reply_names_a_non_json_body_and_a_malformed_one() -> None:
    """A 2xx that is not JSON says so (with Content-Type and first characters); a JSON body of the wrong shape
    is a "malformed reply" naming what is wrong. Both are ServerErrors carrying the status."""
    headers = {"content-type": "text/html; charset=utf-8"}
    with pytest.raises(ServerError, match=r"not JSON \(text/html, starting '<html> <body>hi'\)") as info:
        wire.parse_reply(200, headers, b"<html>\n<body>hi", wire.parse_app, method="GET", path="/v1/apps/a")
    assert info.value.status == 200
    with pytest.raises(ServerError, match=r"malformed reply \(the run has no id\)"):
        wire.parse_reply(200, {}, b'{"data": {}}', lambda b: wire.run_from_reply(b, "runs"), method="G", path="/")
    with pytest.raises(ServerError, match=r"not JSON \(no Content-Type, empty\)"):
        wire.parse_reply(202, {}, b"", wire.parse_app, method="POST", path="/")


# ---------------------------------------------------------------------------- error replies


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"error": "bad", "code": "VALIDATION_ERROR"}, InputValidationError),
        (401, {"error": "no", "code": "AUTH_INVALID_KEY"}, AuthError),
        (403, {"error": "no"}, ForbiddenError),
        (404, {"error": "App not found"}, NotFoundError),
        (408, {}, ServerError),
        (409, {"error": "conflict"}, RunFatalError),
        (402, {"error": "Insufficient credits: 3 left"}, InsufficientCreditsError),
        (400, {"error": "x", "code": "INSUFFICIENT_CREDITS"}, InsufficientCreditsError),
        (429, {"error": "slow down"}, RateLimitedError),
        (500, {"error": "oops"}, ServerError),
        (503, {}, ServerError),
        (302, {}, EndpointError),
        (199, {}, ApiError),
    ],
)
def test_error_table(status: int, body: dict[str, Any], expected: type[ApiError]) -> None:
    """Each status (and the credits text or code) maps to its errors.py type, by type alone."""
    error = wire.error_from_reply(status, {}, json.dumps(body).encode(), method="GET", path="/v1/x")
    assert type(error) is expected
    assert error.status == status


def test_error_envelope_fields_and_fallbacks() -> None:
    """Code, requestId (or X-Request-Id), details and nested envelopes are read; a non-JSON body gives the
    reason phrase and the start of the text; scrub runs over server-echoed text."""
    nested = {"error": {"message": "bad key lma_k", "code": "AUTH_INVALID_KEY"}, "requestId": "req_1"}
    error = wire.error_from_reply(
        401, {}, json.dumps(nested).encode(), method="GET", path="/", scrub=lambda t: t.replace("lma_k", "***")
    )
    assert (error.message, error.code, error.request_id) == ("bad key ***", "AUTH_INVALID_KEY", "req_1")
    plain = wire.error_from_reply(502, {"x-request-id": "gw_9"}, b"<h1>Bad\n gateway</h1>", method="GET", path="/")
    assert plain.message == "Bad Gateway: <h1>Bad gateway</h1>"
    assert plain.request_id == "gw_9"
    details = wire.error_from_reply(400, {}, b'{"error": "x", "details": [{"field": "p"}]}', method="G", path="/")
    assert details.details == [{"field": "p"}]


def test_429_retry_after_from_header_then_body() -> None:
    """A 429's pause comes from Retry-After, else from the body's retryAfter."""
    header = wire.error_from_reply(429, {"retry-after": "7"}, b'{"retryAfter": 3}', method="G", path="/")
    body = wire.error_from_reply(429, {}, b'{"retryAfter": 3}', method="G", path="/")
    none = wire.error_from_reply(429, {}, b"", method="G", path="/")
    assert isinstance(header, RateLimitedError)
    assert isinstance(body, RateLimitedError)
    assert isinstance(none, RateLimitedError)
    assert (header.retry_after, body.retry_after, none.retry_after) == (7.0, 3.0, None)


def test_a_redirect_names_where_it_points_masked() -> None:
    """A 3xx is EndpointError naming status and Location (userinfo masked, control characters removed)."""
    error = wire.error_from_reply(308, {"location": "https://a:b@new.example/v1\x07"}, b"", method="GET", path="/")
    assert isinstance(error, EndpointError)
    assert "308 Permanent Redirect (to https://***@new.example/v1)" in error.message
    assert "a:b" not in str(error)


# ---------------------------------------------------------------------------- transport failures


def _cert_failure() -> TlsVerifyError:
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cause.verify_message = "self-signed certificate"
    exc = TlsVerifyError("SSLCertVerificationError: self-signed certificate")
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "expected", "transient", "text"),
    [
        (_cert_failure(), EndpointError, False, "TLS certificate verification failed for app.test (self-signed"),
        (httpx.ConnectError("refused"), ConnectError, True, "could not connect to https://***@app.test"),
        (httpx.ConnectTimeout("slow"), ConnectError, True, "could not connect"),
        (httpx.PoolTimeout("busy"), ConnectError, True, "could not connect"),
        (httpx.ReadTimeout("quiet"), ReadTimeoutError, True, "no reply in time"),
        (ReplyDeadlineError("not complete 60 s after"), ReadTimeoutError, True, "reply too slow (not complete 60 s"),
        (ReplyTooLargeError("body larger than 4 MiB"), ServerError, True, "reply refused: body larger than 4 MiB"),
        (httpx.RemoteProtocolError("eof"), ConnectionLostError, True, "connection lost"),
        (httpx.ReadError("reset"), ConnectionLostError, True, "connection lost"),
        (httpx.LocalProtocolError("bad"), ApiError, False, "request could not be sent"),
        (httpx.DecodingError("gz"), ServerError, True, "undecodable reply"),
    ],
)
def test_transport_failures(exc: httpx.HTTPError, expected: type[ApiError], transient: bool, text: str) -> None:
    """Each transport failure maps to its type and retryability, in one line, the base URL's userinfo masked."""
    error = wire.error_from_transport(exc, base_url="https://u:pw@app.test", method="GET", path="/v1/apps")
    assert type(error) is expected
    assert isinstance(error, TransientError) is transient
    assert text in str(error)
    assert "pw" not in str(error)
    assert "\n" not in str(error)


def test_mask_url() -> None:
    """Userinfo becomes ***; URLs without it are unchanged; unparsable ones are not echoed."""
    assert wire.mask_url("http://user:secret@host:8080/p?q=1") == "http://***@host:8080/p?q=1"
    assert wire.mask_url("https://app.uselamina.ai/x") == "https://app.uselamina.ai/x"
    assert wire.mask_url("http://u:p@[::1") == "<unparsable URL>"
