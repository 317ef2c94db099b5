"""Webhook deliveries: Ed25519 verification on the raw body, the signing-key set (cached beside the manifest),
and a small asyncio HTTP/1.1 receiver that hands verified deliveries to the executor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .atomic import write_text_atomic
from .errors import LaminaBatchError
from .models import RemoteRun, RunOutput

__all__ = [
    "MAX_BODY",
    "Delivery",
    "ReceiverStats",
    "SigningKeys",
    "WebhookReceiver",
    "WebhookRejected",
    "parse_jwks",
    "parse_run_body",
    "verify_delivery",
]

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
SIGNATURE_HEADER = "x-lamina-webhook-signature"
TIMESTAMP_HEADER = "x-lamina-webhook-timestamp"
REQUEST_ID_HEADER = "x-lamina-webhook-request-id"
USER_ID_HEADER = "x-lamina-webhook-user-id"

# Rejection reasons (stable strings: counted in ReceiverStats and sent back in the JSON reply).
R_MISSING_HEADER = "missing header"
R_BAD_TIMESTAMP = "bad timestamp"
R_BAD_SIGNATURE_HEX = "bad signature encoding"
R_BAD_SIGNATURE = "bad signature"
R_STALE = "timestamp outside tolerance"
R_TOO_LARGE = "body too large"
R_BAD_JSON = "body is not a run"
R_ID_MISMATCH = "run id does not match request id"


class WebhookRejected(LaminaBatchError):
    """A delivery that must not be trusted; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        text = f"webhook rejected ({status}): {reason}"
        super().__init__(f"{text}: {detail}" if detail else text)


@dataclass(frozen=True)
class Delivery:
    """A verified webhook delivery: its Request-Id (the run id), signed timestamp and the run it reports."""

    request_id: str
    timestamp: int
    run: RemoteRun
    user_id: str | None = None


# --------------------------------------------------------------------------- keys


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def parse_jwks(obj: Any) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWK set (`{"keys": [...]}` or the bare list); other or malformed keys are skipped."""
    items = obj.get("keys") if isinstance(obj, Mapping) else obj
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        return []
    keys: list[Ed25519PublicKey] = []
    for jwk in items:
        if not isinstance(jwk, Mapping) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            raw = _b64url(x)
        except (binascii.Error, ValueError):
            continue
        if len(raw) != 32:
            continue
        try:
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError:
            continue
    return keys


KeyFetcher = Callable[[], Awaitable[list[dict[str, Any]]]]


class SigningKeys:
    """The webhook signing-key set: loaded from a cache file or fetched, refetched when nothing verifies.

    Refetches are rate-limited to one per `refresh_interval` seconds (default 60), so a stream of forged
    deliveries cannot drain the API's request budget; a rotated key is picked up on the first failure.
    """

    def __init__(
        self,
        keys: Sequence[Ed25519PublicKey] = (),
        *,
        cache_path: Path | None = None,
        fetch: KeyFetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_interval: float = 60.0,
    ) -> None:
        self._keys: tuple[Ed25519PublicKey, ...] = tuple(keys)
        self._cache_path = cache_path
        self._fetch = fetch
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._last_fetch: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def keys(self) -> tuple[Ed25519PublicKey, ...]:
        return self._keys

    @classmethod
    async def load(
        cls,
        cache_path: Path,
        fetch: KeyFetcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_interval: float = 60.0,
    ) -> SigningKeys:
        """Keys from `cache_path` if it holds a usable set, else fetched once and cached atomically."""
        self = cls(cache_path=cache_path, fetch=fetch, clock=clock, refresh_interval=refresh_interval)
        cached = _read_cache(cache_path)
        keys = parse_jwks(cached) if cached is not None else []
        if keys:
            self._keys = tuple(keys)
        else:
            await self._fetch_now()
        return self

    async def refresh(self) -> bool:
        """Refetch the key set unless one was fetched within `refresh_interval`; True if new keys are held."""
        if self._fetch is None:
            return False
        async with self._lock:
            now = self._clock()
            if self._last_fetch is not None and now - self._last_fetch < self._refresh_interval:
                return False
            return await self._fetch_now()

    async def _fetch_now(self) -> bool:
        assert self._fetch is not None
        self._last_fetch = self._clock()
        self.fetches += 1
        jwks = await self._fetch()
        keys = parse_jwks({"keys": jwks})
        if not keys:
            return False
        self._keys = tuple(keys)
        if self._cache_path is not None:
            _write_cache(self._cache_path, {"keys": jwks})
        return True


def _read_cache(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_cache(path: Path, obj: Any) -> None:
    try:
        write_text_atomic(path, json.dumps(obj, indent=2))
    except OSError:
        # the cache only saves one request next time; failing to write it must not stop the batch
        log.warning("could not write the signing-key cache %s", path)


# --------------------------------------------------------------------------- verification


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def parse_run_body(obj: Any) -> RemoteRun:
    """A RemoteRun from a status body: bare or wrapped in `{"data": ...}`, id in runId or executionId."""
    if isinstance(obj, Mapping) and isinstance(obj.get("data"), Mapping):
        obj = obj["data"]
    if not isinstance(obj, Mapping):
        raise ValueError("not an object")
    run_id = obj.get("runId", obj.get("executionId"))
    status = obj.get("status")
    if not isinstance(run_id, str) or not run_id or not isinstance(status, str):
        raise ValueError("no run id or status")
    outputs: list[RunOutput] = []
    raw_outputs = obj.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise ValueError("outputs is not a list")
    for i, o in enumerate(raw_outputs):
        if not isinstance(o, Mapping):
            raise ValueError("output is not an object")
        outputs.append(
            RunOutput(
                id=str(o.get("id", i)),
                label=str(o.get("label", "")),
                type=str(o.get("type", "")),
                value=o.get("value"),
                status=str(o.get("status", "completed")),
                error=_opt_str(o.get("error")),
            )
        )
    return RemoteRun(
        run_id=run_id,
        status=status,
        error_message=_opt_str(obj.get("errorMessage")),
        created_at=_opt_str(obj.get("createdAt")),
        started_at=_opt_str(obj.get("startedAt")),
        completed_at=_opt_str(obj.get("completedAt")),
        outputs=tuple(outputs),
    )


def verify_delivery(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[Ed25519PublicKey],
    *,
    now: float,
    tolerance: float = 300,
    max_body: int = MAX_BODY,
) -> Delivery:
    """Check a delivery on its raw bytes (size, headers, timestamp, signature), then parse it; else raise
    WebhookRejected with the status to answer (400 malformed, 401 not authentic, 413 too large)."""
    if len(body) > max_body:
        raise WebhookRejected(413, R_TOO_LARGE, f"{len(body)} bytes > {max_body}")
    lower = {k.lower(): v for k, v in headers.items()}
    signature = lower.get(SIGNATURE_HEADER)
    timestamp = lower.get(TIMESTAMP_HEADER)
    request_id = lower.get(REQUEST_ID_HEADER)
    missing = [
        name
        for name, value in (
            (SIGNATURE_HEADER, signature),
            (TIMESTAMP_HEADER, timestamp),
            (REQUEST_ID_HEADER, request_id),
        )
        if not value
    ]
    if missing or signature is None or timestamp is None or request_id is None:
        raise WebhookRejected(400, R_MISSING_HEADER, ", ".join(missing))
    ts_text = timestamp.strip()
    if not ts_text.isdigit() or len(ts_text) > 12:
        raise WebhookRejected(400, R_BAD_TIMESTAMP)
    ts = int(ts_text)
    if abs(now - ts) > tolerance:
        raise WebhookRejected(401, R_STALE, f"{int(now - ts)} s off")
    try:
        sig = bytes.fromhex(signature.strip())
    except ValueError:
        raise WebhookRejected(401, R_BAD_SIGNATURE_HEX) from None
    if len(sig) != 64:
        raise WebhookRejected(401, R_BAD_SIGNATURE_HEX, "not 64 bytes")
    # The exact timestamp text as sent is what was signed, so it is used verbatim.
    message = timestamp.encode("utf-8") + b"." + body
    for key in keys:
        try:
            key.verify(sig, message)
            break
        except InvalidSignature:
            continue
    else:
        raise WebhookRejected(401, R_BAD_SIGNATURE)
    try:
        run = parse_run_body(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected(400, R_BAD_JSON) from None
    if run.run_id != request_id:
        raise WebhookRejected(400, R_ID_MISMATCH)
    return Delivery(request_id=request_id, timestamp=ts, run=run, user_id=lower.get(USER_ID_HEADER))


# --------------------------------------------------------------------------- the receiver


@dataclass
class ReceiverStats:
    """Counters of the receiver (mutable on purpose: it is a tally, not a value)."""

    accepted: int = 0
    duplicates: int = 0
    errors: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


# The callback returns True when the delivery was new, False for a duplicate (already recorded); None counts
# as new. It must commit the delivery durably before returning: the 200 reply tells Lamina to stop retrying.
DeliveryHandler = Callable[[Delivery], Awaitable[bool | None]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}


class _HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class WebhookReceiver:
    """A minimal HTTP/1.1 server for webhook POSTs (any path): Content-Length required, bodies capped before
    they are read, keep-alive supported. Bodies are never logged."""

    def __init__(
        self,
        host: str,
        port: int,
        keys: SigningKeys,
        on_delivery: DeliveryHandler,
        *,
        clock: Callable[[], float] = time.time,
        tolerance: float = 300,
        max_body: int = MAX_BODY,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.keys = keys
        self._on_delivery = on_delivery
        self._clock = clock
        self._tolerance = tolerance
        self._max_body = max_body
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.stats = ReceiverStats()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the webhook receiver is not started")
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._requested_port, limit=64 * 1024)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ per connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            keep_alive = True
            while keep_alive:
                keep_alive = await self._one_request(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("webhook receiver: connection handler failed")
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._header_timeout)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                await self._reply(writer, 400, {"error": "incomplete request"}, close=True)
            return False
        except asyncio.LimitOverrunError:
            await self._reply(writer, 431, {"error": "headers too large"}, close=True)
            return False
        except TimeoutError:
            return False
        try:
            method, version, headers = _parse_head(head)
        except _HttpError as e:
            await self._reply(writer, e.status, {"error": e.reason}, close=True)
            return False
        conn = headers.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and conn != "close") or conn == "keep-alive"
        if method != "POST":
            self._reject(405, "method not allowed", headers)
            await self._reply(writer, 405, {"error": "only POST"}, close=True, extra={"Allow": "POST"})
            return False
        if "transfer-encoding" in headers:
            self._reject(411, "chunked body", headers)
            await self._reply(writer, 411, {"error": "Content-Length required"}, close=True)
            return False
        length_text = headers.get("content-length")
        if length_text is None or not length_text.strip().isdigit():
            self._reject(411, "no content-length", headers)
            await self._reply(writer, 411, {"error": "Content-Length required"}, close=True)
            return False
        length = int(length_text.strip())
        if length > self._max_body:
            # Refuse before reading: the connection is closed rather than drained.
            self._reject(413, R_TOO_LARGE, headers)
            await self._reply(writer, 413, {"error": R_TOO_LARGE}, close=True)
            await _linger(reader, min(length, 4 * self._max_body))
            return False
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        try:
            body = await asyncio.wait_for(reader.readexactly(length), self._body_timeout)
        except TimeoutError:
            await self._reply(writer, 408, {"error": "body not received in time"}, close=True)
            return False
        status, payload = await self._handle(headers, body)
        await self._reply(writer, status, payload, close=not keep_alive)
        return keep_alive

    async def _handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            delivery = await self._verify(headers, body)
        except WebhookRejected as e:
            self._reject(e.status, e.reason, headers)
            return e.status, {"error": e.reason}
        try:
            new = await self._on_delivery(delivery)
        except Exception:
            self.stats.errors += 1
            # 500 makes Lamina retry the delivery later; log the id only, never the body.
            log.exception("webhook delivery %s could not be recorded", delivery.request_id)
            return 500, {"error": "delivery not recorded"}
        if new is False:
            self.stats.duplicates += 1
            return 200, {"ok": True, "duplicate": True}
        self.stats.accepted += 1
        return 200, {"ok": True}

    async def _verify(self, headers: Mapping[str, str], body: bytes) -> Delivery:
        kw: dict[str, Any] = {"tolerance": self._tolerance, "max_body": self._max_body}
        try:
            return verify_delivery(headers, body, self.keys.keys, now=self._clock(), **kw)
        except WebhookRejected as e:
            if e.reason != R_BAD_SIGNATURE or not await self.keys.refresh():
                raise
        return verify_delivery(headers, body, self.keys.keys, now=self._clock(), **kw)

    def _reject(self, status: int, reason: str, headers: Mapping[str, str]) -> None:
        self.stats.rejected[reason] += 1
        rid = headers.get(REQUEST_ID_HEADER, "-")
        log.warning("webhook delivery rejected: HTTP %d %s (request id %.80r)", status, reason, rid)

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter,
        status: int,
        payload: Mapping[str, Any],
        *,
        close: bool,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload).encode("utf-8")
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body)
        await writer.drain()


async def _linger(reader: asyncio.StreamReader, limit: int, within: float = 2.0) -> None:
    """Discard (never keep) up to `limit` bytes the sender is still pushing, so closing the socket does not
    reset the connection before the sender reads our error reply."""

    async def drain() -> None:
        left = limit
        while left > 0:
            chunk = await reader.read(min(left, 64 * 1024))
            if not chunk:
                return
            left -= len(chunk)

    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(drain(), within)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise _HttpError(400, "undecodable headers") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HttpError(400, "bad request line")
    method, _target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HttpError(400, "bad header line")
        key = name.lower()
        if key in headers and key in ("content-length", REQUEST_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER):
            # Duplicated framing or signature headers are a smuggling/confusion risk: refuse outright.
            raise _HttpError(400, f"duplicate {key} header")
        headers[key] = value.strip()
    return method, version, headers
