"""credentials against the emulator over real loopback HTTP: an OAuth login living a second stays usable for many
lifetimes, a token the server expires early is refreshed after its 401, and dead logins (revoked, server
unreachable) fail with the advice to log in again. Requests follow the client's rule: one refresh, one resend."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from login_helpers import login_path, write_document

from lamina_batch.credentials import OAuthSource, read_login_file, resolve_credentials
from lamina_batch.emulator import Emulator, OAuthConfig
from lamina_batch.errors import AuthError, LoginRefreshError

MakeEmu = Callable[..., Emulator]


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


async def send(source: OAuthSource, http: httpx.AsyncClient, path: str = "/v1/apps") -> tuple[int, int]:
    """GET like the client will: (final status, 401s seen). One refresh and one resend after a 401, then fatal."""
    header = await source.authorization()
    r = await http.get(source.base_url + path, headers={"Authorization": header})
    if r.status_code != 401:
        return r.status_code, 0
    if not await source.unauthorized(header):
        raise AuthError("401", status=401)
    r = await http.get(source.base_url + path, headers={"Authorization": await source.authorization()})
    if r.status_code == 401:
        raise AuthError("second 401", status=401)
    return r.status_code, 1


def seeded_home(emu: Emulator, home: Path, *, ttl: float, **sections: Any) -> Path:
    pair = emu.seed_login(access_ttl=ttl)
    return write_document(home, pair.login_document(emu.base_url, **sections))


def oauth_source(home: Path) -> OAuthSource:
    source = resolve_credentials(env={"HOME": str(home)}, sleep=no_sleep)
    assert isinstance(source, OAuthSource)
    return source


def test_a_one_second_login_lasts_many_lifetimes(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """A login whose tokens live 1 s serves requests for several lifetimes: every request answered, refreshed
    ahead of expiry, 0 reused refresh tokens, the latest pair (0600, webhook intact) in the file, still accepted."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=1.0))
    path = seeded_home(emu, tmp_path, ttl=1.0, webhook={"publicUrl": "https://hooks.example", "savedAt": "s"})
    source = oauth_source(tmp_path)

    async def batch() -> tuple[list[int], int]:
        statuses, seen_401 = [], 0
        async with httpx.AsyncClient(timeout=10) as http:
            deadline = time.monotonic() + 20
            while emu.stats.oauth.refreshes < 3:
                assert time.monotonic() < deadline, "no refreshes in time"
                status, n = await send(source, http)
                statuses.append(status)
                seen_401 += n
                await asyncio.sleep(0.02)
        return statuses, seen_401

    statuses, seen_401 = asyncio.run(batch())
    assert set(statuses) == {200}
    assert emu.stats.oauth.reused_refresh_tokens == 0
    assert seen_401 == emu.stats.oauth.expired_token_401s  # counted on both sides, normally 0
    assert source.refreshes == emu.stats.oauth.refreshes
    doc = json.loads(path.read_text())
    assert doc["webhook"] == {"publicUrl": "https://hooks.example", "savedAt": "s"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    latest = doc["credentials"]["apiKey"]
    assert asyncio.run(source.authorization()) == f"Bearer {latest}"
    r = httpx.get(f"{emu.base_url}/v1/apps", headers={"Authorization": f"Bearer {latest}"}, timeout=10)
    assert r.status_code == 200


def test_a_token_expired_early_is_refreshed_after_its_401(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """The server expires a token early: the 401 leads to one refresh and one resend that succeeds."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=600))
    path = seeded_home(emu, tmp_path, ttl=600)
    source = oauth_source(tmp_path)

    async def scenario() -> list[tuple[int, int]]:
        async with httpx.AsyncClient(timeout=10) as http:
            first = await send(source, http)
            assert emu.expire_tokens() == 1
            return [first, await send(source, http), await send(source, http)]

    assert asyncio.run(scenario()) == [(200, 0), (200, 1), (200, 0)]
    stats = emu.stats.oauth
    assert (stats.refreshes, stats.expired_token_401s, stats.reused_refresh_tokens) == (1, 1, 0)
    login = read_login_file(path).login
    assert login is not None
    assert asyncio.run(source.authorization()) == f"Bearer {login.access}"


def test_a_revoked_login_is_a_dead_login(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """A login the server revoked: the refresh is refused, LoginRefreshError says to log in again."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=600))
    pair = emu.seed_login()
    url = f"{emu.base_url}/cli/oauth/token"
    grant = {"grant_type": "refresh_token", "refresh_token": pair.refresh_token, "client_id": pair.client_id}
    second = httpx.post(url, json=grant, timeout=10).json()
    httpx.post(url, json=grant, timeout=10)  # someone reuses the first token: the whole login is revoked
    doc = pair.login_document(emu.base_url)
    doc["credentials"].update(apiKey=second["access_token"], refreshToken=second["refresh_token"])
    write_document(tmp_path, doc)
    source = oauth_source(tmp_path)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            await send(source, http)

    with pytest.raises(LoginRefreshError) as info:
        asyncio.run(scenario())
    text = str(info.value)
    assert "the login has been revoked" in text
    assert "[HTTP 400, invalid_grant]: run `lamina login` again (or set LAMINA_API_KEY)" in text
    assert second["refresh_token"] not in text
    assert second["access_token"] not in text


def test_an_unreachable_server_is_a_dead_login_that_presented_nothing(make_emulator: MakeEmu, tmp_path: Path) -> None:
    """Network down at the refresh (the server gone): LoginRefreshError naming the origin; nothing was presented,
    so once the server is back the same refresh token works."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=600))
    path = seeded_home(emu, tmp_path, ttl=600)
    doc = json.loads(path.read_text())
    gone = f"http://127.0.0.1:{_free_port()}"
    doc["credentials"]["baseUrl"] = gone
    write_document(tmp_path, doc)
    with pytest.raises(LoginRefreshError, match=f"could not reach {gone}"):
        asyncio.run(oauth_source(tmp_path).unauthorized(f"Bearer {doc['credentials']['apiKey']}"))
    doc["credentials"]["baseUrl"] = emu.base_url
    write_document(tmp_path, doc)
    source = oauth_source(tmp_path)
    assert asyncio.run(source.unauthorized(f"Bearer {doc['credentials']['apiKey']}")) is True
    assert (emu.stats.oauth.refreshes, emu.stats.oauth.reused_refresh_tokens) == (1, 0)
    assert login_path(tmp_path).read_text().count(emu.base_url) == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
