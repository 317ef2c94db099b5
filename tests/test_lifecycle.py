"""The run lifecycle: the table of legal moves and its one check, the decision `plan` and `run` share, and a walk
through every (upstream state, run state, choices) combination showing that `run` does what `plan` said."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest
from executor_fakes import FakeClient, FakeClock, make_executor, open_manifest, rows, write_pipeline

from lamina_batch import events as ev
from lamina_batch.errors import IllegalTransitionError, ManifestError
from lamina_batch.executor import ExecOptions
from lamina_batch.lifecycle import (
    COMPLETE,
    MOVES,
    RUN_FAILED,
    UPSTREAM_FAILED,
    Action,
    Choices,
    Upstream,
    check_move,
    decide,
    redo_reason,
)
from lamina_batch.manifest import Manifest
from lamina_batch.matrix import expand_runs
from lamina_batch.models import PlannedRun, RunOutput, RunRecord, RunState
from lamina_batch.planner import category_of, plan_against_manifest

# --------------------------------------------------------------------------- the table


def test_every_state_has_its_moves_and_a_run_is_never_paid_twice() -> None:
    """Every state (and "absent") has an entry; no move starts a running run again, a completed one only by the
    redo (a deliberate new attempt), and a finished result is never replaced by another result."""
    assert set(MOVES) == {None, *RunState}
    assert RunState.SUBMITTING not in MOVES[RunState.RUNNING]
    assert MOVES[RunState.COMPLETED][RunState.SUBMITTING].startswith("redo")
    assert set(MOVES[RunState.COMPLETED]) == {RunState.COMPLETED, RunState.SUBMITTING}
    assert set(MOVES[RunState.SUBMITTING]) == {RunState.RUNNING, RunState.PENDING, RunState.FAILED, RunState.UNKNOWN}
    for old, new in itertools.product([None, *RunState], RunState):
        if new in MOVES[old]:
            assert check_move(old, new)
        else:
            with pytest.raises(IllegalTransitionError, match="cannot go from"):
                check_move(old, new)


def test_an_illegal_move_is_a_manifest_error() -> None:
    """The refusal is a ManifestError: the CLI reports it in one line like any other manifest problem."""
    with pytest.raises(ManifestError, match="from completed to pending"):
        check_move(RunState.COMPLETED, RunState.PENDING)


# --------------------------------------------------------------------------- the decision


def _record(state: RunState, *, remote_id: str | None = None, code: str | None = None) -> RunRecord:
    return RunRecord(
        identity="i",
        step_id="banner",
        app_id="app",
        row_number=1,
        row_key=None,
        item_id="it",
        row={},
        axes={},
        inputs={},
        output_labels=None,
        needs={},
        state=state,
        remote_id=remote_id,
        error_code=code,
    )


FAILED_HERO = Upstream.failed("hero", RunState.UNKNOWN)
NONE, RETRY, RESTART = Choices(), Choices(retry_failed=True), Choices(restart_unknown=True)


@pytest.mark.parametrize(
    ("record", "upstream", "choices", "action"),
    [
        (None, COMPLETE, NONE, Action.START),
        (None, FAILED_HERO, NONE, Action.SKIP_UPSTREAM_FAILED),
        (None, Upstream.unfinished("hero"), NONE, Action.WAIT_FOR_UPSTREAM),
        (_record(RunState.PENDING), COMPLETE, NONE, Action.START),
        (_record(RunState.COMPLETED), FAILED_HERO, RETRY, Action.REUSE),
        (_record(RunState.RUNNING, remote_id="r1"), Upstream.unfinished("hero"), NONE, Action.FOLLOW),
        (_record(RunState.SUBMITTING), FAILED_HERO, NONE, Action.RECONCILE),
        (_record(RunState.SUBMITTING, remote_id="r1"), COMPLETE, NONE, Action.FOLLOW),
        (_record(RunState.FAILED, code=RUN_FAILED), COMPLETE, NONE, Action.KEEP_FAILED),
        (_record(RunState.FAILED, code=RUN_FAILED), COMPLETE, RETRY, Action.RESTART_AFTER_FAILURE),
        (_record(RunState.TIMED_OUT), COMPLETE, RESTART, Action.KEEP_FAILED),
        (_record(RunState.CANCELLED), FAILED_HERO, RETRY, Action.SKIP_UPSTREAM_FAILED),
        (_record(RunState.UNKNOWN), COMPLETE, NONE, Action.KEEP_UNKNOWN),
        (_record(RunState.UNKNOWN), COMPLETE, RESTART, Action.RESTART_UNKNOWN),
        (_record(RunState.UNKNOWN), FAILED_HERO, RETRY, Action.KEEP_UNKNOWN),
        (_record(RunState.FAILED, code=UPSTREAM_FAILED), COMPLETE, NONE, Action.START_AFTER_UPSTREAM),
        (_record(RunState.FAILED, code=UPSTREAM_FAILED), FAILED_HERO, RETRY, Action.SKIP_UPSTREAM_FAILED),
        (_record(RunState.FAILED, code=UPSTREAM_FAILED), Upstream.unfinished("hero"), NONE, Action.WAIT_FOR_UPSTREAM),
    ],
)
def test_decide(record: RunRecord | None, upstream: Upstream, choices: Choices, action: Action) -> None:
    """One row of the decision: a remote id is followed and an intent reconciled whatever the upstream; a run's
    own failure is kept unless the user chose otherwise; a run failed only by its upstream needs no flag."""
    assert decide(record, upstream, choices).action is action


def test_decisions_say_why_in_the_words_plan_shows() -> None:
    """Reasons name the remote run, the flag to use, or the upstream step and how it ended."""
    follow = decide(_record(RunState.RUNNING, remote_id="r9"), COMPLETE, NONE)
    assert follow.reason == "running remotely as r9: followed, never started again"
    kept = decide(_record(RunState.TIMED_OUT), COMPLETE, NONE)
    assert kept.reason == "timed_out: kept (use --retry-failed to run it again)"
    waiting = decide(_record(RunState.FAILED, code=UPSTREAM_FAILED), FAILED_HERO, NONE)
    assert waiting.reason == "waiting for upstream: hero unknown"
    assert Action.START_AFTER_UPSTREAM.starts
    assert not Action.SKIP_UPSTREAM_FAILED.starts


def test_a_completed_run_is_redone_only_by_a_verdict_and_the_flag() -> None:
    """A completed run with a reason to redo is redone only under --redo rejected and a complete upstream; no
    other choice (retry, restart) and no reason-less record ever starts it again."""
    done = _record(RunState.COMPLETED)
    redo = Choices(redo_rejected=True)
    assert decide(done, COMPLETE, redo, redo="rejected").action is Action.REDO
    assert decide(done, COMPLETE, redo, redo="rejected").reason == "rejected: a new attempt (--redo rejected)"
    assert decide(done, COMPLETE, Choices(retry_failed=True, restart_unknown=True), redo="rejected").action is (
        Action.REUSE
    )
    assert decide(done, COMPLETE, redo).action is Action.REUSE
    assert decide(done, FAILED_HERO, redo, redo="upstream hero redone").action is Action.REUSE
    assert Action.REDO.starts


def test_redo_reason_rejected_or_upstream_newer() -> None:
    """Rejected wins; else an upstream step whose attempt is newer than the one consumed; a run recorded before
    consumed attempts were kept, or a run not completed, has none."""
    consumed = dataclasses.replace(_record(RunState.COMPLETED), upstream_attempts={"hero": 1})
    assert redo_reason(consumed, True, {"hero": 1}) == "rejected"
    assert redo_reason(consumed, False, {"hero": 2}) == "upstream hero redone"
    assert redo_reason(consumed, False, {"hero": 1}) is None
    assert redo_reason(_record(RunState.COMPLETED), False, {"hero": 5}) is None
    assert redo_reason(_record(RunState.FAILED), True, {}) is None


# --------------------------------------------------------------------------- plan and run agree

# How a run is left in the manifest before `plan` and `run` see it.
SETUPS = (
    "absent",
    "pending",
    "submitting",
    "running",
    "completed",
    "failed",
    "upstream_failed",
    "cancelled",
    "timed_out",
    "unknown",
)
CHOICES = {
    "none": ExecOptions(),
    "retry-failed": ExecOptions(retry_failed=True),
    "restart-unknown": ExecOptions(restart_unknown=True),
    "both": ExecOptions(retry_failed=True, restart_unknown=True),
}


def _leave(m: Manifest, client: FakeClient, run: PlannedRun, setup: str) -> None:
    """Bring `run` into `setup` through legal moves only, with a remote run behind it where it has an id."""
    if setup == "absent":
        return
    if setup in ("pending", "upstream_failed"):
        m.ensure_planned(run)
        if setup == "upstream_failed":
            m.finish(run.identity, RunState.FAILED, error="not started: upstream", error_code=UPSTREAM_FAILED)
        return
    m.begin_attempt(run, dict(run.inputs))
    if setup == "submitting":
        return  # the start went out and nothing was created, or was never sent: reconciling finds no run
    if setup == "unknown":
        m.set_state(run.identity, RunState.UNKNOWN, error="reply lost", error_code="START_UNKNOWN")
        return
    m.set_remote_id(run.identity, client._create(run.app_id, run.inputs).run_id)
    if setup == "completed":
        output = RunOutput("o1", "Image", "image", f"https://files.test/{run.identity}.png", "completed")
        m.finish(run.identity, RunState.COMPLETED, outputs=(output,))
    elif setup != "running":
        m.finish(run.identity, RunState(setup), error="ended earlier", error_code=RUN_FAILED)


def _observed(events: list[Any], run: PlannedRun) -> str:
    """What `run` did with a run, in the plan's categories ("started" for new/retry), from its events."""
    mine = [e for e in events if getattr(e, "identity", None) == run.identity]
    kinds = {type(e) for e in mine}
    if ev.RunReused in kinds:
        return "reused"
    if ev.Reconciled in kinds or any(isinstance(e, ev.RunAdopted) and e.how == "resumed" for e in mine):
        return "running"
    if ev.RunStarted in kinds:
        return "started"
    for e in mine:
        if isinstance(e, ev.RunFinished) and (e.error or "").startswith("not started: upstream"):
            return "waiting"
        if isinstance(e, ev.RunFinished) and e.kept:
            return "unknown" if e.state is RunState.UNKNOWN else "failed_kept"
    return "not started"


# a run without upstream is never failed by its upstream
COMBINATIONS = [(h, b) for h, b in itertools.product(SETUPS, SETUPS) if h != "upstream_failed"]


@pytest.mark.parametrize(("hero_setup", "banner_setup"), COMBINATIONS)
def test_run_does_what_plan_said(tmp_path: Path, hero_setup: str, banner_setup: str) -> None:
    """For every upstream state x run state x restart choice, what `run` does with each run (reuse, follow or
    reconcile, start, keep, wait for upstream) is what `plan` said it would (`run` with a server where every run
    completes: the upstream `plan` expects to complete does)."""
    for name, options in CHOICES.items():
        folder = tmp_path / name
        folder.mkdir()
        clock = FakeClock()
        client = FakeClient(clock)
        pipeline = write_pipeline(folder, rows(1), chain=True)
        hero, banner = next(iter(expand_runs(pipeline))).runs
        with open_manifest(folder, clock) as manifest:
            _leave(manifest, client, hero, hero_setup)
            _leave(manifest, client, banner, banner_setup)
            report = plan_against_manifest(
                pipeline,
                manifest,
                retry_failed=options.retry_failed,
                restart_unknown=options.restart_unknown,
                details=True,
            )
            seen: list[Any] = []
            asyncio.run(make_executor(pipeline, manifest, client, clock, options, emit=seen.append).run())
        for run in (hero, banner):
            (entry,) = [e for e in report.entries if e.identity == run.identity]
            assert entry.decision is not None
            said = "started" if entry.category in ("new", "retry") else entry.category
            assert category_of(entry.decision) == entry.category
            assert _observed(seen, run) == said, (name, run.step_id, entry.decision, entry.reason)
