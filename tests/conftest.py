"""Shared pytest fixtures: in-process Lamina emulators over real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina_batch.emulator import Emulator, EmulatorConfig

# Fast lifecycles and no rate limit unless a test asks: integration tests must stay quick.
FAST_DEFAULTS: dict[str, Any] = {"rate_limit": None, "duration": (0.05, 0.2), "queued": 0.02, "seed": 1}


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and every process it starts) gets a HOME of its own: a stored Lamina login of whoever runs the
    tests (~/.lamina/config.json) is never read, and a test that writes one writes it here."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home


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


class HostileServer:
    """A loopback HTTP server that misbehaves on purpose, for one asyncio test: after reading a request head it
    answers 200 and then, by `mode`, sends an endless chunked body ("endless": chunks of 64 KiB, at most
    `max_bytes` in all, then it hangs without ending the body) or trickles a JSON body one byte every `gap`
    seconds ("drip"). `sent` counts body bytes written; `requests` counts request heads read."""

    def __init__(self, mode: str, *, max_bytes: int = 64 * 1024 * 1024, gap: float = 0.2) -> None:
        self.mode = mode
        self.max_bytes = max_bytes
        self.gap = gap
        self.sent = 0
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.mode == "endless":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
                while self.sent < self.max_bytes:
                    writer.write(chunk)
                    self.sent += 0x10000
                    await writer.drain()
                await reader.read()  # hang, the body unfinished, until the client goes
            else:
                body = b'{"data": {"runId": "run_1", "status": "queued"}}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                for i in range(len(body)):
                    writer.write(body[i : i + 1])
                    self.sent += 1
                    await writer.drain()
                    await asyncio.sleep(self.gap)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
