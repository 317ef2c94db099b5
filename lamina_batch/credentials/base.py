"""What the client asks of credentials (`CredentialSource`), what `auth status` shows (`AuthStatus`), and the
static kind: a key that never changes (LAMINA_API_KEY, a stored `apikey` login, the emulator's key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

Source = Literal["emulator", "environment", "stored login"]
BaseUrlFrom = Literal["--emulator", "LAMINA_BASE_URL", "the stored login", "the default"]


def origin_of(base_url: str) -> str:
    """`scheme://host[:port]` of a base URL: no userinfo (it may carry a password), no path."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


class CredentialSource(Protocol):
    """Credentials for one batch, as the client uses them:

    - before each request: `header = await source.authorization()` (the `Authorization` value to send; an OAuth
      login is refreshed first when it is about to expire);
    - on a 401 to that request: `if await source.unauthorized(header):` resend it once with a fresh
      `authorization()`, else the 401 is fatal (AuthError). A second 401 to the resend is fatal. A refresh that
      fails raises LoginRefreshError (an AuthError) from either call;
    - `scrub(text)` before any server-echoed text goes into an error; `describe()` for `auth status`;
      `await aclose()` at the end.
    """

    base_url: str

    async def authorization(self) -> str: ...

    async def unauthorized(self, presented: str) -> bool: ...

    def describe(self) -> AuthStatus: ...

    def scrub(self, text: str) -> str: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class AuthStatus:
    """Where the credentials come from and whether they can be used now; never a key or token."""

    usable: bool
    source: Source | None = None
    kind: Literal["apikey", "oauth"] | None = None
    origin: str | None = None
    base_url_from: BaseUrlFrom | None = None
    file: Path | None = None
    expires_at: datetime | None = None
    seconds_left: float | None = None
    refreshable: bool = False
    refresh_needed: bool = False
    problem: str | None = None

    def lines(self) -> tuple[str, ...]:
        """The text `lamina-batch auth status` prints, one fact a line."""
        if self.source is None:
            return (f"credentials: none usable ({self.problem})",)
        where = {
            "emulator": "the in-process emulator (--emulator)",
            "environment": "the environment (LAMINA_API_KEY)",
            "stored login": f"the stored login in {self.file} (lamina login)",
        }[self.source]
        out = [f"credentials: {where}", f"origin: {self.origin} (base URL from {self.base_url_from})"]
        if self.kind == "oauth":
            out.append(f"kind: oauth ({'refreshable' if self.refreshable else 'no refresh token'})")
            out.append(f"expires: {self._expiry()}")
        else:
            out.append("kind: apikey (does not expire)")
        out.append("status: usable" if self.usable else f"status: not usable ({self.problem})")
        return tuple(out)

    def _expiry(self) -> str:
        if self.expires_at is None or self.seconds_left is None:
            return "unknown (refreshed when the server refuses it)" if self.refreshable else "unknown"
        when = self.expires_at.strftime("%Y-%m-%d %H:%M:%S %Z")
        left = self.seconds_left
        span = f"in {_span(left)}" if left > 0 else f"{_span(-left)} ago"
        need = "a refresh is due" if self.refresh_needed else "no refresh needed"
        return f"{when} ({span}; {need})"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class StaticKeySource:
    """A key that never changes: a 401 to it is final."""

    def __init__(
        self,
        key: str,
        base_url: str,
        *,
        source: Source,
        base_url_from: BaseUrlFrom,
        file: Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._header = f"Bearer {key}"
        self._key = key
        self._source: Source = source
        self._base_url_from: BaseUrlFrom = base_url_from
        self._file = file

    def __repr__(self) -> str:
        return f"StaticKeySource(source={self._source!r}, base_url={origin_of(self.base_url)!r})"

    async def authorization(self) -> str:
        return self._header

    async def unauthorized(self, presented: str) -> bool:
        return False

    def describe(self) -> AuthStatus:
        return AuthStatus(
            usable=True,
            source=self._source,
            kind="apikey",
            origin="emulator" if self._source == "emulator" else origin_of(self.base_url),
            base_url_from=self._base_url_from,
            file=self._file,
        )

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***")

    async def aclose(self) -> None:
        return None
