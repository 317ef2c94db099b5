"""An OAuth login kept fresh for as long as a batch runs: refreshed before it expires (a margin that scales with
the token's lifetime) and once after a 401, one refresh at a time in the process (asyncio) and across processes
(the store's lock), each rotated pair written back before it is used, a refresh token never presented twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from lamina_batch.crash import crashpoint
from lamina_batch.credentials.base import AuthStatus, BaseUrlFrom, origin_of
from lamina_batch.credentials.login_file import LoginFile, StoredLogin, usable_token, with_pair
from lamina_batch.credentials.store import LockedStore, LoginStore, Note, fingerprint
from lamina_batch.errors import ConfigError, CredentialsFileError, LoginRefreshError

MAX_MARGIN = 60.0  # Lamina's CLI refreshes within 60 s of expiry
MARGIN_SHARE = 0.25  # ...but a token living 5 s is refreshed after 3.75 s, not before every request
DEFAULT_LIFETIME = 3600.0  # lamina-api.md: "about an hour", when neither the file nor the reply says
REFRESH_PATH = "/cli/oauth/token"
CONNECT_RETRY_DELAYS = (0.5, 1.0)  # a refresh that never left may be sent again; one that left never is
TIMEOUTS = {"connect": 10.0, "read": 30.0, "write": 30.0, "pool": 10.0}
REREAD_DELAYS = (0.05, 0.1, 0.2)
FILE_ADVICE = "fix it, run `lamina login` again, or set LAMINA_API_KEY"
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def refresh_margin(lifetime: float | None) -> float:
    """How long before expiry a token is refreshed: a quarter of its lifetime, at most 60 s."""
    return min(MAX_MARGIN, MARGIN_SHARE * (lifetime if lifetime is not None else DEFAULT_LIFETIME))


@dataclass(frozen=True)
class Token:
    """The pair in use: `expires_at` in epoch seconds (None: unknown, so only a 401 leads to a refresh)."""

    access: str = field(repr=False)
    refresh: str | None = field(repr=False)
    client_id: str | None
    expires_at: float | None
    lifetime: float | None

    @classmethod
    def of(cls, login: StoredLogin) -> Token:
        expires = login.expires_at.timestamp() if login.expires_at is not None else None
        refresh = login.refresh_token if login.refreshable else None
        return cls(login.access, refresh, login.client_id, expires, login.lifetime)

    def due(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at - refresh_margin(self.lifetime)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True)
class Pair:
    """What the refresh grant returned."""

    access: str = field(repr=False)
    refresh: str = field(repr=False)
    expires_in: float
    scope: str | None


class OAuthSource:
    """A stored `oauth` login (see base.CredentialSource for how the client calls it).

    Refreshes go to the stored login's own `baseUrl` (the server that issued it, where Lamina's CLI refreshes it
    too), even when LAMINA_BASE_URL points the API elsewhere. `transport` carries them (default: a connection of
    their own through the project's transport); `clock` is wall time (expiry is absolute).
    """

    def __init__(
        self,
        store: LoginStore,
        login: StoredLogin,
        base_url: str,
        *,
        base_url_from: BaseUrlFrom,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.store = store
        self.refreshes = 0  # pairs this process obtained from the server
        self.adopted = 0  # pairs another process (or login) had already written, taken from the file
        self._token = Token.of(login)
        self._base_url_from: BaseUrlFrom = base_url_from
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._secrets: deque[str] = deque(maxlen=64)
        self._remember(self._token)
        self._checked = False
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OAuthSource(file={str(self.store.path)!r}, base_url={origin_of(self.base_url)!r})"

    # ------------------------------------------------------------------ what the client calls

    async def authorization(self) -> str:
        """The header value for the next request, refreshed first when the token is about to expire."""
        if not self._checked:
            if self._token.refresh is not None:
                self.store.check_writable()  # exit 2 before any start, not a lost login an hour in
            self._checked = True
        token, now = self._token, self._clock()
        if token.due(now):
            if token.refresh is not None:
                await self._renew(token.access)
            elif token.expired(now):
                raise LoginRefreshError(f"the Lamina login in {self.store.path} has expired and holds no refresh token")
        return self._header()

    async def unauthorized(self, presented: str) -> bool:
        """After a 401 to `presented`: make sure a newer token is in use (refreshing once if no other request
        already has), so the caller resends once. Raises LoginRefreshError when that cannot be done."""
        if presented != self._header():
            return True  # another request already replaced the token this one was sent with
        if self._token.refresh is None:
            raise LoginRefreshError(
                f"the server refused the Lamina login in {self.store.path}, which holds no refresh token", status=401
            )
        await self._renew(self._token.access, refused=True)
        return True

    def describe(self) -> AuthStatus:
        token, now = self._token, self._clock()
        problem = None
        if token.refresh is not None:
            problem = self.store.writable_problem()
        elif token.expired(now):
            problem = "expired, and the login holds no refresh token: run `lamina login` again"
        expires = datetime.fromtimestamp(token.expires_at, UTC) if token.expires_at is not None else None
        return AuthStatus(
            usable=problem is None,
            source="stored login",
            kind="oauth",
            origin=origin_of(self.base_url),
            base_url_from=self._base_url_from,
            file=self.store.path,
            expires_at=expires,
            seconds_left=None if token.expires_at is None else token.expires_at - now,
            refreshable=token.refresh is not None,
            refresh_needed=token.due(now),
            problem=problem,
        )

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def aclose(self) -> None:
        return None  # nothing is held between refreshes

    # ------------------------------------------------------------------ refreshing

    def _header(self) -> str:
        return f"Bearer {self._token.access}"

    def _remember(self, token: Token) -> None:
        self._secrets.append(token.access)
        if token.refresh is not None:
            self._secrets.append(token.refresh)

    def _adopt(self, token: Token) -> None:
        self._token = token
        self._remember(token)

    def _in_process_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _renew(self, seen: str, *, refused: bool = False) -> None:
        """Replace the token `seen`: by one another process already wrote, else by refreshing (once)."""
        async with self._in_process_lock():
            if self._token.access != seen:
                return  # refreshed by another request of ours while this one waited
            async with self.store.locked() as locked:
                current = await self._reread(locked)
                login = current.login
                if login is None:
                    gone = current.ignored or "the file was removed"
                    raise LoginRefreshError(f"the Lamina login in {self.store.path} is gone ({gone})")
                candidate = Token.of(login)
                if candidate.access != seen and (not candidate.due(self._clock()) or candidate.refresh is None):
                    self._adopt(candidate)
                    self.adopted += 1
                    return
                if candidate.refresh is None:
                    why = "was refused" if refused else "is about to expire"
                    raise LoginRefreshError(f"the Lamina login in {self.store.path} {why} and holds no refresh token")
                if locked.presented_before(candidate.refresh):
                    raise LoginRefreshError(
                        f"the refresh token in {self.store.path} was already presented by a refresh whose new pair "
                        "was never stored (refused, or its reply lost), and is never presented twice"
                    )
                self._adopt(await self._refresh(locked, current, login))
                self.refreshes += 1

    async def _reread(self, locked: LockedStore) -> LoginFile:
        # Lamina's own CLI rewrites the file in place (not atomically): a read that lands inside its write sees a
        # prefix. Such a file is read again a few times before it counts as malformed.
        for delay in REREAD_DELAYS:
            try:
                return locked.read()
            except CredentialsFileError:
                await self._sleep(delay)
        try:
            return locked.read()
        except CredentialsFileError as exc:
            problem = exc.problems[0]
            raise LoginRefreshError(f"{self.store.path}: {problem.message}", advice=FILE_ADVICE) from None

    async def _refresh(self, locked: LockedStore, current: LoginFile, login: StoredLogin) -> Token:
        assert current.document is not None
        assert login.refresh_token is not None
        self._remember(Token.of(login))  # so a refusal that echoes the pair it was sent is scrubbed too
        pending = locked.begin_write(current.size + 1024)  # if this cannot be written, nothing is rotated
        try:
            locked.write_note(Note(fingerprint(login.refresh_token), pending.path.name))
            try:
                pair = await self._post(login)
            except _NotSentError as exc:
                locked.write_note(None)
                raise LoginRefreshError(
                    f"could not reach {origin_of(login.base_url)} to refresh the Lamina login in {self.store.path} "
                    f"({exc.reason})"
                ) from None
        except BaseException:
            pending.discard()
            raise
        crashpoint("refresh-received")
        now = self._clock()
        document = with_pair(
            current.document,
            access=pair.access,
            refresh=pair.refresh,
            expires_at=datetime.fromtimestamp(now + pair.expires_in, UTC),
            saved_at=datetime.fromtimestamp(now, UTC),
            scope=pair.scope,
        )
        pending.commit(document)  # written before it is used: only a kill inside this write can lose the login
        crashpoint("refresh-written")
        return Token(pair.access, pair.refresh, login.client_id, now + pair.expires_in, pair.expires_in)

    async def _post(self, login: StoredLogin) -> Pair:
        body = json.dumps(
            {"grant_type": "refresh_token", "refresh_token": login.refresh_token, "client_id": login.client_id}
        ).encode("utf-8")
        request = httpx.Request(
            "POST",
            login.base_url + REFRESH_PATH,
            content=body,
            headers={"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "lamina-batch"},
            extensions={"timeout": TIMEOUTS},
        )
        # A refresh is rare (once per token lifetime): without a shared transport it gets a connection of its own,
        # closed right after, so nothing outlives the event loop it was made on.
        own = self._transport is None
        transport = self._transport or _own_transport(login.base_url)
        try:
            for delay in (*CONNECT_RETRY_DELAYS, None):
                try:
                    response = await transport.handle_async_request(request)
                    try:
                        content = await response.aread()
                    finally:
                        await response.aclose()
                    return self._pair(response.status_code, content, login)
                except _NOT_SENT as exc:
                    if delay is None:
                        raise _NotSentError(type(exc).__name__) from None
                    await self._sleep(delay)
                except httpx.HTTPError as exc:
                    raise LoginRefreshError(
                        f"the refresh of the Lamina login in {self.store.path} was sent but no reply came "
                        f"({type(exc).__name__}); its refresh token is never presented twice"
                    ) from None
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if own:
                await transport.aclose()

    def _pair(self, status: int, content: bytes, login: StoredLogin) -> Pair:
        try:
            body: Any = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if not 200 <= status < 300:
            code = self._text(body.get("error"))
            detail = self._text(body.get("error_description"))
            raise LoginRefreshError(
                f"the server refused to refresh the Lamina login in {self.store.path}"
                + (f" ({detail})" if detail else ""),
                status=status,
                code=code or None,
            )
        access, refresh = body.get("access_token"), body.get("refresh_token")
        expires_in = body.get("expires_in", DEFAULT_LIFETIME)
        if not (_token_text(access) and _token_text(refresh)):
            raise LoginRefreshError(f"the refresh reply for the Lamina login in {self.store.path} held no usable pair")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
            expires_in = DEFAULT_LIFETIME
        scope = body.get("scope")
        return Pair(access, refresh, float(expires_in), scope if isinstance(scope, str) else login.scope)

    def _text(self, value: Any) -> str:
        if not isinstance(value, str):
            return ""
        return self.scrub(" ".join(value.split()))[:160]


def _own_transport(issuer: str) -> httpx.AsyncBaseTransport:
    from lamina_batch.transport import default_transport  # the project's proxy rules (loopback never proxied)

    try:
        return default_transport(issuer, 1)
    except ConfigError as exc:
        raise LoginRefreshError(str(exc).splitlines()[0], advice="fix the proxy settings") from None


def _token_text(value: Any) -> bool:
    return isinstance(value, str) and usable_token(value)


class _NotSentError(Exception):
    """The refresh request never left (connect failure): its refresh token was not presented."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
