"""Completion and downloads: outputs written and recorded, re-verified and refetched on resume, failures kept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from executor_fakes import FakeClient, FakeClock, make_executor, open_manifest, rows, write_pipeline

from lamina_batch.downloads import Downloader
from lamina_batch.execute.complete import remote_duration
from lamina_batch.executor import RunResult
from lamina_batch.manifest import Manifest
from lamina_batch.models import RemoteRun, RunState


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manifest(tmp_path: Path, clock: FakeClock) -> Iterator[Manifest]:
    m = open_manifest(tmp_path, clock)
    yield m
    m.close()


def _png_transport(calls: list[str]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(
            200, content=b"\x89PNG fake " + request.url.path.encode(), headers={"content-type": "image/png"}
        )

    return httpx.MockTransport(handler)


def test_downloads_written_recorded_and_refetched_on_resume(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """Completed outputs are downloaded and recorded; a deleted file is fetched again on resume."""
    client = FakeClient(clock)
    pipeline = write_pipeline(tmp_path, rows(2), download=True)
    calls: list[str] = []

    async def run_once() -> RunResult:
        async with httpx.AsyncClient(transport=_png_transport(calls)) as http:
            dl = Downloader(tmp_path, client=http, sleep=clock.sleep)
            executor = make_executor(pipeline, manifest, client, clock, downloader=dl)
            return await executor.run()

    result = asyncio.run(run_once())
    assert result.download_failures == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert files == ["out/S1/hero.png", "out/S2/hero.png"]
    assert all(len(r.downloads) == 1 for r in manifest.iter_runs())
    (tmp_path / "out/S1/hero.png").unlink()
    calls.clear()
    result = asyncio.run(run_once())
    assert len(calls) == 1
    assert (tmp_path / "out/S1/hero.png").exists()
    assert client.count("start") == 2


def test_download_failure_keeps_run_completed(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A download that fails keeps the run completed, records the error and counts it."""
    client = FakeClient(clock)
    pipeline = write_pipeline(tmp_path, rows(1), download=True)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    async def run_once() -> RunResult:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            dl = Downloader(tmp_path, client=http, sleep=clock.sleep)
            executor = make_executor(pipeline, manifest, client, clock, downloader=dl)
            return await executor.run()

    result = asyncio.run(run_once())
    assert result.download_failures == 1
    (rec,) = manifest.iter_runs()
    assert rec.state is RunState.COMPLETED
    assert "download" in (rec.error or "")


def test_remote_duration_from_the_api_timestamps() -> None:
    """A run's duration is completedAt - startedAt (createdAt without it); None when missing or reversed."""
    t0, t2, t12 = "2024-05-01T10:00:00Z", "2024-05-01T10:00:02Z", "2024-05-01T10:00:12.5Z"
    assert remote_duration(RemoteRun("r", "completed", created_at=t0, completed_at=t12)) == 12.5
    assert remote_duration(RemoteRun("r", "completed", created_at=t0, started_at=t2, completed_at=t12)) == 10.5
    assert remote_duration(RemoteRun("r", "completed", started_at=t12)) is None
    assert remote_duration(RemoteRun("r", "completed", started_at=t12, completed_at=t0)) is None
