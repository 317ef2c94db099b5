"""Shared test helpers: polling with deadlines (tests never sleep for synchronisation), and for tests that run
the real `lamina-batch` process against an in-process emulator: pipelines, the environment, and the manifest read
read-only while a batch writes it."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lamina_batch.emulator import Emulator

COLOURS = ["red", "blue", "green", "black", "white", "navy", "beige", "grey"]
POLL = 0.01  # seconds between two looks at a condition


def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Return as soon as `cond()` is true; fail the test if it is still false after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(POLL)


async def wait_for_async(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:  # noqa: ASYNC109
    """`wait_for` inside an event loop: the loop keeps running between two looks."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(POLL)


def write_pipeline(
    folder: Path,
    rows: int,
    *,
    banner: bool = True,
    download: bool = False,
    concurrency: int = 8,
    api: str = "runs",
    poll_interval: str = "1s",
    extra_run: str = "",
) -> Path:
    """A hero (+ banner) pipeline over `rows` inline rows keyed by sku, on either API dialect."""
    lines = ["version: 1", "name: crash", f"api: {api}", "matrix:", "  key: sku", "  rows:"]
    for i in range(rows):
        lines.append(f"    - {{sku: S{i:03d}, name: Item {i}, colour: {COLOURS[i % len(COLOURS)]}}}")
    lines += [
        "steps:",
        "  - id: hero",
        "    app: app_7Hk2",
        "    inputs:",
        '      Prompt: "Studio photo of {{ row.name }} in {{ row.colour }}"',
    ]
    if banner:
        lines += [
            "  - id: banner",
            "    app: app_9Qx1",
            "    needs: [hero]",
            "    inputs:",
            '      Product Image: "{{ steps.hero.output }}"',
            '      Headline: "{{ row.name }}"',
        ]
    if download:
        lines += ["download:", '  path: "out/{{ row.sku }}/{{ step.id }}{{ output.ext }}"']
    lines += [
        "run:",
        f"  concurrency: {concurrency}",
        "  rate_limit: 100/s",
        f"  poll_interval: {poll_interval}",
        extra_run,
    ]
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cli_env(emu: Emulator, **extra: str) -> dict[str, str]:
    """The environment of a CLI process pointed at `emu` (nothing inherited from LAMINA_* or coverage)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "COV_", "GITHUB_STEP"))}
    env.update(LAMINA_BASE_URL=emu.base_url, LAMINA_API_KEY=emu.key, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start_cli(pipeline: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def cli_process(pipeline: Path, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """`start_cli`, and whatever happens in the block, the process does not outlive it (killed and reaped)."""
    proc = start_cli(pipeline, env, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def run_cli(pipeline: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def manifest_path(pipeline: Path) -> Path:
    return pipeline.parent / "pipeline.lamina.sqlite"


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """The manifest opened read-only, as another process sees it (only what is committed)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        yield db
    finally:
        db.close()


def manifest_states(pipeline: Path) -> dict[str, int]:
    with read_only(manifest_path(pipeline)) as db:
        return dict(db.execute("SELECT state, count(*) FROM runs GROUP BY state").fetchall())


@dataclass(frozen=True)
class Row:
    """One run as the manifest has it on disk."""

    identity: str
    step_id: str
    state: str
    remote_id: str | None
    inputs: dict[str, Any]


def manifest_rows(path: Path) -> list[Row]:
    with read_only(path) as db:
        rows = db.execute("SELECT identity, step_id, state, remote_id, inputs_json FROM runs").fetchall()
    return [Row(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


def assert_exactly_once(emu: Emulator, runs: int) -> None:
    assert emu.stats.duplicate_starts() == {}
    assert emu.stats.starts == runs


class StreamLines:
    """A running process's output stream, read on a thread so that a test can wait for a line while it runs."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def finish(self, timeout: float = 30) -> str:
        """Everything, once the process closed the stream (it ended); the stream is closed here too."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream was not closed in time"
        self._stream.close()
        return self.text()
