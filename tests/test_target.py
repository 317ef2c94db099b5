"""Where requests go: the environment's base URL and key, or an in-process emulator; the key never in a repr."""

from __future__ import annotations

import asyncio

import pytest

from lamina_batch.errors import MissingApiKeyError
from lamina_batch.target import DEFAULT_BASE_URL, ApiTarget, api_target, make_client


def test_environment_target_and_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """LAMINA_API_KEY is required; LAMINA_BASE_URL (trailing slash dropped) overrides the default."""
    monkeypatch.setenv("LAMINA_API_KEY", " lma_secret ")
    monkeypatch.delenv("LAMINA_BASE_URL", raising=False)
    with api_target(False) as target:
        assert target == ApiTarget(DEFAULT_BASE_URL, "lma_secret")
    monkeypatch.setenv("LAMINA_BASE_URL", "http://lamina.test/")
    with api_target(False) as target:
        assert target.base_url == "http://lamina.test"
    assert "lma_secret" not in repr(target)


def test_missing_key_names_the_variable_and_the_free_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key: MissingApiKeyError naming LAMINA_API_KEY and --emulator, before any request."""
    monkeypatch.delenv("LAMINA_API_KEY", raising=False)
    with pytest.raises(MissingApiKeyError, match=r"LAMINA_API_KEY.*--emulator"), api_target(False):
        pass


def test_emulator_target_serves_while_the_block_runs() -> None:
    """api_target(True) starts an emulator that answers with its key, and stops it after."""
    with api_target(True) as target:
        assert target.emulator

        async def apps() -> int:
            async with make_client(target, "runs") as client:
                return len(await client.list_apps())

        assert asyncio.run(apps()) > 0
