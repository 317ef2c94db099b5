"""Shared pytest fixtures: in-process Lamina emulators over real loopback sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lamina_batch.emulator import Emulator, EmulatorConfig

# Fast lifecycles and no rate limit unless a test asks: integration tests must stay quick.
FAST_DEFAULTS: dict[str, Any] = {"rate_limit": None, "duration": (0.05, 0.2), "queued": 0.02, "seed": 1}


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    """Factory: `make_emulator(**EmulatorConfig kwargs)` -> a started Emulator; all are stopped at teardown."""
    started: list[Emulator] = []

    def make(**kwargs: Any) -> Emulator:
        emu = Emulator(EmulatorConfig(**{**FAST_DEFAULTS, **kwargs}))
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    """A started emulator: rate limit off, runs last 0.05-0.2 s, seed 1."""
    return make_emulator()
