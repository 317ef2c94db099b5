"""Group commit: writes accepted with a weaker durability ride with the next commit (remote ids with the next
intent), reads see them first, and the manifest's own timer commits them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from manifest_helpers import NAME, make_run, running, state_on_disk

from lamina_batch.errors import ManifestError
from lamina_batch.manifest import (
    GROUP_COMMIT_DELAY,
    Durability,
    Manifest,
)
from lamina_batch.models import RunState


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


def test_deferred_finish_rides_with_the_next_commit(writer: Manifest, mpath: Path) -> None:
    """A finish with Durability.SOON is not on disk until the next write transaction, which carries it."""
    a, b = make_run(1), make_run(2)
    writer.begin_attempt(a, a.inputs)
    writer.set_remote_id(a.identity, "r1")
    writer.finish(a.identity, RunState.COMPLETED, remote_duration=2.0, durability=Durability.SOON)
    assert state_on_disk(mpath, a.identity)[0] == "running"
    writer.ensure_planned(b)
    assert state_on_disk(mpath, a.identity)[0] == "completed"
    assert [t.to_state for t in writer.transitions(a.identity)][-1] is RunState.COMPLETED


def test_deferred_finish_is_seen_by_reads_and_flushed_on_close(mpath: Path) -> None:
    """Reading a deferred-finished run writes it first; close() writes whatever is still deferred."""
    run_a, run_b = make_run(1), make_run(2)
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        for r in (run_a, run_b):
            m.begin_attempt(r, r.inputs)
            m.set_remote_id(r.identity, f"remote-{r.identity}")
        m.finish(run_a.identity, RunState.COMPLETED, durability=Durability.SOON)
        rec = m.get(run_a.identity)
        assert rec is not None
        assert rec.state is RunState.COMPLETED
        m.finish(run_b.identity, RunState.COMPLETED, durability=Durability.SOON)
        assert state_on_disk(mpath, run_b.identity)[0] == "running"
    assert state_on_disk(mpath, run_b.identity)[0] == "completed"


def test_deferred_finish_survives_a_rolled_back_transaction(writer: Manifest, mpath: Path) -> None:
    """A write that fails (and rolls back) keeps the deferred finish pending; the next write commits it."""
    a = make_run(1)
    writer.begin_attempt(a, a.inputs)
    writer.set_remote_id(a.identity, "r1")
    writer.finish(a.identity, RunState.COMPLETED, durability=Durability.SOON)
    with pytest.raises(ManifestError):
        writer.begin_attempt(a, a.inputs)  # completed now (inside the transaction): refused, rolled back
    assert state_on_disk(mpath, a.identity)[0] == "running"
    writer.flush()
    assert state_on_disk(mpath, a.identity)[0] == "completed"


def test_deferred_remote_id_is_committed_with_the_next_intent(writer: Manifest, mpath: Path) -> None:
    """A remote id WITH_NEXT_INTENT is not on disk until the next write, and the next intent carries it."""
    first, second = make_run(1), make_run(2)
    writer.begin_attempt(first, {"Prompt": "one"})
    writer.set_remote_id(first.identity, "r1", durability=Durability.WITH_NEXT_INTENT)
    assert state_on_disk(mpath, first.identity) == ("submitting", None)
    writer.begin_attempt(second, {"Prompt": "two"})
    assert state_on_disk(mpath, first.identity) == ("running", "r1")
    assert state_on_disk(mpath, second.identity) == ("submitting", None)
    states = [t.to_state for t in writer.transitions(first.identity)]
    assert states == [RunState.SUBMITTING, RunState.RUNNING]


def test_deferred_remote_id_is_seen_by_reads_flush_and_close(writer: Manifest, mpath: Path) -> None:
    """Reads of a run with a deferred id flush it first; flush() and close() write whatever is pending."""
    a, b = make_run(1), make_run(2)
    writer.begin_attempt(a, {"Prompt": "a"})
    writer.begin_attempt(b, {"Prompt": "b"})
    writer.set_remote_id(a.identity, "ra", durability=Durability.WITH_NEXT_INTENT)
    got = writer.get(a.identity)
    assert got is not None
    assert (got.state, got.remote_id) == (RunState.RUNNING, "ra")
    writer.set_remote_id(b.identity, "rb", durability=Durability.WITH_NEXT_INTENT)
    writer.flush()
    assert state_on_disk(mpath, b.identity) == ("running", "rb")
    c = make_run(3)
    writer.begin_attempt(c, {"Prompt": "c"})
    writer.set_remote_id(c.identity, "rc", durability=Durability.WITH_NEXT_INTENT)
    writer.close()
    assert state_on_disk(mpath, c.identity) == ("running", "rc")


def test_intent_commit_leaves_other_deferred_finishes_pending(writer: Manifest, mpath: Path) -> None:
    """An intent does not carry other runs' deferred finishes (they wait for the flush), but its own goes first."""
    done, fresh = make_run(1), make_run(2)
    writer.begin_attempt(done, {"Prompt": "done"})
    writer.set_remote_id(done.identity, "r1")
    writer.finish(done.identity, RunState.FAILED, error="boom", durability=Durability.SOON)
    writer.begin_attempt(fresh, {"Prompt": "fresh"})
    assert state_on_disk(mpath, done.identity) == ("running", "r1")
    writer.begin_attempt(done, {"Prompt": "done"})  # a retry of the failed run: its finish lands first
    assert state_on_disk(mpath, done.identity) == ("submitting", None)
    assert [t.to_state for t in writer.transitions(done.identity)][-2:] == [RunState.FAILED, RunState.SUBMITTING]


def test_the_group_commit_timer_commits_waiting_writes_within_its_delay(writer: Manifest, mpath: Path) -> None:
    """On a running event loop, writes accepted SOON or WITH_NEXT_INTENT are committed by the manifest's own timer
    within GROUP_COMMIT_DELAY when no other commit comes first."""
    a, b = make_run(1), make_run(2)
    running(writer, a)
    writer.begin_attempt(b, b.inputs)

    async def scenario() -> list[tuple[RunState, str | None]]:
        writer.finish(a.identity, RunState.COMPLETED, durability=Durability.SOON)
        writer.set_remote_id(b.identity, "rb", durability=Durability.WITH_NEXT_INTENT)
        before = [state_on_disk(mpath, a.identity), state_on_disk(mpath, b.identity)]
        for _ in range(500):  # poll for up to ~5 s
            if state_on_disk(mpath, b.identity)[1] is not None:
                break
            await asyncio.sleep(GROUP_COMMIT_DELAY / 5)
        return [*before, state_on_disk(mpath, a.identity), state_on_disk(mpath, b.identity)]

    seen = asyncio.run(scenario())
    assert seen == [
        (RunState.RUNNING, "r-hero-1"),
        (RunState.SUBMITTING, None),
        (RunState.COMPLETED, "r-hero-1"),
        (RunState.RUNNING, "rb"),
    ]


def test_a_remote_id_may_not_wait_behind_an_intent(writer: Manifest) -> None:
    """A remote id must be durable before the app's next start intent: Durability.SOON is refused for it."""
    run = make_run()
    writer.begin_attempt(run, run.inputs)
    with pytest.raises(ValueError, match="WITH_NEXT_INTENT"):
        writer.set_remote_id(run.identity, "r1", durability=Durability.SOON)


def test_a_finish_due_with_the_next_intent_rides_with_it(writer: Manifest, mpath: Path) -> None:
    """A finish accepted WITH_NEXT_INTENT is carried by the next start intent's own commit."""
    done, fresh = make_run(1), make_run(2)
    running(writer, done)
    writer.finish(done.identity, RunState.FAILED, error="boom", durability=Durability.WITH_NEXT_INTENT)
    writer.begin_attempt(fresh, fresh.inputs)
    assert state_on_disk(mpath, done.identity)[0] is RunState.FAILED


def test_waiting_writes_are_refused_by_a_reader_or_a_closed_manifest(writer: Manifest, mpath: Path) -> None:
    """Only the open writer accepts writes that wait for a commit, as it does any other write."""
    run = make_run()
    running(writer, run)
    with (
        Manifest.open(mpath, pipeline_name=NAME, writer=False) as reader,
        pytest.raises(ManifestError, match="read-only"),
    ):
        reader.finish(run.identity, RunState.COMPLETED, durability=Durability.SOON)
    writer.close()
    with pytest.raises(ManifestError, match="closed"):
        writer.set_remote_id(run.identity, "r2", durability=Durability.WITH_NEXT_INTENT)


def test_the_timer_follows_the_event_loop_that_is_running(writer: Manifest, mpath: Path) -> None:
    """A write left waiting when its event loop ended is committed by the next loop's timer: a timer of a loop
    that has ended never fires, so it is armed again."""
    a, b = make_run(1), make_run(2)
    running(writer, a)
    writer.begin_attempt(b, b.inputs)

    async def leave_waiting() -> None:
        writer.finish(a.identity, RunState.COMPLETED, durability=Durability.SOON)

    async def next_batch() -> RunState:
        writer.set_remote_id(b.identity, "rb", durability=Durability.WITH_NEXT_INTENT)
        for _ in range(500):  # poll for up to ~5 s
            if state_on_disk(mpath, b.identity)[1] is not None:
                break
            await asyncio.sleep(GROUP_COMMIT_DELAY / 5)
        return state_on_disk(mpath, a.identity)[0]

    asyncio.run(leave_waiting())
    assert state_on_disk(mpath, a.identity)[0] is RunState.RUNNING
    assert asyncio.run(next_batch()) is RunState.COMPLETED


def test_a_finish_replaced_inside_a_batch_is_not_lost(writer: Manifest, mpath: Path) -> None:
    """A commit forgets only the waiting writes it carried: a newer finish of the same run accepted while the
    transaction was open stays waiting, and lands with the next commit."""
    run = make_run()
    running(writer, run)
    writer.finish(run.identity, RunState.FAILED, error="first", durability=Durability.SOON)
    with writer.batch():  # carries the first finish
        writer.finish(run.identity, RunState.FAILED, error="second", durability=Durability.SOON)
    writer.flush()
    rec = writer.get(run.identity)
    assert rec is not None
    assert rec.error == "second"
