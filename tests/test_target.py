"""Where requests go and with which credentials: the environment's key, else the stored login, else an error
naming both ways in; an in-process emulator; never a key in a repr."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from login_helpers import apikey_document, write_document

from lamina_batch.emulator import Emulator
from lamina_batch.errors import CredentialsFileError, MissingApiKeyError
from lamina_batch.target import DEFAULT_BASE_URL, ApiTarget, api_target, make_client, optional_api_target


def apps_via(target: ApiTarget) -> int:
    async def go() -> int:
        async with make_client(target, "runs") as client:
            return len(await client.list_apps())

    return asyncio.run(go())


def test_environment_target_and_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """LAMINA_API_KEY is used first; LAMINA_BASE_URL (trailing slash dropped) overrides the default."""
    monkeypatch.setenv("LAMINA_API_KEY", " lma_secret ")
    monkeypatch.delenv("LAMINA_BASE_URL", raising=False)
    with api_target(False) as target:
        assert target.base_url == DEFAULT_BASE_URL
        assert target.credentials.describe().source == "environment"
        assert asyncio.run(target.credentials.authorization()) == "Bearer lma_secret"
    monkeypatch.setenv("LAMINA_BASE_URL", "http://lamina.test/")
    with api_target(False) as target:
        assert target.base_url == "http://lamina.test"
    assert "lma_secret" not in repr(target)


def test_missing_credentials_name_both_ways_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key and no stored login: MissingApiKeyError naming LAMINA_API_KEY and `lamina login`, before any request."""
    monkeypatch.delenv("LAMINA_API_KEY", raising=False)
    with pytest.raises(MissingApiKeyError, match=r"LAMINA_API_KEY.*`lamina login`"), api_target(False):
        pass


def test_stored_login_is_used_without_the_environment(
    emulator: Emulator, private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no LAMINA_* variable the stored `apikey` login is the credential and its baseUrl the server."""
    monkeypatch.delenv("LAMINA_API_KEY", raising=False)
    monkeypatch.delenv("LAMINA_BASE_URL", raising=False)
    write_document(private_home, apikey_document(emulator.key, emulator.base_url))
    with api_target(False) as target:
        assert target.base_url == emulator.base_url
        assert target.credentials.describe().source == "stored login"
        assert apps_via(target) > 0
    assert emulator.key not in repr(target)


def test_optional_target_is_none_without_usable_credentials(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plan`'s seam: no credentials, or a stored login file that cannot be read, give None instead of an error;
    the same file stops a command that needs credentials with a CredentialsFileError."""
    monkeypatch.delenv("LAMINA_API_KEY", raising=False)
    with optional_api_target(False) as target:
        assert target is None
    write_document(private_home, "{not json")
    with optional_api_target(False) as target:
        assert target is None
    with pytest.raises(CredentialsFileError, match="not valid JSON"), api_target(False):
        pass
    monkeypatch.setenv("LAMINA_API_KEY", "lma_env")
    with optional_api_target(False) as target:
        assert target is not None
        assert target.credentials.describe().source == "environment"


def test_emulator_target_serves_while_the_block_runs() -> None:
    """api_target(True) starts an emulator that answers with its key, and stops it after."""
    with api_target(True) as target:
        assert target.emulator
        assert target.credentials.describe().source == "emulator"
        assert apps_via(target) > 0
