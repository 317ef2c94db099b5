"""Webhook deliveries: Ed25519 verification on the raw body, the signing-key set (cached beside the manifest),
and the receiver (httpd.HttpServer, h11) that hands verified deliveries to the executor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
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
from .httpd import HttpServer, Limits, Reply, Request, Throttle, descriptor_share, json_reply
from .models import RemoteRun
from .wire import run_from_webhook

__all__ = [
    "MAX_BODY",
    "Delivery",
    "ReceiverStats",
    "SigningKeys",
    "WebhookReceiver",
    "WebhookRejected",
    "parse_jwks",
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
        run = run_from_webhook(json.loads(body))  # wire.py's one rule for a run object
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


class WebhookReceiver:
    """The HTTP/1.1 endpoint Lamina POSTs deliveries to (any path), on httpd.HttpServer: a body must declare its
    Content-Length and is refused past `max_body` before it is read (chunked bodies: 411); `header_timeout`
    bounds an idle connection, `body_timeout` a request from its first byte to its last; at most
    `max_connections` are open (default: a quarter of the descriptor limit, 16..256), more are closed at once.
    Order per delivery: verify the raw bytes, then parse, then the callback (which deduplicates and commits),
    and only then a 2xx. Bodies are never logged; refusals are logged as one line at most every 30 s."""

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
        max_connections: int | None = None,
    ) -> None:
        self.host = host
        self.keys = keys
        self._on_delivery = on_delivery
        self._clock = clock
        self._tolerance = tolerance
        self._max_body = max_body
        self._rejections = Throttle(log)
        limits = Limits(
            max_head=16 * 1024,
            max_body=max_body,
            max_connections=max_connections or descriptor_share(0.25, 16, 256),
            idle_timeout=header_timeout,
            request_timeout=body_timeout,
            chunked=False,
        )
        self.server = HttpServer(
            self._on_request,
            host,
            port,
            limits=limits,
            name="webhook receiver",
            on_reject=self._reject,
            on_error=self._failed,
            logger=log,
        )
        self.stats = ReceiverStats()

    @property
    def port(self) -> int:
        try:
            return self.server.port
        except RuntimeError:
            raise RuntimeError("the webhook receiver is not started") from None

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ per request

    async def _on_request(self, request: Request) -> Reply:
        if request.method != "POST":
            self._reject(405, "method not allowed", request.headers)
            return Reply(405, b'{"error": "only POST"}', headers=(("Allow", "POST"),), close=True)
        status, payload = await self._handle(request.headers, request.body)
        return json_reply(status, payload)

    async def _handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            delivery = await self._verify(headers, body)
        except WebhookRejected as e:
            self._reject(e.status, e.reason, headers)
            return e.status, {"error": e.reason}
        try:
            new = await self._on_delivery(delivery)
        except Exception as e:
            self.stats.errors += 1
            # 500 makes Lamina retry the delivery later; log the id only, never the body.
            log.warning(
                "webhook delivery %.80r could not be recorded (%s: %.200s)", delivery.request_id, type(e).__name__, e
            )
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
        if status == 413:
            reason = R_TOO_LARGE
        self.stats.rejected[reason] += 1
        rid = headers.get(REQUEST_ID_HEADER, "-")
        self._rejections.warning(f"webhook delivery rejected: HTTP {status} {reason} (request id {rid[:80]!r})")

    def _failed(self, exc: Exception) -> Reply:
        self.stats.errors += 1
        log.warning("webhook receiver: request handler failed (%s)", type(exc).__name__)
        return json_reply(500, {"error": "internal error"})
