"""The emulator's OAuth side over real loopback HTTP: off by default; seeded logins; access tokens accepted beside
the static key; the rotating refresh grant and its errors; expiry and early expiry; a reused refresh token
revoking the login; the counters; and the `oauth:` YAML option."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lamina_batch.emulator import Emulator, EmulatorConfig, OAuthConfig, TokenPair

MakeEmu = Callable[..., Emulator]


def get_apps(emu: Emulator, token: str, prefix: str = "/v1") -> httpx.Response:
    return httpx.get(f"{emu.base_url}{prefix}/apps", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def refresh(emu: Emulator, token: str, client_id: str = "lamina-cli", **extra: Any) -> httpx.Response:
    body = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id, **extra}
    return httpx.post(f"{emu.base_url}/cli/oauth/token", json=body, timeout=10)


def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_off_by_default(emulator: Emulator) -> None:
    """Without `oauth`, the token route is 404, only the static key is let in, and seeding a login is refused."""
    r = refresh(emulator, "lma_mcp_rt_x")
    assert r.status_code == 404
    assert get_apps(emulator, "lma_mcp_at_x").status_code == 401
    assert get_apps(emulator, emulator.key).status_code == 200
    with pytest.raises(RuntimeError, match="OAuth is off"):
        emulator.seed_login()
    assert emulator.expire_tokens() == 0


def test_seeded_token_and_static_key_both_work_on_every_dialect(make_emulator: MakeEmu) -> None:
    """A seeded access token is accepted like the key on both path sets; the key still works."""
    emu = make_emulator(oauth=OAuthConfig())
    pair = emu.seed_login()
    assert pair.access_token.startswith("lma_mcp_at_")
    assert pair.refresh_token.startswith("lma_mcp_rt_")
    assert "lma_mcp" not in repr(pair)
    for prefix in ("/v1", "/api"):
        assert get_apps(emu, pair.access_token, prefix).status_code == 200
    assert get_apps(emu, emu.key).status_code == 200
    bad = get_apps(emu, "lma_mcp_at_forged")
    assert (bad.status_code, bad.json()["code"]) == (401, "AUTH_INVALID_KEY")


def test_refresh_rotates_and_a_reused_token_revokes_the_login(make_emulator: MakeEmu) -> None:
    """Each refresh token works once; presenting a used one is counted and revokes every token of that login."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=60))
    first = emu.seed_login()
    r = refresh(emu, first.refresh_token)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "refresh_token", "expires_in", "scope", "token_type"}
    assert (body["expires_in"], body["token_type"]) == (60, "Bearer")
    assert body["refresh_token"] != first.refresh_token
    assert get_apps(emu, body["access_token"]).status_code == 200
    other = emu.seed_login()  # another user's login is not touched by the revocation below

    reused = refresh(emu, first.refresh_token)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert "already used" in reused.json()["error_description"]
    revoked = get_apps(emu, body["access_token"])
    assert (revoked.status_code, revoked.json()["error"]) == (401, "Access token revoked")
    assert refresh(emu, body["refresh_token"]).json()["error_description"] == "the login has been revoked"
    assert get_apps(emu, other.access_token).status_code == 200
    stats = emu.stats.oauth
    assert (stats.refreshes, stats.reused_refresh_tokens, stats.revoked_logins, stats.refused_refreshes) == (1, 1, 1, 2)


def test_token_expiry_and_early_expiry_are_401s_counted(make_emulator: MakeEmu) -> None:
    """An access token past its ttl, or expired early by the test, gets 401 (counted); a refresh still works."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=0.3))
    pair = emu.seed_login()
    assert get_apps(emu, pair.access_token).status_code == 200
    until(lambda: get_apps(emu, pair.access_token).status_code == 401)
    assert emu.stats.oauth.expired_token_401s == 1
    fresh = emu.seed_login(access_ttl=600)
    assert emu.expire_tokens(fresh.access_token) == 1
    r = get_apps(emu, fresh.access_token)
    assert (r.status_code, r.json()["error"]) == (401, "Access token expired")
    renewed = refresh(emu, fresh.refresh_token).json()
    assert renewed["expires_in"] == 600
    assert get_apps(emu, renewed["access_token"]).status_code == 200
    assert emu.expire_tokens() == 1  # every live token: only the renewed one was still live
    assert emu.stats.oauth.expired_token_401s == 2


GRANT = {"grant_type": "refresh_token", "refresh_token": "SEEDED", "client_id": "lamina-cli"}


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({**GRANT, "grant_type": "password"}, 400, "unsupported_grant_type"),
        ({**GRANT, "refresh_token": None}, 400, "invalid_request"),
        ({**GRANT, "client_id": None}, 400, "invalid_request"),
        ({**GRANT, "refresh_token": "lma_mcp_rt_nope"}, 400, "invalid_grant"),
        ({**GRANT, "client_id": "someone-else"}, 401, "invalid_client"),
        ("not json", 400, "invalid_request"),
    ],
)
def test_refresh_errors_are_4xx_with_error_and_description(
    make_emulator: MakeEmu, body: Any, status: int, error: str
) -> None:
    """Bad grants are 4xx `{error, error_description}`; none of them consumes the seeded refresh token."""
    emu = make_emulator(oauth=OAuthConfig())
    pair = emu.seed_login()
    if isinstance(body, dict):
        body = {k: (pair.refresh_token if v == "SEEDED" else v) for k, v in body.items() if v is not None}
        r = httpx.post(f"{emu.base_url}/cli/oauth/token", json=body, timeout=10)
    else:
        r = httpx.post(f"{emu.base_url}/cli/oauth/token", content=body, timeout=10)
    assert r.status_code == status
    assert r.json()["error"] == error
    assert r.json()["error_description"]
    assert refresh(emu, pair.refresh_token).status_code == 200


def test_form_encoded_grant_and_outage(make_emulator: MakeEmu) -> None:
    """The standard form-encoded grant works too; during an outage the token route is down like the API."""
    emu = make_emulator(oauth=OAuthConfig())
    pair = emu.seed_login()
    emu.set_outage(True)
    assert refresh(emu, pair.refresh_token).status_code == 503
    emu.set_outage(False)
    form = {"grant_type": "refresh_token", "refresh_token": pair.refresh_token, "client_id": "lamina-cli"}
    r = httpx.post(f"{emu.base_url}/cli/oauth/token", data=form, timeout=10)
    assert r.status_code == 200
    assert httpx.get(f"{emu.base_url}/cli/oauth/token", timeout=10).status_code == 404
    assert [e.path for e in emu.stats.requests if e.path.startswith("/cli")] == ["/cli/oauth/token"] * 3


def test_login_document_is_what_lamina_login_writes(make_emulator: MakeEmu) -> None:
    """TokenPair.login_document: version 1, kind oauth, the pair, expiry from the ttl, extra sections beside."""
    emu = make_emulator(oauth=OAuthConfig(access_ttl=5, client_id="cli-x", scope="s"))
    pair = emu.seed_login()
    doc = pair.login_document(emu.base_url, issued_at=1_800_000_000.0, webhook={"publicUrl": "https://h"})
    creds = doc["credentials"]
    assert doc["version"] == 1
    assert doc["webhook"] == {"publicUrl": "https://h"}
    assert (creds["kind"], creds["apiKey"], creds["refreshToken"]) == ("oauth", pair.access_token, pair.refresh_token)
    assert (creds["clientId"], creds["scope"], creds["baseUrl"]) == ("cli-x", "s", emu.base_url)
    assert (creds["savedAt"], creds["expiresAt"]) == ("2027-01-15T08:00:00.000Z", "2027-01-15T08:00:05.000Z")
    assert pair == TokenPair(pair.access_token, pair.refresh_token, 5, "cli-x", "s")


def test_yaml_option(tmp_path: Path) -> None:
    """`oauth: {access_ttl: 5}` turns it on with those values; absent or null is off; bad values name the key."""
    cfg = tmp_path / "emu.yaml"
    cfg.write_text("oauth: {access_ttl: 5, revoke_on_reuse: false}\n", encoding="utf-8")
    assert EmulatorConfig.from_yaml(cfg).oauth == OAuthConfig(access_ttl=5.0, revoke_on_reuse=False)
    cfg.write_text("oauth: null\n", encoding="utf-8")
    assert EmulatorConfig.from_yaml(cfg).oauth is None
    assert EmulatorConfig().oauth is None
    for text, where in [
        ("oauth: {access_ttl: 0}", "oauth.access_ttl"),
        ("oauth: {ttl: 5}", "oauth.ttl"),
        ("oauth: yes", "oauth"),
        ("oauth: {client_id: ''}", "oauth.client_id"),
        ("oauth: {revoke_on_reuse: 1}", "oauth.revoke_on_reuse"),
    ]:
        cfg.write_text(text + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"emu.yaml: {where}: "):
            EmulatorConfig.from_yaml(cfg)
