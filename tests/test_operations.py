"""The library twins of validate / plan / status / cancel / report: values back, errors raised, nothing printed."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina_batch import (
    BatchOptions,
    ConfigError,
    StopReason,
    cancel,
    load_pipeline,
    plan,
    report,
    run_batch,
    status,
    validate,
)
from lamina_batch import events as ev
from lamina_batch.emulator import Emulator
from lamina_batch.errors import ManifestError, MissingApiKeyError


def write_pipeline(folder: Path, rows: int = 3, *, prompt: str = "{{ row.name }}") -> Path:
    """A one-step pipeline over `rows` inline rows keyed by sku."""
    items = "\n".join(f"    - {{sku: S{i}, name: Item {i}}}" for i in range(rows))
    path = folder / "pipeline.yaml"
    path.write_text(
        "version: 1\nname: ops\nmatrix:\n  key: sku\n  rows:\n"
        + items
        + f'\nsteps:\n  - id: hero\n    app: app_7Hk2\n    inputs:\n      Prompt: "{prompt}"\n'
        + "run:\n  rate_limit: 100/s\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def api_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """LAMINA_BASE_URL / LAMINA_API_KEY point at a fast in-process emulator."""
    monkeypatch.setenv("LAMINA_BASE_URL", emulator.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emulator.key)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return emulator


def test_validate_counts_without_a_request_and_checks_apps_when_asked(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate needs no key; with check_apps it asks for one (MissingApiKeyError), then holds inputs to the apps."""
    monkeypatch.delenv("LAMINA_API_KEY", raising=False)
    pipeline = write_pipeline(tmp_path)
    summary = validate(pipeline)
    assert (summary.rows, summary.runs) == (3, 3)
    with pytest.raises(MissingApiKeyError):
        validate(pipeline, check_apps=True)
    monkeypatch.setenv("LAMINA_BASE_URL", emulator.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emulator.key)
    assert validate(pipeline, check_apps=True).runs == 3
    assert emulator.stats.starts == 0


def test_validate_raises_every_problem(tmp_path: Path) -> None:
    """A template naming a missing column is a ConfigError whose problems name the file and the row."""
    pipeline = write_pipeline(tmp_path, prompt="{{ row.nmae }}")
    with pytest.raises(ConfigError) as info:
        validate(pipeline)
    assert "pipeline.yaml" in str(info.value)
    assert "nmae" in str(info.value)


def test_plan_status_and_report_around_a_batch(api_env: Emulator, tmp_path: Path) -> None:
    """Before a run: plan says all new and creates no manifest, status says there is none yet. After: plan reuses
    everything, status counts every run completed, report writes a file and emits ReportWritten."""
    pipeline = write_pipeline(tmp_path)
    before = plan(pipeline, details=True)
    assert (before.total("new"), before.to_start, len(before.entries)) == (3, 3, 3)
    assert not (tmp_path / "pipeline.lamina.sqlite").exists()
    with pytest.raises(ManifestError, match=r"no manifest yet; start the batch with `lamina-batch run "):
        status(pipeline)

    assert run_batch(pipeline).ok
    after = plan(load_pipeline(pipeline))
    assert (after.total("new"), after.total("reused")) == (0, 3)
    counts = status(pipeline)
    assert counts.all_completed
    assert counts.total("completed") == 3
    seen: list[ev.Event] = []
    written = report(pipeline, "jsonl", tmp_path / "runs.jsonl", on_event=seen.append)
    assert written == tmp_path / "runs.jsonl"
    assert len(written.read_text(encoding="utf-8").splitlines()) == 3
    assert seen == [ev.ReportWritten("jsonl", written)]


def test_cancel_cancels_what_an_interrupted_batch_left_running(
    tmp_path: Path, make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a batch is stopped with runs still going remotely, cancel cancels each and records it."""
    emu = make_emulator(duration=(30.0, 30.0))
    monkeypatch.setenv("LAMINA_BASE_URL", emu.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emu.key)
    pipeline = write_pipeline(tmp_path, 2)
    with pytest.raises(ManifestError, match="nothing to cancel"):
        cancel(pipeline)
    started: list[str] = []

    def stop_when_all_started(event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            started.append(event.remote_id)
            if len(started) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # handled: the batch stops, its runs left going remotely

    stopped = run_batch(pipeline, BatchOptions(handle_signals=True), on_event=stop_when_all_started)
    assert stopped.stop_reason is StopReason.SIGTERM
    assert status(pipeline).total("running") == 2
    outcomes = cancel(pipeline)
    assert sorted(outcome for _, outcome in outcomes) == sorted(f"{rid}: cancelled" for rid in started)
    assert status(pipeline).total("cancelled") == 2


def test_blocking_twins_refuse_a_running_loop(api_env: Emulator, tmp_path: Path) -> None:
    """cancel and validate(check_apps=True) block; inside a running event loop they say so instead of hanging."""
    pipeline = write_pipeline(tmp_path)

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="in a thread"):
            validate(pipeline, BatchOptions(), check_apps=True)

    asyncio.run(inside())
