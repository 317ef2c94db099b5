"""Where the credentials and the base URL come from, first found wins (DESIGN §3 and the §8 ruling):
`--emulator`; `LAMINA_API_KEY`; the stored login. Base URL: `LAMINA_BASE_URL`; the stored login's `baseUrl`
(only when the stored login is the credential); the default."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import httpx

from lamina_batch.credentials.base import AuthStatus, BaseUrlFrom, CredentialSource, StaticKeySource
from lamina_batch.credentials.login_file import config_path, http_url, read_login_file, usable_token
from lamina_batch.credentials.oauth import OAuthSource
from lamina_batch.credentials.store import LoginStore
from lamina_batch.errors import ConfigError, MissingApiKeyError, Problem

DEFAULT_BASE_URL = "https://app.uselamina.ai"
WAYS_IN = "set LAMINA_API_KEY=lma_... (from your Lamina settings) or run `lamina login`"


def home_of(env: Mapping[str, str], home: Path | None = None) -> Path:
    """The home directory whose `.lamina/config.json` is read: `home`, else `HOME` in `env`, else the user's."""
    if home is not None:
        return home
    value = env.get("HOME", "")
    return Path(value) if value else Path.home()


def resolve_credentials(
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    emulator: tuple[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> CredentialSource:
    """The credentials every command that talks to the API uses. `emulator` is (base_url, key) of `--emulator`;
    `transport` carries OAuth refreshes (tests: httpx.MockTransport or an emulator). Raises MissingApiKeyError
    (none found: one line naming both ways in) or a ConfigError naming the file or variable at fault."""
    if emulator is not None:
        base_url, key = emulator
        return StaticKeySource(key, base_url, source="emulator", base_url_from="--emulator")
    source = os.environ if env is None else env
    key = source.get("LAMINA_API_KEY", "").strip()
    env_base = source.get("LAMINA_BASE_URL", "").strip()
    if key:
        if not usable_token(key):
            raise MissingApiKeyError(
                Problem("LAMINA_API_KEY is malformed", hint="set it to the lma_... key, without spaces")
            )
        base_url, frm = _base_url(env_base, DEFAULT_BASE_URL, "the default")
        return StaticKeySource(key, base_url, source="environment", base_url_from=frm)
    path = config_path(home_of(source, home))
    stored = read_login_file(path)
    login = stored.login
    if login is None:
        why = f" ({path}: {stored.ignored})" if stored.ignored else ""
        raise MissingApiKeyError(Problem(f"no Lamina credentials{why}: {WAYS_IN}", hint="or use --emulator"))
    base_url, frm = _base_url(env_base, login.base_url, "the stored login")
    if login.kind == "apikey":
        return StaticKeySource(login.access, base_url, source="stored login", base_url_from=frm, file=path)
    store = LoginStore(path, sleep=sleep)
    return OAuthSource(store, login, base_url, base_url_from=frm, transport=transport, clock=clock, sleep=sleep)


def describe_credentials(
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    emulator: tuple[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> AuthStatus:
    """What `lamina-batch auth status` reports (exit 0 when `.usable`, else 2); reads, never refreshes."""
    try:
        return resolve_credentials(env=env, home=home, emulator=emulator, clock=clock).describe()
    except ConfigError as exc:
        return AuthStatus(usable=False, problem=str(exc).splitlines()[0])


def _base_url(env_base: str, fallback: str, fallback_from: BaseUrlFrom) -> tuple[str, BaseUrlFrom]:
    if not env_base:
        return fallback.rstrip("/"), fallback_from
    if not http_url(env_base):
        # never echo the value: it may carry a password in its userinfo
        raise ConfigError(Problem("LAMINA_BASE_URL must be an http(s) URL", hint=DEFAULT_BASE_URL))
    return env_base.rstrip("/"), "LAMINA_BASE_URL"
