"""Unit tests of the planner: plan vs manifest with reasons, status counts and failures, cancel of running runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina_batch.lifecycle import Action
from lamina_batch.manifest import Manifest
from lamina_batch.matrix import expand_runs
from lamina_batch.models import Pipeline, PlannedRun, RemoteRun, RunState
from lamina_batch.planner import (
    CATEGORIES,
    NOT_STARTED,
    cancel_running,
    plan_against_manifest,
    runs_to_start,
    starts_planned,
    status_exit_code,
    status_report,
)
from lamina_batch.spec import load_pipeline


def write(tmp_path: Path, names: list[str]) -> Pipeline:
    lines = ["version: 1", "name: t", "matrix:", "  key: sku", "  rows:"]
    lines += [f'    - {{sku: "S{i}", name: "{n}"}}' for i, n in enumerate(names, 1)]
    lines += [
        "steps:",
        "  - id: hero",
        "    app: app_hero",
        '    inputs: {Prompt: "photo of {{ row.name }}"}',
        "  - id: banner",
        "    app: app_banner",
        "    needs: [hero]",
        '    inputs: {Image: "{{ steps.hero.output }}"}',
    ]
    path = tmp_path / "p.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_pipeline(path)


def planned(pipeline: Pipeline) -> list[PlannedRun]:
    return [r for plan in expand_runs(pipeline) for r in plan.runs]


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    m = Manifest.open(tmp_path / "t.sqlite", pipeline_name="t", writer=True)
    yield m
    m.close()


def complete(m: Manifest, run: PlannedRun, remote_id: str, state: RunState = RunState.COMPLETED) -> None:
    """Start, follow and end `run` in `state` (completed by default), as a batch would."""
    m.begin_attempt(run, dict(run.inputs))
    m.set_remote_id(run.identity, remote_id)
    m.finish(run.identity, state)


def test_plan_without_manifest_is_all_new(tmp_path: Path) -> None:
    """With no manifest every planned run is new, for the reason 'new row'."""
    report = plan_against_manifest(write(tmp_path, ["a", "b"]), None, details=True)
    assert report.steps["hero"]["new"] == 2
    assert report.steps["banner"]["new"] == 2
    assert report.to_start == 4
    assert {e.reason for e in report.entries} == {"new row"}


def test_plan_classifies_every_manifest_state(tmp_path: Path, manifest: Manifest) -> None:
    """completed -> reused, running -> running, failed/unknown kept unless the flags say retry."""
    pipeline = write(tmp_path, ["a", "b", "c", "d"])
    runs = [r for r in planned(pipeline) if r.step_id == "hero"]
    complete(manifest, runs[0], "r0")
    manifest.begin_attempt(runs[1], dict(runs[1].inputs))
    manifest.set_remote_id(runs[1].identity, "r1")
    manifest.begin_attempt(runs[2], dict(runs[2].inputs))
    manifest.finish(runs[2].identity, RunState.FAILED, error="boom")
    manifest.begin_attempt(runs[3], dict(runs[3].inputs))
    manifest.set_state(runs[3].identity, RunState.UNKNOWN)
    report = plan_against_manifest(pipeline, manifest, details=True)
    hero = report.steps["hero"]
    assert (hero["reused"], hero["running"], hero["failed_kept"], hero["unknown"], hero["new"]) == (1, 1, 1, 1, 0)
    again = plan_against_manifest(pipeline, manifest, retry_failed=True, restart_unknown=True, details=True)
    assert again.steps["hero"]["retry"] == 2
    reasons = {e.reason for e in again.entries if e.category == "retry"}
    assert "failed: retrying (--retry-failed)" in reasons
    assert "unknown: restarting (--restart-unknown)" in reasons


def test_plan_shows_runs_waiting_for_upstream(tmp_path: Path, manifest: Manifest) -> None:
    """A run failed only because its upstream did (UPSTREAM_FAILED), or never recorded under a kept upstream, is
    shown waiting for upstream, not as a start; once the upstream would run again it starts with it, no flag."""
    pipeline = write(tmp_path, ["a", "b", "c"])
    (hero_a, banner_a), (hero_b, banner_b), (hero_c, _) = (plan.runs for plan in expand_runs(pipeline))
    manifest.begin_attempt(hero_a, dict(hero_a.inputs))
    manifest.set_state(hero_a.identity, RunState.UNKNOWN, error="reply lost", error_code="START_UNKNOWN")
    manifest.ensure_planned(banner_a)
    manifest.finish(banner_a.identity, RunState.FAILED, error="not started", error_code="UPSTREAM_FAILED")
    complete(manifest, hero_b, "rb", RunState.FAILED)
    complete(manifest, hero_c, "rc")
    report = plan_against_manifest(pipeline, manifest, details=True)
    assert report.steps["hero"] == {**dict.fromkeys(CATEGORIES, 0), "reused": 1, "unknown": 1, "failed_kept": 1}
    assert report.steps["banner"] == {**dict.fromkeys(CATEGORIES, 0), "new": 1, "waiting": 2}
    waiting = {e.identity: e.reason for e in report.entries if e.category == "waiting"}
    assert waiting == {
        banner_a.identity: "waiting for upstream: hero unknown",
        banner_b.identity: "waiting for upstream: hero failed",
    }
    assert report.to_start == 1
    text = report.render_text()
    assert "2 runs are waiting for upstream" in text
    assert "waiting for upstream: hero unknown" in text
    again = plan_against_manifest(pipeline, manifest, restart_unknown=True, details=True)
    banner = next(e for e in again.entries if e.identity == banner_a.identity)
    assert (banner.category, banner.decision) == ("retry", Action.START_AFTER_UPSTREAM)
    assert again.to_start == 3  # hero a again, then its banner; and banner c (new)


def test_plan_says_which_row_changed_and_orphans_the_old_runs(tmp_path: Path, manifest: Manifest) -> None:
    """An edited keyed row is 'inputs changed', its downstream 'upstream changed', the old runs orphaned."""
    pipeline = write(tmp_path, ["a", "b"])
    for run in planned(pipeline):
        complete(manifest, run, f"r-{run.identity[:6]}")
    edited = write(tmp_path, ["a", "B!"])
    report = plan_against_manifest(edited, manifest, details=True)
    assert report.steps["hero"]["reused"] == 1
    assert report.steps["hero"]["new"] == 1
    assert report.total("orphaned") == 2
    why = {e.step_id: e.reason for e in report.entries if e.category == "new"}
    assert why == {"hero": "inputs changed since the last run of this row", "banner": "upstream changed (hero)"}
    assert len(report.orphans) == 2
    text = report.render_text()
    assert "inputs changed since the last run of this row" in text
    assert report.to_json()["totals"]["orphaned"] == 2


def spelled(tmp_path: Path, prompt: str, *, key: bool = True, template: str = "photo of {{ row.name }}") -> Pipeline:
    """`write`'s pipeline with the hero's input spelled `prompt` (and optionally no key, another template)."""
    text = (tmp_path / "p.yaml").read_text(encoding="utf-8")
    text = text.replace('inputs: {Prompt: "photo of {{ row.name }}"}', f'inputs: {{{prompt}: "{template}"}}')
    if not key:
        text = text.replace("  key: sku\n", "")
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    return load_pipeline(tmp_path / "p.yaml")


@pytest.mark.parametrize("key", [True, False])
def test_plan_says_inputs_renamed_when_only_the_spelling_changed(key: bool, tmp_path: Path, manifest: Manifest) -> None:
    """`Prompt` -> `prompt` with the same values reruns every run (identity is the inputs as written): `plan`
    says "inputs renamed (Prompt -> prompt)" and warns that they would be paid again; keyed rows or not."""
    pipeline = write(tmp_path, ["a", "b"])
    if not key:
        pipeline = spelled(tmp_path, "Prompt", key=False)
    for run in planned(pipeline):
        complete(manifest, run, f"r-{run.identity[:6]}")
    renamed = spelled(tmp_path, "prompt", key=key)
    report = plan_against_manifest(renamed, manifest, details=True)
    why = {(e.step_id, e.reason) for e in report.entries}
    assert why == {("hero", "inputs renamed (Prompt -> prompt)"), ("banner", "upstream changed (hero)")}
    text = report.render_text()
    assert "2 runs would start again only because inputs were renamed" in text
    assert "keep the old spelling to reuse them" in text
    assert report.to_json()["reasons"]["inputs renamed (Prompt -> prompt)"] == 2


def test_a_rename_with_another_value_is_a_change(tmp_path: Path, manifest: Manifest) -> None:
    """A respelled input whose template changed too is "inputs changed", not a rename, and no warning."""
    pipeline = write(tmp_path, ["a"])
    for run in planned(pipeline):
        complete(manifest, run, f"r-{run.identity[:6]}")
    report = plan_against_manifest(
        spelled(tmp_path, "prompt", template="a photo of {{ row.name }}"), manifest, details=True
    )
    hero = next(e for e in report.entries if e.step_id == "hero")
    assert hero.reason == "inputs changed since the last run of this row"
    assert "renamed" not in report.render_text()


def test_plan_without_details_keeps_no_entries(tmp_path: Path) -> None:
    """details=False keeps only counts (memory flat in rows), details=True one entry per run."""
    pipeline = write(tmp_path, ["a", "b", "c"])
    assert plan_against_manifest(pipeline, None).entries == ()
    assert len(plan_against_manifest(pipeline, None, details=True).entries) == 6


def test_status_counts_not_started_and_lists_failures(tmp_path: Path, manifest: Manifest) -> None:
    """status counts planned runs by state (absent ones as 'not started') and lists each failure's row."""
    pipeline = write(tmp_path, ["a", "b", "c"])
    runs = planned(pipeline)
    complete(manifest, runs[0], "r0")
    manifest.begin_attempt(runs[2], dict(runs[2].inputs))
    manifest.finish(runs[2].identity, RunState.FAILED, error="boom", error_code="RUN_FAILED")
    report = status_report(pipeline, manifest)
    assert report.steps["hero"] == {"completed": 1, "failed": 1, NOT_STARTED: 1}
    assert report.steps["banner"] == {NOT_STARTED: 3}
    assert [(f.row_number, f.row_key, f.step_id, f.error) for f in report.failures] == [(2, "S2", "hero", "boom")]
    assert report.any_bad
    assert report.any_unfinished
    assert not report.all_completed
    assert status_exit_code(report) == 3
    assert "row 2 [S2] hero: failed (RUN_FAILED): boom" in report.render_text()


def test_status_exit_codes_when_finished(tmp_path: Path, manifest: Manifest) -> None:
    """All completed -> 0; finished with a failure -> 1."""
    pipeline = write(tmp_path, ["a", "b"])
    hero_a, banner_a, hero_b, banner_b = planned(pipeline)
    for n, run in enumerate((hero_a, banner_a, hero_b)):
        complete(manifest, run, f"r{n}")
    one_row = write(tmp_path, ["a"])
    assert status_exit_code(status_report(one_row, manifest)) == 0
    complete(manifest, banner_b, "r3", RunState.TIMED_OUT)
    report = status_report(pipeline, manifest)
    assert not report.any_unfinished
    assert status_exit_code(report) == 1


class CancelClient:
    """Records cancels; `supports_cancel` selects the dialect's ability."""

    def __init__(self, supports_cancel: bool) -> None:
        self.supports_cancel = supports_cancel
        self.cancelled: list[str] = []

    async def cancel(self, run_id: str) -> RemoteRun | None:
        self.cancelled.append(run_id)
        return RemoteRun(run_id, "cancelled")


def test_cancel_running_cancels_and_records(tmp_path: Path, manifest: Manifest) -> None:
    """cancel cancels every run the manifest has running and records it cancelled; finished ones untouched."""
    pipeline = write(tmp_path, ["a", "b"])
    runs = [r for r in planned(pipeline) if r.step_id == "hero"]
    manifest.begin_attempt(runs[0], dict(runs[0].inputs))
    manifest.set_remote_id(runs[0].identity, "r0")
    complete(manifest, runs[1], "r1")
    client = CancelClient(True)
    outcomes = asyncio.run(cancel_running(pipeline, manifest, client))  # type: ignore[arg-type]
    assert client.cancelled == ["r0"]
    assert outcomes == [(runs[0].identity, "r0: cancelled")]
    rec = manifest.get(runs[0].identity)
    assert rec is not None
    assert rec.state is RunState.CANCELLED


def test_cancel_without_cancel_endpoint_leaves_runs_running(tmp_path: Path, manifest: Manifest) -> None:
    """On the executions API nothing can be cancelled: the runs stay running and the outcome says so."""
    pipeline = write(tmp_path, ["a"])
    hero = planned(pipeline)[0]
    manifest.begin_attempt(hero, dict(hero.inputs))
    manifest.set_remote_id(hero.identity, "r0")
    client = CancelClient(False)
    outcomes = asyncio.run(cancel_running(pipeline, manifest, client))  # type: ignore[arg-type]
    assert client.cancelled == []
    assert "no cancel endpoint" in outcomes[0][1]
    rec = manifest.get(hero.identity)
    assert rec is not None
    assert rec.state is RunState.RUNNING


def test_runs_to_start_counts_starting_decisions_per_step_within_max_starts() -> None:
    """Only decisions that send a start count, in plan order, at most max_starts of them; any subset can be fed."""
    decided = [
        ("hero", Action.START),
        ("banner", Action.START),
        ("hero", Action.REUSE),
        ("hero", Action.RESTART_AFTER_FAILURE),
        ("banner", Action.FOLLOW),
        ("banner", Action.START_AFTER_UPSTREAM),
        ("hero", Action.KEEP_FAILED),
        ("hero", Action.RESTART_UNKNOWN),
    ]
    assert runs_to_start(decided) == {"hero": 3, "banner": 2}
    assert runs_to_start(decided, max_starts=3) == {"hero": 2, "banner": 1}
    assert runs_to_start(decided[2:5]) == {"hero": 1}


def test_plan_and_run_count_the_same_starts(tmp_path: Path, manifest: Manifest) -> None:
    """`plan`'s starts and what `run` checks against the balance come from the same decisions."""
    p = write(tmp_path, ["a", "b", "c"])
    complete(manifest, planned(p)[0], "r0")
    report = plan_against_manifest(p, manifest, max_starts=2)
    assert report.starts == starts_planned(p, manifest, max_starts=2)
    assert sum(report.starts.values()) == 2
    assert sum(plan_against_manifest(p, manifest).starts.values()) == report.to_start
