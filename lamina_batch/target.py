"""Where API requests go: a Lamina emulator started in-process, or the base URL and key of the environment; and
the `LaminaClient` for it, sized for a pipeline's concurrency.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import MissingApiKeyError, Problem

if TYPE_CHECKING:
    from .client import LaminaClient
    from .models import Dialect, Pipeline

__all__ = ["DEFAULT_BASE_URL", "ApiTarget", "api_target", "make_client"]

DEFAULT_BASE_URL = "https://app.uselamina.ai"


@dataclass(frozen=True)
class ApiTarget:
    """A base URL and the key it accepts (never shown: the repr leaves the key out)."""

    base_url: str
    key: str
    emulator: bool = False

    def __repr__(self) -> str:
        return f"ApiTarget(base_url={self.base_url!r}, emulator={self.emulator})"


@contextlib.contextmanager
def api_target(emulator: bool) -> Iterator[ApiTarget]:
    """The in-process emulator's target while the block runs, or the environment's (`LAMINA_API_KEY`,
    `LAMINA_BASE_URL`); MissingApiKeyError when the key is unset, before any request."""
    if emulator:
        from .emulator import Emulator, EmulatorConfig

        # Lamina's real 100/min limit, but short runs: a first try should take seconds, not minutes.
        with Emulator(EmulatorConfig(duration=(1.0, 3.0), seed=0)) as emu:
            yield ApiTarget(emu.base_url, emu.key, emulator=True)
        return
    key = os.environ.get("LAMINA_API_KEY", "").strip()
    if not key:
        raise MissingApiKeyError(
            Problem("LAMINA_API_KEY is not set: export your Lamina API key (lma_...), or add --emulator to try it free")
        )
    yield ApiTarget(os.environ.get("LAMINA_BASE_URL", DEFAULT_BASE_URL).rstrip("/"), key)


def make_client(target: ApiTarget, dialect: Dialect, pipeline: Pipeline | None = None) -> LaminaClient:
    """A client for `target`; with a pipeline, at its rate limit and with connections for its concurrency."""
    from .client import LaminaClient

    if pipeline is None:
        return LaminaClient(target.base_url, target.key, dialect=dialect)
    # every run in flight holds a connection during /wait; leave room for starts and downloads
    connections = max(128, pipeline.run.concurrency + 16)
    return LaminaClient(
        target.base_url,
        target.key,
        dialect=dialect,
        rate=pipeline.run.rate_limit,
        rate_cap=pipeline.run.rate_limit_explicit,
        max_connections=connections,
    )
