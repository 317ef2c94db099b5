"""Credentials: where they come from (`--emulator`, LAMINA_API_KEY, the login Lamina's own CLI keeps in
~/.lamina/config.json), and an OAuth login kept fresh and written back for as long as a batch runs.
The client calls a `CredentialSource` (see base.py); `auth status` shows an `AuthStatus`."""

from lamina_batch.credentials.base import AuthStatus, CredentialSource, StaticKeySource, origin_of
from lamina_batch.credentials.login_file import LoginFile, StoredLogin, config_path, read_login_file
from lamina_batch.credentials.oauth import OAuthSource, refresh_margin
from lamina_batch.credentials.resolve import DEFAULT_BASE_URL, describe_credentials, resolve_credentials
from lamina_batch.credentials.store import LoginStore

__all__ = [
    "DEFAULT_BASE_URL",
    "AuthStatus",
    "CredentialSource",
    "LoginFile",
    "LoginStore",
    "OAuthSource",
    "StaticKeySource",
    "StoredLogin",
    "config_path",
    "describe_credentials",
    "origin_of",
    "read_login_file",
    "refresh_margin",
    "resolve_credentials",
]
