"""What a request meets before its route: Lamina's error body, the per-client fixed-window rate limit with its
RateLimit-* headers, and the key or OAuth access-token check."""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Mapping
from typing import Any

from lamina_batch.emulator.oauth import OAuthServer

__all__ = ["RateWindows", "auth_problem", "error_body"]

Headers = tuple[tuple[str, str], ...]


def error_body(
    code: str, message: str, request_id: str, *, retryable: bool, retry_after: int | None, details: Any
) -> tuple[dict[str, Any], Headers]:
    """Lamina's error shape and the headers it implies (Retry-After mirrors `retryAfter`)."""
    body: dict[str, Any] = {"error": message, "code": code, "retryable": retryable, "requestId": request_id}
    headers: Headers = ()
    if retry_after is not None:
        body["retryAfter"] = retry_after
        headers = (("Retry-After", str(retry_after)),)
    if details is not None:
        body["details"] = details
    return body, headers


class RateWindows:
    """A fixed window per client address, as Lamina counts: `limit` requests per `window` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._windows: dict[str, list[float]] = {}

    def count(self, peer: str) -> tuple[bool, Headers, int]:
        """Count one request from `peer`: (over the limit?, RateLimit-* headers, seconds to the reset)."""
        now = time.monotonic()
        w = self._windows.get(peer)
        if w is None or now >= w[0] + self._window:
            w = [now, 0.0]
            self._windows[peer] = w
        w[1] += 1
        reset = max(1, math.ceil(w[0] + self._window - now))
        headers = (
            ("RateLimit-Limit", str(self._limit)),
            ("RateLimit-Remaining", str(max(0, self._limit - int(w[1])))),
            ("RateLimit-Reset", str(reset)),
        )
        return w[1] > self._limit, headers, reset


def auth_problem(headers: Mapping[str, str], key: str, oauth: OAuthServer | None) -> tuple[str, str] | None:
    """None when the request carries the key (X-API-Key or Bearer) or a live access token, else (code, message)."""
    given = headers.get("x-api-key")
    authz = headers.get("authorization")
    if given is None and authz is not None:
        scheme, _, token = authz.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
    if not given:
        return "AUTH_MISSING_KEY", "Missing API key: send Authorization: Bearer <key>"
    if hmac.compare_digest(given.encode(), key.encode()):
        return None
    verdict = oauth.check(given) if oauth is not None else "unknown"
    if verdict == "ok":
        return None
    return "AUTH_INVALID_KEY", {"expired": "Access token expired", "revoked": "Access token revoked"}.get(
        verdict, "Invalid API key"
    )
