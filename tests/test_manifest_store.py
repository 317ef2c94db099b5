"""The store: transactions all or nothing, and every state change refused unless the lifecycle has that move."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from manifest_helpers import NAME, make_run

from lamina_batch.errors import IllegalTransitionError, ManifestError
from lamina_batch.lifecycle import MOVES
from lamina_batch.manifest import Manifest
from lamina_batch.models import PlannedRun, RunState


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


def test_batch_commits_all_or_nothing(writer: Manifest, mpath: Path) -> None:
    """Writes inside batch() become visible together at its end, and an error inside it undoes them all."""
    runs = [make_run(n) for n in range(1, 4)]
    for run in runs:
        writer.begin_attempt(run, run.inputs)
    with Manifest.open(mpath, pipeline_name=NAME, writer=False) as reader:
        with writer.batch():
            for run in runs:
                writer.set_state(run.identity, RunState.UNKNOWN, error="lost")
            assert reader.counts()["hero"][RunState.UNKNOWN] == 0
        assert reader.counts()["hero"][RunState.UNKNOWN] == 3

        def half_valid_batch() -> None:
            with writer.batch():
                writer.set_state(runs[0].identity, RunState.PENDING)
                writer.set_state("nope", RunState.PENDING)

        with pytest.raises(ManifestError, match="no run nope"):
            half_valid_batch()
        assert reader.counts()["hero"][RunState.UNKNOWN] == 3
        assert len(writer.transitions(runs[0].identity)) == 2


def _to(m: Manifest, run: PlannedRun, state: RunState) -> None:
    """Bring `run` into `state` through legal moves only."""
    if state is RunState.PENDING:
        m.ensure_planned(run)
        return
    m.begin_attempt(run, run.inputs)
    if state is RunState.SUBMITTING:
        return
    if state is RunState.UNKNOWN:
        m.set_state(run.identity, state, error="lost")
        return
    m.set_remote_id(run.identity, f"r-{run.identity}")
    if state is not RunState.RUNNING:
        m.finish(run.identity, state)


def _attempt_move(m: Manifest, run: PlannedRun, new: RunState) -> IllegalTransitionError | None:
    """Ask the manifest for `new` through the write a batch would use (a start intent as a redo would ask for it:
    the one way a completed run is started again); the refusal, if any."""
    try:
        if new is RunState.SUBMITTING:
            m.begin_attempt(run, run.inputs, redo=True)
        elif new is RunState.RUNNING:
            m.set_remote_id(run.identity, "r-new")
        elif new.finished:
            m.finish(run.identity, new, error="x")
        else:
            m.set_state(run.identity, new)
    except IllegalTransitionError as e:
        return e
    return None


@pytest.mark.parametrize("old", list(RunState))
def test_every_state_change_is_checked_against_the_lifecycle(writer: Manifest, old: RunState) -> None:
    """From each state exactly the moves in lifecycle.MOVES succeed through the manifest's writes; any other
    is refused with IllegalTransitionError naming the run, and leaves the record and its history as they were."""
    allowed = MOVES[old]
    for n, new in enumerate(RunState, start=1):
        run = make_run(n, identity=f"{old.value}-to-{new.value}")
        _to(writer, run, old)
        before = (writer.get(run.identity), writer.transitions(run.identity))
        refused = _attempt_move(writer, run, new)
        if refused is not None:
            assert new not in allowed, f"{old.value} -> {new.value} is in MOVES but was refused"
            assert run.identity in str(refused)
            assert (writer.get(run.identity), writer.transitions(run.identity)) == before
            continue
        assert new in allowed, f"{old.value} -> {new.value} is not in MOVES but was allowed"
        record = writer.get(run.identity)
        assert record is not None
        assert record.state is new
        assert writer.transitions(run.identity)[-1].from_state is old


def test_a_refused_move_inside_a_batch_undoes_the_batch(writer: Manifest) -> None:
    """An illegal move rolls back the whole transaction it is in: a batch is still all or nothing."""
    a, b = make_run(1), make_run(2)
    writer.begin_attempt(a, a.inputs)
    writer.ensure_planned(b)

    def half_legal_batch() -> None:
        with writer.batch():
            writer.set_state(a.identity, RunState.PENDING)
            writer.set_remote_id(b.identity, "r-b")

    with pytest.raises(IllegalTransitionError, match="from pending to running"):
        half_legal_batch()
    a_now = writer.get(a.identity)
    assert a_now is not None
    assert a_now.state is RunState.SUBMITTING
