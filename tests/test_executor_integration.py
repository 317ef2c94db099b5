"""The executor end to end against the emulator over real loopback HTTP, with the real client and manifest."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import wait_for_async

from lamina_batch.client import LaminaClient
from lamina_batch.emulator import Emulator, Faults
from lamina_batch.executor import ExecOptions, Executor, RunResult, StopReason
from lamina_batch.manifest import Manifest
from lamina_batch.models import FailureLimit, Pipeline, Rate, RunState
from lamina_batch.spec import load_pipeline

HERO = """  - id: hero
    app: app_7Hk2
    inputs: {Prompt: "Studio photo of {{ row.name }}"}
"""
BANNER = """  - id: banner
    app: app_9Qx1
    needs: [hero]
    inputs: {Product Image: "{{ steps.hero.output }}", Headline: "{{ row.name }}"}
"""
COPY = """  - id: copy
    app: app_5Tx4
    needs: [banner]
    inputs: {Product Name: "{{ row.name }} {{ steps.banner.output }}"}
"""


def write(tmp_path: Path, names: list[str], steps: str = HERO, *, api: str = "runs", **run: Any) -> Pipeline:
    lines = ["version: 1", "name: it", f"api: {api}", "matrix:", "  key: sku", "  rows:"]
    lines += [f'    - {{sku: "S{i}", name: "{n}"}}' for i, n in enumerate(names, 1)]
    text = "\n".join(lines) + "\nsteps:\n" + steps
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    pipeline = load_pipeline(path)
    return dataclasses.replace(pipeline, run=dataclasses.replace(pipeline.run, **run))


def execute(
    pipeline: Pipeline,
    emu: Emulator,
    tmp_path: Path,
    options: ExecOptions | None = None,
    during: Callable[[], Any] | None = None,
) -> RunResult:
    async def go() -> RunResult:
        client = LaminaClient(emu.base_url, emu.key, pipeline.api, rate=Rate(1000, 1))
        async with client:
            with Manifest.open(tmp_path / "it.sqlite", pipeline_name="it", writer=True) as manifest:
                executor = Executor(pipeline, manifest, client, options or ExecOptions())
                task = asyncio.create_task(executor.run())
                if during is not None:
                    await during()
                return await task

    return asyncio.run(go())


def records(tmp_path: Path) -> list[Any]:
    with Manifest.open(tmp_path / "it.sqlite", pipeline_name="it", writer=False) as m:
        return list(m.iter_runs())


def names(n: int) -> list[str]:
    return [f"Mug {i}" for i in range(1, n + 1)]


def test_two_requests_per_run_on_the_runs_api(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """A batch whose runs end within the /wait window costs exactly start + wait per run."""
    emu = make_emulator()
    result = execute(write(tmp_path, names(6)), emu, tmp_path)
    assert result.counts == {RunState.COMPLETED: 6}
    api = emu.stats.api_requests()
    assert len(api) == 12
    assert Counter(r.method for r in api) == {"POST": 6, "GET": 6}


def test_three_step_chain(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """hero -> banner -> copy all complete per row, each downstream fed its upstream's output URL."""
    emu = make_emulator()
    result = execute(write(tmp_path, names(3), HERO + BANNER + COPY), emu, tmp_path)
    assert result.counts == {RunState.COMPLETED: 9}
    recs = records(tmp_path)
    hero_urls = {r.outputs[0].value for r in recs if r.step_id == "hero"}
    banner_images = {r.inputs["Product Image"] for r in recs if r.step_id == "banner"}
    assert banner_images == hero_urls
    assert emu.stats.duplicate_starts() == {}


def test_fail_marker_with_retries(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """Runs that fail remotely are retried `retries` times, then recorded failed with the server's message."""
    emu = make_emulator()
    pipeline = write(tmp_path, ["Mug 1", "Mug [[fail]]", "Mug 3"], retries=1)
    result = execute(pipeline, emu, tmp_path)
    assert result.counts == {RunState.COMPLETED: 2, RunState.FAILED: 1}
    assert emu.stats.starts == 4
    failed = [r for r in records(tmp_path) if r.state is RunState.FAILED]
    assert failed[0].attempts == 2
    assert "[[fail]]" in (failed[0].error or "")


def test_lost_start_replies_cause_no_duplicates(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """With 10% of start replies lost (and some 500s after creation) nothing is started twice."""
    emu = make_emulator(faults=Faults(p_lost_start_reply=0.1, p_start_500_after_create=0.05), seed=7)
    result = execute(write(tmp_path, names(30), concurrency=6), emu, tmp_path)
    assert emu.stats.duplicate_starts() == {}
    assert result.counts == {RunState.COMPLETED: 30}
    assert emu.stats.starts == 30


def test_error_storms_fail_no_run(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """429/500/503 storms and dropped connections delay runs but never fail or duplicate one."""
    emu = make_emulator(faults=Faults(p429=0.05, p500=0.1, p503=0.1, p_drop=0.05), seed=3)
    result = execute(write(tmp_path, names(10), HERO + BANNER), emu, tmp_path)
    assert result.counts == {RunState.COMPLETED: 20}
    assert sum(1 for r in emu.stats.api_requests() if r.status >= 429 or r.dropped) > 0
    assert emu.stats.duplicate_starts() == {}


def test_outage_mid_batch_costs_no_run(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """503 for everything mid-batch until the executor met it 4 times: every run still completes, none twice."""
    emu = make_emulator(duration=(0.5, 1.0))
    refused: list[int] = []

    async def outage() -> None:
        await wait_for_async(lambda: emu.stats.starts >= 4, 20, "4 starts")
        logged = len(emu.stats.requests)
        emu.set_outage(True)

        def met() -> int:
            return sum(1 for r in emu.stats.requests[logged:] if r.status == 503)

        await wait_for_async(lambda: met() >= 4, 30, "4 requests refused")
        emu.set_outage(False)
        refused.append(met())

    result = execute(write(tmp_path, names(12), concurrency=4), emu, tmp_path, during=outage)
    assert refused[0] >= 4  # the outage happened, and the executor ran into it
    assert result.counts == {RunState.COMPLETED: 12}
    assert emu.stats.duplicate_starts() == {}


def test_concurrency_never_exceeded(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """The emulator never sees more than `concurrency` runs active at once."""
    emu = make_emulator(duration=(0.1, 0.3))
    result = execute(write(tmp_path, names(16), HERO + BANNER, concurrency=3), emu, tmp_path)
    assert result.counts == {RunState.COMPLETED: 32}
    assert 2 <= emu.stats.peak_active <= 3


def test_executions_dialect_end_to_end(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """The executions API path set runs a chain to completion by polling."""
    emu = make_emulator()
    pipeline = write(tmp_path, names(3), HERO + BANNER, api="executions", poll_interval=0.2)
    result = execute(pipeline, emu, tmp_path)
    assert result.counts == {RunState.COMPLETED: 6}
    paths = {r.path for r in emu.stats.api_requests()}
    assert all(p.startswith("/api/") for p in paths)


def test_max_starts_guard(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """max_starts stops the batch after that many starts (resumable), then a rerun finishes it."""
    emu = make_emulator()
    pipeline = write(tmp_path, names(5), max_starts=2, concurrency=2)
    result = execute(pipeline, emu, tmp_path)
    assert result.stop_reason is StopReason.MAX_STARTS
    assert emu.stats.starts == 2
    result = execute(
        dataclasses.replace(pipeline, run=dataclasses.replace(pipeline.run, max_starts=None)), emu, tmp_path
    )
    assert result.counts == {RunState.COMPLETED: 5}
    assert emu.stats.starts == 5


def test_max_failures_guard(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """Past max_failures no new run is started and the stop reason is MAX_FAILURES."""
    emu = make_emulator()
    rows = [f"Mug {i} [[fail]]" for i in range(8)]
    pipeline = write(tmp_path, rows, concurrency=1, max_failures=FailureLimit(fraction=None, count=2))
    result = execute(pipeline, emu, tmp_path)
    assert result.stop_reason is StopReason.MAX_FAILURES
    assert emu.stats.starts == 3
    assert result.not_started == 5


def test_changed_row_reruns_only_that_row_and_downstream(
    make_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    """Editing one row reruns exactly that row's runs (and its downstream), reusing every other run."""
    emu = make_emulator()
    execute(write(tmp_path, names(4), HERO + BANNER), emu, tmp_path)
    assert emu.stats.starts == 8
    changed = names(4)
    changed[1] = "Teapot"
    result = execute(write(tmp_path, changed, HERO + BANNER), emu, tmp_path)
    assert emu.stats.starts == 10
    assert result.starts == 2
    assert result.counts == {RunState.COMPLETED: 8}


def test_sigint_mid_batch_then_resume_pays_nothing_twice(
    make_emulator: Callable[..., Emulator], tmp_path: Path
) -> None:
    """A signal stop returns within seconds leaving runs recorded; the resume adopts them, no duplicates."""
    emu = make_emulator(duration=(1.0, 1.5))
    pipeline = write(tmp_path, names(6), concurrency=3)
    stopped = threading.Event()

    async def go() -> RunResult:
        client = LaminaClient(emu.base_url, emu.key, pipeline.api, rate=Rate(1000, 1))
        async with client:
            with Manifest.open(tmp_path / "it.sqlite", pipeline_name="it", writer=True) as manifest:
                executor = Executor(pipeline, manifest, client, ExecOptions())
                task = asyncio.create_task(executor.run())
                await wait_for_async(lambda: emu.stats.starts >= 3, 10, "3 starts")
                executor.request_stop(StopReason.SIGINT)
                result = await asyncio.wait_for(task, 5)
                stopped.set()
                return result

    result = asyncio.run(go())
    assert stopped.is_set()
    assert result.stop_reason is StopReason.SIGINT
    live = [r for r in records(tmp_path) if r.state in (RunState.RUNNING, RunState.SUBMITTING)]
    assert live
    result = execute(pipeline, emu, tmp_path)
    assert result.counts == {RunState.COMPLETED: 6}
    assert emu.stats.duplicate_starts() == {}
    assert emu.stats.starts == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_webhook_mode_costs_one_request_per_run(make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    """With a webhook receiver each run costs its start only: results arrive signed, no status GETs."""
    emu = make_emulator()
    port = _free_port()
    options = ExecOptions(webhook_url=f"http://127.0.0.1:{port}/hook", listen=("127.0.0.1", port))
    result = execute(write(tmp_path, names(5)), emu, tmp_path, options)
    assert result.counts == {RunState.COMPLETED: 5}
    api = emu.stats.api_requests()
    assert Counter(r.method for r in api) == {"POST": 5, "GET": 1}  # the GET is the signing key, once
    assert all(r.outputs for r in records(tmp_path))
