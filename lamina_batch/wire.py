"""The Lamina wire format, read in one place: JSON -> RemoteRun (client replies and webhook bodies alike), apps,
pages and key sets, and the error mapping from a raw reply (status, headers, body) or a transport failure.

One rule for a run object, wherever it comes from (the `data` of a start, status or /wait reply, a runs-list
item, a webhook body):

- **id**: `runId` or `executionId` (the dialect's own name first), else `id`; a non-empty string or an integer.
  Without one the object is malformed (`WireFormatError`): a start reply without an id leaves the start's outcome
  unknown, so it is reconciled, never resent; a webhook body without one is refused.
- **status**: the string given. A missing, null, empty or non-string status reads as "queued": not terminal,
  so the run is followed until a status says it ended. It never reads as "failed" (a failed run may be started
  again with `--retry-failed`: paid twice) nor as "completed" (that would finish a run without its outputs).
- **outputs**: missing or null is none; anything but a list of objects is malformed.
- **errorMessage, createdAt, startedAt, completedAt**: strings (numbers kept as text); anything else is None.
- `timeout: true` marks a /wait reply that came back before the run ended.

Client replies are always wrapped (`{"data": ...}`); webhook bodies are accepted wrapped or bare.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, TypedDict, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

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
)
from lamina_batch.models import AppInfo, AppOutput, AppParameter, AppSummary, Dialect, RemoteRun, RunOutput, RunPage
from lamina_batch.retry import parse_retry_after
from lamina_batch.transport import ReplyDeadlineError, ReplyTooLargeError, TlsVerifyError

T = TypeVar("T")
Scrub = Callable[[str], str]

__all__ = [
    "ErrorEnvelope",
    "WireFormatError",
    "error_from_reply",
    "error_from_transport",
    "mask_url",
    "parse_app",
    "parse_app_list",
    "parse_estimate",
    "parse_jwks",
    "parse_page",
    "parse_reply",
    "parse_run",
    "run_from_reply",
    "run_from_webhook",
]


class WireFormatError(ValueError):
    """A JSON body that does not have the shape the Lamina API documents."""


def _same(text: str) -> str:
    return text


# ---------------------------------------------------------------------------------------------- run objects


def _run_id(data: Mapping[str, Any], dialect: Dialect) -> str | None:
    first, second = ("runId", "executionId") if dialect == "runs" else ("executionId", "runId")
    for name in (first, second, "id"):
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _output(data: Any) -> RunOutput:
    if not isinstance(data, Mapping):
        raise WireFormatError("an output is not an object")
    status = data.get("status")
    error = data.get("error")
    return RunOutput(
        id=_text(data.get("id")) or "",
        label=_text(data.get("label")) or "",
        type=_text(data.get("type")) or "",
        value=data.get("value"),
        status=status if isinstance(status, str) and status else "pending",
        error=None if error is None else str(error),
    )


def parse_run(data: Any, dialect: Dialect = "runs") -> RemoteRun:
    """One run object (already unwrapped from `{"data": ...}`), by the rule in this module's docstring."""
    if not isinstance(data, Mapping):
        raise WireFormatError("the run is not an object")
    run_id = _run_id(data, dialect)
    if run_id is None:
        raise WireFormatError("the run has no id")
    outputs = data.get("outputs")
    if outputs is None:
        outputs = []
    if not isinstance(outputs, list):
        raise WireFormatError("outputs is not a list")
    status = data.get("status")
    return RemoteRun(
        run_id=run_id,
        status=status if isinstance(status, str) and status else "queued",
        error_message=_text(data.get("errorMessage")),
        created_at=_text(data.get("createdAt")),
        started_at=_text(data.get("startedAt")),
        completed_at=_text(data.get("completedAt")),
        outputs=tuple(_output(o) for o in outputs),
        timed_out=data.get("timeout") is True,
    )


def _data(body: Any) -> Any:
    if not isinstance(body, Mapping) or "data" not in body:
        raise WireFormatError("no `data` in the reply")
    return body["data"]


def run_from_reply(body: Any, dialect: Dialect) -> RemoteRun:
    """The run of a start, status, /wait or cancel reply (`{"data": run}`)."""
    return parse_run(_data(body), dialect)


def run_from_webhook(body: Any) -> RemoteRun:
    """The run a webhook delivery reports: the status body, wrapped in `{"data": ...}` or bare."""
    if isinstance(body, Mapping) and isinstance(body.get("data"), Mapping):
        body = body["data"]
    return parse_run(body, "runs")


def optional_run(body: Any, dialect: Dialect) -> RemoteRun | None:
    """The run of a reply that may carry none (cancel): None when `data` is not a run with an id."""
    data = body.get("data") if isinstance(body, Mapping) else None
    if isinstance(data, Mapping) and _run_id(data, dialect) is not None:
        return parse_run(data, dialect)
    return None


def _count(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return default


def parse_page(body: Any, dialect: Dialect, limit: int, offset: int) -> RunPage:
    """One page of the runs list: `{"data": [run, ...], "pagination": {total, limit, offset}}`."""
    items = _data(body)
    if not isinstance(items, list):
        raise WireFormatError("the runs list is not a list")
    runs = tuple(parse_run(item, dialect) for item in items)
    pagination = body.get("pagination")
    if not isinstance(pagination, Mapping):
        pagination = {}
    return RunPage(
        items=runs,
        total=_count(pagination.get("total"), len(runs)),
        limit=_count(pagination.get("limit"), limit),
        offset=_count(pagination.get("offset"), offset),
    )


# ---------------------------------------------------------------------------------------------- apps and keys


def _str_tuple(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list | tuple):
        return None
    return tuple(str(v.get("label", v.get("value", ""))) if isinstance(v, dict) else str(v) for v in value)


def _parameter(p: Any) -> AppParameter:
    if not isinstance(p, Mapping):
        raise WireFormatError("a parameter is not an object")
    return AppParameter(
        id=str(p.get("id") or ""),
        name=str(p["name"]),
        type=str(p.get("type") or "text"),
        required=bool(p.get("required", False)),
        key=None if p.get("key") is None else str(p["key"]),
        options=_str_tuple(p.get("options")),
        default=p.get("default"),
        has_default="default" in p,
        accept=_str_tuple(p.get("accept")),
    )


def parse_app(body: Any) -> AppInfo:
    data = _data(body)
    outputs = tuple(
        AppOutput(index=int(o.get("index", i)), label=str(o.get("label") or ""), type=str(o.get("type") or ""))
        for i, o in enumerate(data.get("outputs") or [])
    )
    return AppInfo(
        app_id=str(data["appId"]),
        name=str(data.get("name") or data["appId"]),
        description=None if data.get("description") is None else str(data["description"]),
        parameters=tuple(_parameter(p) for p in data.get("parameters") or []),
        outputs=outputs,
    )


def parse_app_list(body: Any) -> list[AppSummary]:
    return [
        AppSummary(
            app_id=str(a["appId"]),
            name=str(a.get("name") or a["appId"]),
            description=None if a.get("description") is None else str(a["description"]),
            is_public=bool(a.get("isPublic", False)),
            credits=_number_or(a.get("credits"), None),
        )
        for a in _data(body)
    ]


def parse_estimate(body: Any) -> float | None:
    data = _data(body)
    if isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if isinstance(data, dict):
        for name in ("credits", "estimatedCredits", "estimate", "cost"):
            value = data.get(name)
            if isinstance(value, dict):  # the SDK's CostEstimate: {"expected", "min", "max"}
                value = value.get("expected")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


class CostFigures(TypedDict):
    """An estimate reply's figures (the SDK's `CostEstimate`): credits per run, and the balance where given."""

    expected: float
    min: float
    max: float
    balance: float | None
    affordable: bool | None


def parse_cost(body: Any) -> CostFigures:
    """The full estimate reply; WireFormatError when it carries no expected figure (a malformed reply)."""
    data = _data(body)
    expected = parse_estimate(body)
    if expected is None or expected < 0:
        raise WireFormatError("estimate reply without estimatedCredits.expected")
    lo = hi = expected
    figures = data.get("estimatedCredits") if isinstance(data, dict) else None
    if isinstance(figures, dict):
        lo = _number_or(figures.get("min"), expected)
        hi = _number_or(figures.get("max"), expected)
    balance = data.get("currentBalance") if isinstance(data, dict) else None
    affordable = data.get("affordable") if isinstance(data, dict) else None
    return CostFigures(
        expected=expected,
        min=min(lo, expected),
        max=max(hi, expected),
        balance=_number_or(balance, None),
        affordable=affordable if isinstance(affordable, bool) else None,
    )


def _number_or(value: Any, default: T) -> float | T:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def parse_jwks(body: Any) -> list[dict[str, str]]:
    container = body.get("data", body) if isinstance(body, dict) else body
    keys = container["keys"]
    return [{str(k): str(v) for k, v in key.items()} for key in keys if isinstance(key, dict)]


# ---------------------------------------------------------------------------------------------- success replies


def parse_reply(
    status: int, headers: Mapping[str, str], body: bytes, parse: Callable[[Any], T], *, method: str, path: str
) -> T:
    """A 2xx body through `parse`; a body that is not JSON, or not of the documented shape, is a ServerError
    (transient: a gateway's error page passes; a start's reply of that kind leaves its outcome unknown)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ServerError(
            f"the reply is not JSON ({_describe_body(headers, body)}): is LAMINA_BASE_URL Lamina's API?",
            status=status,
            method=method,
            path=path,
        ) from None
    try:
        return parse(document)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = str(exc) if isinstance(exc, WireFormatError) else f"{type(exc).__name__}"
        raise ServerError(f"malformed reply ({reason})", status=status, method=method, path=path) from exc


def _describe_body(headers: Mapping[str, str], body: bytes) -> str:
    kind = headers.get("content-type", "").split(";")[0].strip() or "no Content-Type"
    if not body:
        return f"{kind}, empty"
    sample = "".join(c if c.isprintable() else " " for c in body[:40].decode("utf-8", "replace"))
    return f"{kind}, starting {' '.join(sample.split())!r}"


# ---------------------------------------------------------------------------------------------- error replies


class ErrorEnvelope(TypedDict, total=False):
    """Lamina's error body; older replies carry only `error`."""

    error: str
    code: str
    retryable: bool
    requestId: str
    retryAfter: float
    details: Any


def error_envelope(body: bytes) -> ErrorEnvelope:
    """The envelope fields of an error body; {} when it is not a JSON object."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(document, dict):
        return {}
    envelope: ErrorEnvelope = {}
    if "error" in document:
        error = document["error"]
        # Some gateways nest the envelope: {"error": {"message": ..., "code": ...}}.
        if isinstance(error, dict):
            document = {**document, **error}
            error = error.get("message", "")
        envelope["error"] = str(error)
    for name in ("code", "requestId", "retryAfter", "details", "retryable"):
        if name in document:
            envelope[name] = document[name]
    return envelope


# Status -> error type; what is not here is decided by the status class (see `error_type`).
ERRORS_BY_STATUS: Mapping[int, type[ApiError]] = {
    400: InputValidationError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    408: ServerError,
    429: RateLimitedError,
}


def error_type(status: int, code: str | None, message: str) -> type[ApiError]:
    """The errors.py type of an error reply: credits first (their status is undocumented), then the table, then
    the status class (3xx a redirect, 5xx a server error, other 4xx a refusal of this run)."""
    if code == "INSUFFICIENT_CREDITS" or "insufficient credit" in message.lower():
        return InsufficientCreditsError
    if status in ERRORS_BY_STATUS:
        return ERRORS_BY_STATUS[status]
    if 300 <= status < 400:
        return EndpointError
    if status >= 500:
        return ServerError
    if 400 <= status < 500:
        return RunFatalError
    return ApiError


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0.0, float(value))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _fallback_message(status: int, body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())[:160]
    reason = _reason(status)
    return f"{reason}: {text}" if text else reason


def _redirect_message(status: int, headers: Mapping[str, str]) -> str:
    location = headers.get("location", "").strip()
    target = mask_url("".join(c for c in location if c.isprintable())[:200]) if location else "no Location"
    return (
        f"the server answers {status} {_reason(status)} (to {target}): set LAMINA_BASE_URL to the API's own "
        "address (API calls never follow redirects)"
    )


def error_from_reply(
    status: int, headers: Mapping[str, str], body: bytes, *, method: str, path: str, scrub: Scrub = _same
) -> ApiError:
    """The error a non-2xx reply stands for. `headers` have lower-case names; `scrub` removes secrets from any
    text the server sent back. A 429's pause is in `.retry_after` (Retry-After, else the body's retryAfter)."""
    envelope = error_envelope(body)
    message = scrub(str(envelope.get("error") or "")) or scrub(_fallback_message(status, body))
    code = envelope.get("code")
    code = None if code is None else str(code)
    request_id = envelope.get("requestId") or headers.get("x-request-id")
    kind = error_type(status, code, message)
    if kind is EndpointError:
        message = scrub(_redirect_message(status, headers))
    kw: dict[str, Any] = {
        "status": status,
        "code": code,
        "request_id": None if request_id is None else str(request_id),
        "method": method,
        "path": path,
        "details": envelope.get("details"),
    }
    if kind is RateLimitedError:
        retry_after = parse_retry_after(headers.get("retry-after"))
        if retry_after is None:
            retry_after = _number(envelope.get("retryAfter"))
        return RateLimitedError(message, retry_after=retry_after, **kw)
    return kind(message, **kw)


# ---------------------------------------------------------------------------------------------- transport failures


def _tls_reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or cause.reason or "certificate verify failed"
        cause = cause.__cause__ or cause.__context__
    return "certificate verify failed"


def error_from_transport(
    exc: httpx.HTTPError, *, base_url: str, method: str, path: str, scrub: Scrub = _same
) -> ApiError:
    """The error a transport failure stands for (see transport.py for which failures mean "nothing was sent").
    `base_url` is named in connection errors with any userinfo masked."""
    reason = scrub(f"{type(exc).__name__}: {exc}".rstrip(": "))
    kw: dict[str, Any] = {"method": method, "path": path}
    where = mask_url(base_url)
    if isinstance(exc, TlsVerifyError):
        host = urlsplit(where).hostname or where
        return EndpointError(
            f"TLS certificate verification failed for {host} ({scrub(_tls_reason(exc))}); not retried: check "
            "LAMINA_BASE_URL, the system clock, or a TLS-inspecting proxy (its CA in SSL_CERT_FILE)",
            **kw,
        )
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return ConnectError(f"could not connect to {where} ({reason})", **kw)
    if isinstance(exc, ReplyDeadlineError):
        return ReadTimeoutError(f"reply too slow ({scrub(str(exc))})", **kw)
    if isinstance(exc, httpx.ReadTimeout):
        return ReadTimeoutError(f"no reply in time ({reason})", **kw)
    if isinstance(exc, ReplyTooLargeError):
        return ServerError(f"reply refused: {scrub(str(exc))} (Lamina's replies are a few KiB)", **kw)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return ApiError(f"request could not be sent ({reason})", **kw)
    if isinstance(exc, httpx.DecodingError):
        return ServerError(f"undecodable reply ({reason})", **kw)
    return ConnectionLostError(f"connection lost ({reason})", **kw)


def mask_url(url: str) -> str:
    """`url` with any userinfo replaced by `***` (`http://user:secret@host` -> `http://***@host`)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return "<unparsable URL>"
    if "@" not in netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + netloc.rpartition("@")[2]))
