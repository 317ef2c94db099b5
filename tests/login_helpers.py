"""Test helpers for stored Lamina logins: write `~/.lamina/config.json` under a private HOME, and a scripted OAuth
issuer for httpx.MockTransport (the emulator plays the issuer in the loopback and process tests)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ISSUER = "https://login.example.test"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def login_path(home: Path) -> Path:
    return home / ".lamina" / "config.json"


def write_document(home: Path, document: Any, *, mode: int = 0o600) -> Path:
    """Write `document` (a dict is JSON-encoded, str/bytes written as they are) as the home's stored login."""
    path = login_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if isinstance(document, bytes):
        path.write_bytes(document)
    elif isinstance(document, str):
        path.write_text(document, encoding="utf-8")
    else:
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.chmod(path, mode)
    return path


def oauth_document(
    *,
    access: str = "lma_mcp_at_first",
    refresh: str | None = "lma_mcp_rt_first",
    base_url: str = ISSUER,
    saved_at: float | None = None,
    lifetime: float | None = 3600.0,
    client_id: str | None = "lamina-cli",
    **sections: Any,
) -> dict[str, Any]:
    """A `kind: oauth` login saved at `saved_at` (default now) living `lifetime` seconds (None: no expiresAt)."""
    saved = time.time() if saved_at is None else saved_at
    creds: dict[str, Any] = {"kind": "oauth", "apiKey": access, "baseUrl": base_url, "savedAt": iso(saved)}
    if refresh is not None:
        creds["refreshToken"] = refresh
    if lifetime is not None:
        creds["expiresAt"] = iso(saved + lifetime)
    if client_id is not None:
        creds["clientId"] = client_id
    creds["scope"] = "apps:read runs:write"
    return {"version": 1, "credentials": creds, **sections}


def apikey_document(key: str = "lma_stored_key", base_url: str = "https://stored.example.test") -> dict[str, Any]:
    return {
        "version": 1,
        "credentials": {"kind": "apikey", "apiKey": key, "baseUrl": base_url, "savedAt": iso(time.time())},
    }


@dataclass
class Issuer:
    """A scripted `/cli/oauth/token` for httpx.MockTransport: rotates pairs like Lamina (each refresh token works
    once), records every refresh token presented, and can be told to refuse, fail to connect, or lose replies."""

    current_refresh: str = "lma_mcp_rt_first"
    expires_in: float = 3600.0
    delay: float = 0.0
    refuse: bool = False
    connect_failures: int = 0
    lose_reply: bool = False
    malformed: bool = False
    presented: list[str] = field(default_factory=list)
    issued: list[tuple[str, str]] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.connect_failures > 0:
            self.connect_failures -= 1
            raise httpx.ConnectError("connection refused", request=request)
        assert request.url.path == "/cli/oauth/token"
        assert "authorization" not in request.headers
        body = json.loads(request.content)
        self.presented.append(body["refresh_token"])
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.lose_reply:
            raise httpx.ReadError("connection reset", request=request)
        if self.refuse or body["refresh_token"] != self.current_refresh:
            # a careless server echoes what it was sent: the client must scrub it
            return httpx.Response(
                400, json={"error": "invalid_grant", "error_description": f"token {body['refresh_token']} revoked"}
            )
        if self.malformed:
            return httpx.Response(200, json={"token_type": "Bearer"})
        access, refresh = f"lma_mcp_at_{secrets.token_hex(8)}", f"lma_mcp_rt_{secrets.token_hex(8)}"
        self.current_refresh = refresh
        self.issued.append((access, refresh))
        reply = {"access_token": access, "refresh_token": refresh, "expires_in": self.expires_in, "scope": "s"}
        return httpx.Response(200, json={**reply, "token_type": "Bearer"})


class Clock:
    """Wall time the test moves by hand."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now
