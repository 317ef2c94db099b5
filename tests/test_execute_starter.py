"""The starter: write-ahead intent, what a start that created nothing does, and the ledger behind max_starts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from executor_fakes import FakeClient, FakeClock, execute, open_manifest, rows, states, with_run, write_pipeline

from lamina_batch.events import StopReason
from lamina_batch.execute.context import Guards
from lamina_batch.execute.scope import StopScope
from lamina_batch.execute.starter import StartLedger, apply_vary
from lamina_batch.manifest import Manifest
from lamina_batch.models import AppInfo, AppParameter, RunSettings, RunState


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def manifest(tmp_path: Path, clock: FakeClock) -> Iterator[Manifest]:
    m = open_manifest(tmp_path, clock)
    yield m
    m.close()


def test_connect_error_on_start_retries_without_duplicates(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A start that was never sent goes back to pending and is retried after a backoff."""
    client = FakeClient(clock)
    client.start_script = ["connect", "connect"]
    result, _ = execute(write_pipeline(tmp_path, rows(1)), manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 1}
    assert len(client.runs) == 1
    assert client.count("start") == 3
    assert len([s for s in clock.sleeps if s > 0]) >= 2


def test_validation_error_fails_only_that_run(tmp_path: Path, manifest: Manifest, clock: FakeClock) -> None:
    """A 400 on start fails that run with the error code; the others go on."""
    client = FakeClient(clock)
    client.start_script = ["invalid"]
    pipeline = with_run(write_pipeline(tmp_path, rows(3)), concurrency=1)
    result, _ = execute(pipeline, manifest, client, clock)
    assert result.counts == {RunState.COMPLETED: 2, RunState.FAILED: 1}
    failed = next(manifest.iter_runs(states=[RunState.FAILED]))
    assert failed.error_code == "VALIDATION_ERROR"


def test_a_start_whose_inputs_do_not_render_fails_without_a_request(
    tmp_path: Path, manifest: Manifest, clock: FakeClock
) -> None:
    """A downstream input that fails to render with the upstream's real output fails that run (TEMPLATE_ERROR)
    before any intent or request; the other rows go on."""
    client = FakeClient(clock)
    # plans fine (any output index has a placeholder), but the hero's real run has one output only
    step = "\n".join(
        [
            "  - id: banner",
            "    app: app_banner",
            "    needs: [hero]",
            '    inputs: {Image: "{{ steps.hero.outputs[1].value }}"}',
        ]
    )
    pipeline = with_run(write_pipeline(tmp_path, rows(2), extra_step=step), concurrency=1)
    result, _ = execute(pipeline, manifest, client, clock)
    assert client.count("start") == 2  # the heroes only
    assert result.counts == {RunState.COMPLETED: 2, RunState.FAILED: 2}
    banners = list(manifest.iter_runs(step_id="banner"))
    assert {(r.state, r.error_code, r.attempts) for r in banners} == {(RunState.FAILED, "TEMPLATE_ERROR", 0)}
    assert states(manifest) == {RunState.COMPLETED: 2, RunState.FAILED: 2}


def _ledger(max_starts: int | None) -> tuple[StartLedger, Guards, list[object]]:
    seen: list[object] = []

    async def sleep(seconds: float) -> None:
        return None

    scope = StopScope(start_grace=1.0, sleep=sleep)
    guards = Guards(RunSettings(max_starts=max_starts), scope, seen.append)
    return StartLedger(max_starts, guards), guards, seen


def test_ledger_counts_what_may_have_created_a_run_against_max_starts() -> None:
    """Released reservations give their place back; confirmed and held ones (a lost reply) count, and the
    first refusal past max_starts stops the batch (MAX_STARTS) naming the confirmed starts."""
    asyncio.run(_ledger_scenario())


async def _ledger_scenario() -> None:
    ledger, guards, seen = _ledger(3)
    ledger.reserve().release()
    confirmed = ledger.reserve()
    confirmed.confirm()
    confirmed.release()  # settled already: no effect
    ledger.reserve()  # held: the reply was lost, a run may exist
    assert (ledger.reserved, ledger.starts) == (2, 1)
    assert ledger.may_start()
    ledger.reserve().confirm()
    assert not ledger.may_start()
    assert guards.reason is StopReason.MAX_STARTS
    assert guards.message == "max_starts reached: 2 runs started"
    assert len(seen) == 1


def test_ledger_without_max_starts_never_refuses() -> None:
    """With no max_starts every start is allowed, however many there were."""
    ledger, guards, _ = _ledger(None)
    for _ in range(100):
        ledger.reserve().confirm()
    assert ledger.may_start()
    assert guards.reason is None


def test_varied_inputs_resolve_against_the_app_and_skip_what_it_lacks() -> None:
    """A `review.vary` / `--redo-set` entry replaces the input setting the same parameter (by key, name or id,
    under the input's spelling), is added when the app has that parameter but the step does not set it, and is
    left out for an app without it; without the app, only a same-named input is replaced."""
    app = AppInfo(
        "app_1",
        "One",
        None,
        (
            AppParameter("id-prompt", "Prompt", "text", key="prompt"),
            AppParameter("id-seed", "Seed", "number", key="seed", default=0, has_default=True),
        ),
        (),
    )
    inputs = {"Prompt": "a mug"}
    assert apply_vary(inputs, {"prompt": "a mug, take 2", "Seed": "2", "Headline": "x"}, app) == {
        "Prompt": "a mug, take 2",
        "Seed": "2",
    }
    assert apply_vary(inputs, {"PROMPT": "b", "Seed": "2"}) == {"Prompt": "b"}
