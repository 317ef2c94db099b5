"""Reading the login Lamina's own CLI keeps in `~/.lamina/config.json` (lamina-api.md): parse, validate, and
build the document with a rotated OAuth pair in it, keeping every other field and section as it was."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lamina_batch.errors import CredentialsFileError, Problem

LoginKind = Literal["apikey", "oauth"]
FIX_HINT = "fix or remove it, run `lamina login` again, or set LAMINA_API_KEY (which wins without reading it)"
_REQUIRED = ("kind", "apiKey", "baseUrl", "savedAt")
_STRINGS = ("kind", "apiKey", "baseUrl", "savedAt", "refreshToken", "expiresAt", "clientId", "scope")


def config_path(home: Path) -> Path:
    """Where Lamina's CLI and SDK keep the login for a home directory."""
    return home / ".lamina" / "config.json"


def parse_time(value: str | None) -> datetime | None:
    """An ISO-8601 instant (`2026-12-01T10:00:00.000Z`, as JavaScript writes it); naive means UTC; None if not."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def format_time(moment: datetime) -> str:
    """The form Lamina's CLI writes (JavaScript's toISOString): UTC, milliseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def usable_token(value: str) -> bool:
    """A key or token that can go into a header as it is (ASCII, printable, no spaces)."""
    return bool(value) and value.isascii() and value.isprintable() and not any(c.isspace() for c in value)


def http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


@dataclass(frozen=True)
class StoredLogin:
    """A usable `credentials` section. `access` is the `apiKey` field: a workspace key or an OAuth access token.
    The secrets stay out of repr."""

    kind: LoginKind
    access: str = field(repr=False)
    base_url: str
    saved_at: datetime | None
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    client_id: str | None = None
    scope: str | None = None

    @property
    def refreshable(self) -> bool:
        return self.kind == "oauth" and bool(self.refresh_token) and bool(self.client_id)

    @property
    def lifetime(self) -> float | None:
        """Seconds from `savedAt` to `expiresAt` (how long such a token lives), when both are known."""
        if self.expires_at is None or self.saved_at is None:
            return None
        span = (self.expires_at - self.saved_at).total_seconds()
        return span if span > 0 else None


@dataclass(frozen=True)
class LoginFile:
    """The file as read: `document` None when it does not exist; `login` None when it holds no usable login,
    with `ignored` saying why when the file is there."""

    path: Path
    document: dict[str, Any] | None = field(repr=False)
    login: StoredLogin | None
    ignored: str | None = None
    size: int = 0


def read_login_file(path: Path) -> LoginFile:
    """Read and validate the stored login. A missing file is no login; an unreadable or malformed one is a
    CredentialsFileError naming the file and what is wrong (never its contents)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return LoginFile(path, None, None)
    except OSError as exc:
        raise malformed(path, f"cannot read the stored Lamina login ({exc.strerror or type(exc).__name__})") from None
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise malformed(path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise malformed(path, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    login, ignored = parse_document(document, path)
    return LoginFile(path, document, login, ignored, len(raw))


def malformed(path: Path, message: str, *, line: int | None = None, where: str | None = None) -> CredentialsFileError:
    return CredentialsFileError(Problem(message, file=str(path), line=line, path=where, hint=FIX_HINT))


def parse_document(document: Any, path: Path) -> tuple[StoredLogin | None, str | None]:
    """(login, None), or (None, why the file gives no login). Missing fields mean no login, as in Lamina's SDK;
    a field of the wrong type is malformed."""
    if not isinstance(document, dict):
        raise malformed(path, "the top level must be a JSON object")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int | float) or version != 1:
        shown = "no version" if version is None else f"version {_short(version)}"
        return None, f"it has {shown}, and lamina-batch reads version 1"
    creds = document.get("credentials")
    if creds is None:
        return None, "it holds no credentials"
    if not isinstance(creds, dict):
        raise malformed(path, "must be a JSON object", where="credentials")
    for name in _STRINGS:
        if creds.get(name) is not None and not isinstance(creds[name], str):
            raise malformed(path, "must be a string", where=f"credentials.{name}")
    missing = [name for name in _REQUIRED if not creds.get(name)]
    if missing:
        return None, f"its credentials lack {', '.join(missing)}"
    kind = creds["kind"]
    if kind not in ("apikey", "oauth"):
        return None, f"its credentials are of kind {_short(kind)}, not apikey or oauth"
    if not usable_token(creds["apiKey"]):
        raise malformed(path, "not a usable key or token (spaces or non-ASCII characters)", where="credentials.apiKey")
    if creds.get("refreshToken") and not usable_token(creds["refreshToken"]):
        raise malformed(path, "not a usable token (spaces or non-ASCII characters)", where="credentials.refreshToken")
    if not http_url(creds["baseUrl"]):
        raise malformed(path, "must be an http(s) URL", where="credentials.baseUrl")
    login = StoredLogin(
        kind=kind,
        access=creds["apiKey"],
        base_url=creds["baseUrl"].rstrip("/"),
        saved_at=parse_time(creds["savedAt"]),
        refresh_token=creds.get("refreshToken") or None,
        expires_at=parse_time(creds.get("expiresAt")),
        client_id=creds.get("clientId") or None,
        scope=creds.get("scope"),
    )
    return login, None


def with_pair(
    document: dict[str, Any],
    *,
    access: str,
    refresh: str,
    expires_at: datetime,
    saved_at: datetime,
    scope: str | None,
) -> dict[str, Any]:
    """`document` with a rotated pair in its credentials; every other field and section kept, in order."""
    creds = dict(document["credentials"])
    creds.update(apiKey=access, refreshToken=refresh, expiresAt=format_time(expires_at), savedAt=format_time(saved_at))
    if scope:
        creds["scope"] = scope
    return {**document, "credentials": creds}


def render(document: dict[str, Any]) -> bytes:
    """The file's bytes, laid out as Lamina's SDK writes them (two-space indent, trailing newline)."""
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 24 else text[:21] + "..."
