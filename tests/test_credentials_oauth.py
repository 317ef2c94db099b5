"""credentials.oauth and .store against a scripted issuer (httpx.MockTransport): when a login is refreshed, that
refreshes are serialised and written back before use (0600, symlinks, every other field kept), and how a login
that cannot be refreshed fails. The emulator plays the issuer over loopback in test_credentials_loopback.py."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from login_helpers import ISSUER, Clock, Issuer, login_path, oauth_document, write_document

from lamina_batch.credentials import LoginStore, OAuthSource, read_login_file, refresh_margin, resolve_credentials
from lamina_batch.errors import (
    AuthError,
    BatchFatalError,
    CredentialsFileError,
    LoginRefreshError,
    TransientError,
)

T = TypeVar("T")
NOW = 1_800_000_000.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def make_source(home: Path, issuer: Issuer, clock: Clock) -> OAuthSource:
    source = resolve_credentials(env={}, home=home, transport=issuer.transport(), clock=clock, sleep=no_sleep)
    assert isinstance(source, OAuthSource)
    return source


def stored(home: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(login_path(home).read_text(encoding="utf-8"))
    return document


# ---------------------------------------------------------------------- when to refresh


def test_margin_scales_with_lifetime() -> None:
    """A quarter of the lifetime, capped at Lamina CLI's 60 s; an unknown lifetime counts as an hour."""
    assert refresh_margin(5) == pytest.approx(1.25)
    assert refresh_margin(40) == pytest.approx(10)
    assert refresh_margin(3600) == 60
    assert refresh_margin(None) == 60


def test_fresh_token_is_sent_as_it_is(tmp_path: Path) -> None:
    """Before the margin no refresh is made; the header is the stored access token."""
    clock, issuer = Clock(NOW), Issuer()
    write_document(tmp_path, oauth_document(saved_at=NOW, lifetime=5))
    source = make_source(tmp_path, issuer, clock)
    clock.now = NOW + 3.7  # 5 s token: refreshed from 3.75 s on
    assert run(source.authorization()) == "Bearer lma_mcp_at_first"
    assert issuer.presented == []


def test_due_token_is_refreshed_and_written_before_use(tmp_path: Path) -> None:
    """Inside the margin the login is refreshed once; the file holds the new pair when its header is returned."""
    clock, issuer = Clock(NOW), Issuer(expires_in=5)
    write_document(tmp_path, oauth_document(saved_at=NOW, lifetime=5))
    source = make_source(tmp_path, issuer, clock)
    clock.now = NOW + 3.8
    header = run(source.authorization())
    access, refresh = issuer.issued[0]
    assert header == f"Bearer {access}"
    assert issuer.presented == ["lma_mcp_rt_first"]
    creds = stored(tmp_path)["credentials"]
    assert (creds["apiKey"], creds["refreshToken"]) == (access, refresh)
    login = read_login_file(login_path(tmp_path)).login
    assert login is not None
    assert login.expires_at is not None
    assert login.expires_at.timestamp() == pytest.approx(NOW + 3.8 + 5, abs=0.01)
    assert login.lifetime == pytest.approx(5, abs=0.01)
    # the new token lives 5 s too: the next refresh comes 3.75 s later, not on the next request
    clock.now += 3.7
    assert run(source.authorization()) == header
    clock.now += 0.1
    assert run(source.authorization()) != header
    assert source.refreshes == 2


def test_write_back_keeps_every_other_field_and_section(tmp_path: Path) -> None:
    """The rewritten file keeps version, webhook, unknown keys (top level and in credentials) and their order;
    it is mode 0600 even if it was not."""
    clock, issuer = Clock(NOW), Issuer()
    doc = oauth_document(saved_at=NOW - 3590, webhook={"publicUrl": "https://hooks.example", "savedAt": "x"})
    doc["credentials"]["futureField"] = {"nested": [1, "two"]}
    doc["zzUnknown"] = "kept"
    write_document(tmp_path, doc, mode=0o644)
    before = stored(tmp_path)
    run(make_source(tmp_path, issuer, clock).authorization())
    after = stored(tmp_path)
    assert list(after) == list(before)
    assert list(after["credentials"]) == list(before["credentials"])
    assert after["webhook"] == before["webhook"]
    assert after["zzUnknown"] == "kept"
    assert after["credentials"]["futureField"] == {"nested": [1, "two"]}
    for kept in ("kind", "baseUrl", "clientId", "version"):
        assert after.get(kept, after["credentials"].get(kept)) == before.get(kept, before["credentials"].get(kept))
    assert stat.S_IMODE(login_path(tmp_path).stat().st_mode) == 0o600
    assert sorted(p.name for p in login_path(tmp_path).parent.iterdir()) == ["config.json", "config.json.lock"]


def test_write_back_goes_through_a_symlink(tmp_path: Path) -> None:
    """A config.json that is a symlink stays one; its target gets the new pair, the lock sits beside the target."""
    clock, issuer = Clock(NOW), Issuer()
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "lamina.json"
    target.write_text(json.dumps(oauth_document(saved_at=NOW - 3590)), encoding="utf-8")
    link = login_path(tmp_path)
    link.parent.mkdir()
    link.symlink_to(os.path.relpath(target, link.parent))
    run(make_source(tmp_path, issuer, clock).authorization())
    assert link.is_symlink()
    assert json.loads(target.read_text())["credentials"]["apiKey"] == issuer.issued[0][0]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in dotfiles.iterdir()) == ["lamina.json", "lamina.json.lock"]


# ---------------------------------------------------------------------- 401 and serialisation


def test_a_401_refreshes_once_and_a_stale_401_does_not_refresh_again(tmp_path: Path) -> None:
    """unauthorized(header) refreshes once; a 401 to a header already replaced only asks for a resend."""
    clock, issuer = Clock(NOW), Issuer()
    write_document(tmp_path, oauth_document(saved_at=NOW))
    source = make_source(tmp_path, issuer, clock)

    async def scenario() -> tuple[str, str]:
        old = await source.authorization()
        assert await source.unauthorized(old) is True
        new = await source.authorization()
        assert await source.unauthorized(old) is True  # a request sent with the old token, answered late
        return old, new

    old, new = run(scenario())
    assert old != new
    assert len(issuer.presented) == 1


def test_concurrent_requests_share_one_refresh(tmp_path: Path) -> None:
    """Fifty requests finding the token due at once, and fifty 401s to one header, each cause one refresh."""
    clock, issuer = Clock(NOW), Issuer(delay=0.02)
    write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    source = make_source(tmp_path, issuer, clock)

    async def scenario() -> tuple[set[str], set[str]]:
        due = set(await asyncio.gather(*(source.authorization() for _ in range(50))))
        current = due.copy().pop()
        await asyncio.gather(*(source.unauthorized(current) for _ in range(50)))
        after = {await source.authorization()}
        return due, after

    due, after = run(scenario())
    assert len(due) == 1
    assert len(after) == 1
    assert due != after
    assert issuer.presented == ["lma_mcp_rt_first", issuer.issued[0][1]]
    assert len(set(issuer.presented)) == len(issuer.presented)


def test_a_pair_another_process_wrote_is_adopted_not_refreshed(tmp_path: Path) -> None:
    """After taking the lock the file is re-read: a fresh pair written by another process is used as it is."""
    clock, issuer = Clock(NOW), Issuer()
    write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    source = make_source(tmp_path, issuer, clock)
    write_document(tmp_path, oauth_document(access="lma_mcp_at_other", refresh="lma_mcp_rt_other", saved_at=NOW))
    assert run(source.authorization()) == "Bearer lma_mcp_at_other"
    assert issuer.presented == []
    assert (source.adopted, source.refreshes) == (1, 0)
    # and after a 401 with the token another process refreshed meanwhile
    write_document(tmp_path, oauth_document(access="lma_mcp_at_third", refresh="lma_mcp_rt_third", saved_at=NOW))
    assert run(source.unauthorized("Bearer lma_mcp_at_other")) is True
    assert run(source.authorization()) == "Bearer lma_mcp_at_third"
    assert issuer.presented == []


def test_waiting_for_the_lock_times_out_with_advice(tmp_path: Path) -> None:
    """A lock held elsewhere past the timeout is a LoginRefreshError naming the lock file; the loop keeps running."""
    clock, issuer = Clock(NOW), Issuer()
    path = write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    login = read_login_file(path).login
    assert login is not None
    source = OAuthSource(
        LoginStore(path, lock_timeout=0.2),
        login,
        ISSUER,
        base_url_from="the stored login",
        transport=issuer.transport(),
        clock=clock,
    )
    fd = os.open(path.with_name("config.json.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        task = asyncio.create_task(ticker())
        try:
            await source.authorization()
        finally:
            task.cancel()

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LoginRefreshError, match=r"config\.json\.lock: still held by another process"):
            run(scenario())
    finally:
        os.close(fd)
    assert ticks > 5
    assert issuer.presented == []


# ---------------------------------------------------------------------- logins that cannot be refreshed


def test_refused_refresh_is_fatal_not_retryable_and_scrubbed(tmp_path: Path) -> None:
    """A refused refresh is a LoginRefreshError (an AuthError: exit 2 before a start, 3 after), advising
    `lamina login` or LAMINA_API_KEY, never echoing the token; the file is left as it was."""
    clock, issuer = Clock(NOW), Issuer(refuse=True)
    write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    before = login_path(tmp_path).read_bytes()
    with pytest.raises(LoginRefreshError) as info:
        run(make_source(tmp_path, issuer, clock).authorization())
    exc = info.value
    assert isinstance(exc, AuthError)
    assert isinstance(exc, BatchFatalError)
    assert not isinstance(exc, TransientError)
    text = str(exc)
    assert "invalid_grant" in text
    assert text.endswith("run `lamina login` again (or set LAMINA_API_KEY)")
    assert "lma_mcp_rt_first" not in text
    assert "***" in text
    assert login_path(tmp_path).read_bytes() == before
    assert sorted(p.name for p in login_path(tmp_path).parent.iterdir()) == ["config.json", "config.json.lock"]


def test_connect_failures_are_retried_and_never_count_as_presented(tmp_path: Path) -> None:
    """A refresh that never left is tried three times, then fails; the token was not presented, so a later
    refresh may present it (once)."""
    clock, issuer = Clock(NOW), Issuer(connect_failures=3)
    write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    with pytest.raises(LoginRefreshError, match=r"could not reach https://login\.example\.test"):
        run(make_source(tmp_path, issuer, clock).authorization())
    assert issuer.presented == []
    issuer.connect_failures = 2
    run(make_source(tmp_path, issuer, clock).authorization())
    assert issuer.presented == ["lma_mcp_rt_first"]


def test_a_lost_reply_never_presents_that_refresh_token_again(tmp_path: Path) -> None:
    """A refresh sent whose reply was lost may have rotated the pair: no lamina-batch process presents that refresh
    token again (the note in the lock file), it says to log in again instead."""
    clock, issuer = Clock(NOW), Issuer(lose_reply=True)
    write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    with pytest.raises(LoginRefreshError, match="no reply came"):
        run(make_source(tmp_path, issuer, clock).authorization())
    issuer.lose_reply = False
    with pytest.raises(LoginRefreshError, match="never presented twice") as info:
        run(make_source(tmp_path, issuer, clock).authorization())
    assert "lamina login" in str(info.value)
    assert issuer.presented == ["lma_mcp_rt_first"]
    # a new `lamina login` (a new pair in the file) is refreshed normally
    write_document(tmp_path, oauth_document(access="lma_mcp_at_new", refresh="lma_mcp_rt_new", saved_at=NOW - 3590))
    issuer.current_refresh = "lma_mcp_rt_new"
    run(make_source(tmp_path, issuer, clock).authorization())
    assert issuer.presented == ["lma_mcp_rt_first", "lma_mcp_rt_new"]


def test_a_malformed_refresh_reply_is_a_dead_login(tmp_path: Path) -> None:
    """A 200 without a usable pair: LoginRefreshError, and that refresh token counts as presented."""
    clock, issuer = Clock(NOW), Issuer(malformed=True)
    write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    with pytest.raises(LoginRefreshError, match="held no usable pair"):
        run(make_source(tmp_path, issuer, clock).authorization())
    with pytest.raises(LoginRefreshError, match="never presented twice"):
        run(make_source(tmp_path, issuer, clock).authorization())
    assert issuer.presented == ["lma_mcp_rt_first"]


def test_login_without_refresh_token(tmp_path: Path) -> None:
    """An oauth login with no refresh token is used until it expires; expired, or refused, it is a dead login."""
    clock, issuer = Clock(NOW), Issuer()
    write_document(tmp_path, oauth_document(saved_at=NOW - 3590, refresh=None))
    source = make_source(tmp_path, issuer, clock)
    assert run(source.authorization()) == "Bearer lma_mcp_at_first"  # due, but nothing to refresh with
    with pytest.raises(LoginRefreshError, match="holds no refresh token"):
        run(source.unauthorized("Bearer lma_mcp_at_first"))
    clock.now = NOW + 11
    with pytest.raises(LoginRefreshError, match="has expired and holds no refresh token"):
        run(source.authorization())
    assert issuer.presented == []


def test_unknown_expiry_refreshes_only_after_a_401(tmp_path: Path) -> None:
    """With no expiresAt there is nothing to refresh ahead of; a 401 refreshes once."""
    clock, issuer = Clock(NOW), Issuer()
    write_document(tmp_path, oauth_document(saved_at=NOW, lifetime=None))
    source = make_source(tmp_path, issuer, clock)
    clock.now += 10 * 3600
    old = run(source.authorization())
    assert issuer.presented == []
    assert run(source.unauthorized(old)) is True
    assert issuer.presented == ["lma_mcp_rt_first"]


def test_a_login_removed_mid_batch(tmp_path: Path) -> None:
    """`lamina logout` mid-batch (credentials gone from the file): the next refresh is a dead login."""
    clock, issuer = Clock(NOW), Issuer()
    write_document(tmp_path, oauth_document(saved_at=NOW))
    source = make_source(tmp_path, issuer, clock)
    header = run(source.authorization())
    write_document(tmp_path, {"version": 1, "webhook": {"publicUrl": "https://x", "savedAt": "y"}})
    with pytest.raises(LoginRefreshError, match="is gone \\(it holds no credentials\\)"):
        run(source.unauthorized(header))
    assert issuer.presented == []


def test_a_file_caught_mid_write_is_read_again(tmp_path: Path) -> None:
    """Lamina's CLI rewrites the file in place: a prefix seen at refresh time is read again after a pause (here the
    other writer finishes during it); a file still malformed after the retries is a LoginRefreshError."""
    clock, issuer = Clock(NOW), Issuer()
    path = write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    whole = path.read_bytes()
    pauses: list[float] = []

    async def other_writer_finishes(seconds: float) -> None:
        pauses.append(seconds)
        path.write_bytes(whole)

    source = resolve_credentials(
        env={}, home=tmp_path, transport=issuer.transport(), clock=clock, sleep=other_writer_finishes
    )
    path.write_bytes(whole[: len(whole) // 2])
    run(source.authorization())
    assert (len(pauses), issuer.presented) == (1, ["lma_mcp_rt_first"])

    write_document(tmp_path, oauth_document(saved_at=NOW - 3590, refresh="lma_mcp_rt_x"))
    stuck = make_source(tmp_path, issuer, clock)
    path.write_bytes(b"{")
    with pytest.raises(LoginRefreshError, match="not valid JSON") as info:
        run(stuck.authorization())
    assert str(info.value).endswith("fix it, run `lamina login` again, or set LAMINA_API_KEY")
    assert len(issuer.presented) == 1


def test_a_removed_file_is_a_dead_login(tmp_path: Path) -> None:
    """The stored login deleted mid-batch: the next refresh says the login is gone."""
    clock, issuer = Clock(NOW), Issuer()
    path = write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    source = make_source(tmp_path, issuer, clock)
    path.unlink()
    with pytest.raises(LoginRefreshError, match=r"is gone \(the file was removed\)"):
        run(source.authorization())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; the process test covers a failing write")
def test_unwritable_directory_refuses_before_any_request(tmp_path: Path) -> None:
    """A refreshable login whose file cannot be written is a ConfigError (exit 2) at the first request, and
    nothing is rotated."""
    clock, issuer = Clock(NOW), Issuer()
    path = write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    path.parent.chmod(0o500)
    try:
        with pytest.raises(CredentialsFileError, match="cannot be written"):
            run(make_source(tmp_path, issuer, clock).authorization())
    finally:
        path.parent.chmod(0o700)
    assert issuer.presented == []


# ---------------------------------------------------------------------- secrets


def test_no_secret_in_reprs_status_or_errors(tmp_path: Path) -> None:
    """Sources, stored logins, pairs and statuses never render a token; scrub() masks old and new ones."""
    clock, issuer = Clock(NOW), Issuer()
    write_document(tmp_path, oauth_document(saved_at=NOW - 3590))
    source = make_source(tmp_path, issuer, clock)
    run(source.authorization())
    access, refresh = issuer.issued[0]
    login = read_login_file(login_path(tmp_path)).login
    rendered = " ".join([repr(source), repr(login), repr(source.describe()), *source.describe().lines()])
    for secret in ("lma_mcp_at_first", "lma_mcp_rt_first", access, refresh):
        assert secret not in rendered
        assert source.scrub(f"echo {secret}!") == "echo ***!"


def test_refresh_post_shape(tmp_path: Path) -> None:
    """The refresh is POST {baseUrl}/cli/oauth/token with the grant as JSON and no Authorization header."""
    clock, seen = Clock(NOW), []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "lma_mcp_at_b", "refresh_token": "lma_mcp_rt_b"})

    write_document(tmp_path, oauth_document(saved_at=NOW - 3590, base_url="http://127.0.0.1:1/"))
    source = resolve_credentials(env={}, home=tmp_path, transport=httpx.MockTransport(handler), clock=clock)
    assert run(source.authorization()) == "Bearer lma_mcp_at_b"
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", "http://127.0.0.1:1/cli/oauth/token")
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body == {"grant_type": "refresh_token", "refresh_token": "lma_mcp_rt_first", "client_id": "lamina-cli"}
    # no expires_in in the reply: an hour, as Lamina's CLI assumes
    login = read_login_file(login_path(tmp_path)).login
    assert login is not None
    assert login.lifetime == pytest.approx(3600, abs=0.01)
