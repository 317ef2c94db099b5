"""The emulator's OAuth side (off by default): logins with short-lived access tokens and rotating refresh tokens
at `POST /cli/oauth/token`, the access-token check every API route makes, a whole login revoked when a used
refresh token comes back (as lamina-api.md warns a server may), and the counters tests assert on."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

REFRESH_ROUTE = "/cli/oauth/token"
Verdict = Literal["ok", "expired", "revoked", "unknown"]


@dataclass(frozen=True)
class OAuthConfig:
    """`oauth:` in the emulator's YAML; its presence turns OAuth on."""

    access_ttl: float = 3600.0  # seconds an access token lives
    client_id: str = "lamina-cli"
    scope: str = "apps:read runs:write"
    revoke_on_reuse: bool = True  # a used refresh token presented again revokes the whole login


def parse_oauth_config(value: Any, fail: Callable[[str, str], ValueError]) -> OAuthConfig | None:
    """The YAML mapping (or null = off); `fail(where, message)` builds the loader's error."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail("oauth", "must be a mapping, e.g. {access_ttl: 5}")
    known = set(OAuthConfig.__dataclass_fields__)
    kw: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            raise fail(f"oauth.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        if key == "access_ttl":
            if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
                raise fail("oauth.access_ttl", f"must be a positive number of seconds, got {item!r}")
            kw[key] = float(item)
        elif key == "revoke_on_reuse":
            if not isinstance(item, bool):
                raise fail("oauth.revoke_on_reuse", "must be true or false")
            kw[key] = item
        else:
            if not isinstance(item, str) or not item:
                raise fail(f"oauth.{key}", "must be a non-empty string")
            kw[key] = item
    return OAuthConfig(**kw)


@dataclass(frozen=True)
class TokenPair:
    """A login's tokens as the server hands them out; `login_document` is the file Lamina's CLI would write."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: float
    client_id: str
    scope: str

    def login_document(self, base_url: str, *, issued_at: float | None = None, **sections: Any) -> dict[str, Any]:
        """`~/.lamina/config.json` for this login (`issued_at` epoch seconds, default now); `sections` (e.g.
        webhook=...) are added beside `credentials`."""
        now = time.time() if issued_at is None else issued_at
        return {
            "version": 1,
            "credentials": {
                "kind": "oauth",
                "apiKey": self.access_token,
                "baseUrl": base_url,
                "savedAt": _iso(now),
                "refreshToken": self.refresh_token,
                "expiresAt": _iso(now + self.expires_in),
                "clientId": self.client_id,
                "scope": self.scope,
            },
            **sections,
        }


def write_login_file(path: Path, pair: TokenPair, base_url: str) -> None:
    """Store `pair` where `lamina login` would (`lamina-batch emulator --login-file`): the folder made 0700, the
    file written whole (temp file, fsync, rename) with mode 0600; any other section of a file already there kept."""
    document = pair.login_document(base_url)
    with contextlib.suppress(OSError, ValueError):
        existing = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(existing, dict):
            document = {**existing, **document}
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(document, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OAuthStats:
    """Counters (written on the emulator's loop or a test thread, read from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.refreshes = 0  # pairs issued by the refresh grant
        self.reused_refresh_tokens = 0  # used refresh tokens presented again
        self.expired_token_401s = 0  # API requests refused because their access token had expired
        self.refused_refreshes = 0  # refresh requests answered 4xx (reuse included)
        self.revoked_logins = 0

    def bump(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


@dataclass
class _Login:
    client_id: str
    scope: str
    access_ttl: float
    revoked: bool = False


@dataclass
class _Access:
    login: _Login
    expires_at: float  # monotonic


@dataclass
class _Refresh:
    login: _Login
    used: bool = False


class OAuthServer:
    """Logins, their tokens, the refresh grant and the access-token check. Thread-safe (tests seed and expire
    from their own thread while the emulator's loop serves)."""

    def __init__(self, config: OAuthConfig, stats: OAuthStats, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.stats = stats
        self._clock = clock
        self._lock = threading.Lock()
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Refresh] = {}

    def seed_login(self, *, access_ttl: float | None = None) -> TokenPair:
        """A new login, as `lamina login` would get it; `access_ttl` overrides the config's for this login."""
        cfg = self.config
        login = _Login(cfg.client_id, cfg.scope, float(cfg.access_ttl if access_ttl is None else access_ttl))
        with self._lock:
            return self._issue(login)

    def _issue(self, login: _Login) -> TokenPair:
        access = f"lma_mcp_at_{secrets.token_urlsafe(24)}"
        refresh = f"lma_mcp_rt_{secrets.token_urlsafe(24)}"
        self._access[access] = _Access(login, self._clock() + login.access_ttl)
        self._refresh[refresh] = _Refresh(login)
        return TokenPair(access, refresh, login.access_ttl, login.client_id, login.scope)

    def issued(self) -> tuple[str, ...]:
        """Every access and refresh token handed out so far (tests look for them where no secret may be)."""
        with self._lock:
            return (*self._access, *self._refresh)

    def check(self, token: str) -> Verdict:
        """Whether an API request presenting `token` is let in; counts the expired ones refused."""
        with self._lock:
            entry = self._access.get(token)
            if entry is None:
                return "unknown"
            if entry.login.revoked:
                return "revoked"
            if self._clock() >= entry.expires_at:
                self.stats.bump("expired_token_401s")
                return "expired"
            return "ok"

    def expire(self, access_token: str | None = None) -> int:
        """Expire one access token now (or every live one): the server's early expiry. Returns how many."""
        now = self._clock()
        with self._lock:
            if access_token is None:
                entries = list(self._access.values())
            else:
                entries = [self._access[access_token]] if access_token in self._access else []
            live = [e for e in entries if e.expires_at > now]
            for entry in live:
                entry.expires_at = now
            return len(live)

    def token_endpoint(self, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        """`POST /cli/oauth/token`: (status, JSON body)."""
        form = _form(body, content_type)
        if form is None:
            return self._refuse(400, "invalid_request", "the body must be a JSON object")
        if form.get("grant_type") != "refresh_token":
            return self._refuse(400, "unsupported_grant_type", "only grant_type refresh_token is supported")
        token, client_id = form.get("refresh_token"), form.get("client_id")
        if not isinstance(token, str) or not token or not isinstance(client_id, str) or not client_id:
            return self._refuse(400, "invalid_request", "refresh_token and client_id are required")
        with self._lock:
            entry = self._refresh.get(token)
            if entry is None:
                return self._refuse(400, "invalid_grant", "unknown refresh token")
            login = entry.login
            if entry.used:
                self.stats.bump("reused_refresh_tokens")
                if self.config.revoke_on_reuse and not login.revoked:
                    login.revoked = True
                    self.stats.bump("revoked_logins")
                return self._refuse(400, "invalid_grant", "refresh token already used; the login is revoked")
            if login.revoked:
                return self._refuse(400, "invalid_grant", "the login has been revoked")
            if client_id != login.client_id:
                return self._refuse(401, "invalid_client", "client_id does not match this login")
            entry.used = True
            pair = self._issue(login)
        self.stats.bump("refreshes")
        expires_in: float | int = int(pair.expires_in) if pair.expires_in.is_integer() else pair.expires_in
        return 200, {
            "access_token": pair.access_token,
            "refresh_token": pair.refresh_token,
            "expires_in": expires_in,
            "scope": pair.scope,
            "token_type": "Bearer",
        }

    def _refuse(self, status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
        self.stats.bump("refused_refreshes")
        return status, {"error": error, "error_description": description}


def _form(body: bytes, content_type: str) -> dict[str, Any] | None:
    try:
        if "application/x-www-form-urlencoded" in content_type:
            return dict(parse_qsl(body.decode("utf-8")))
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
