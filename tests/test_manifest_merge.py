"""merge_manifests: shards unioned, the more advanced state kept, refusals, atomic replacement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from manifest_helpers import NAME, make_run, ticking_clock

from lamina_batch.errors import ManifestError, ManifestLockedError
from lamina_batch.manifest import Manifest, merge_manifests
from lamina_batch.models import RunState


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


def shard(path: Path, build: Callable[[Manifest], object], *, name: str = NAME, start: int = 0) -> Path:
    with Manifest.open(path, pipeline_name=name, writer=True, clock=ticking_clock(start)) as m:
        build(m)
    return path


def test_merge_unions_disjoint_shards(tmp_path: Path) -> None:
    """Disjoint shards merge into one manifest with every run, transition and webhook, in row order."""

    def a(m: Manifest) -> None:
        for n in (1, 3):
            m.begin_attempt(make_run(n), {})
            m.set_remote_id(f"hero-{n}", f"ra{n}")
        m.record_webhook("wa", "ra1", "completed")

    def b(m: Manifest) -> None:
        m.ensure_planned(make_run(2))
        m.record_webhook("wb", "rb", "completed")

    dest = tmp_path / "all.sqlite"
    summary = merge_manifests([shard(tmp_path / "a.sqlite", a), shard(tmp_path / "b.sqlite", b)], dest)
    assert (summary.runs, summary.conflicts, summary.sources, summary.webhooks) == (3, 0, 2, 2)
    with Manifest.open(dest, pipeline_name=NAME, writer=False, create=False) as m:
        assert [r.identity for r in m.iter_runs()] == ["hero-1", "hero-2", "hero-3"]
        assert len(m.transitions("hero-1")) == 2
        assert m.known_remote_ids("app_7Hk2") == {"ra1", "ra3"}
    with Manifest.open(dest, pipeline_name=NAME, writer=True) as m:
        assert m.record_webhook("wb", "rb", "completed") is False


@pytest.mark.parametrize(
    ("state_a", "state_b", "winner"),
    [
        (RunState.COMPLETED, RunState.RUNNING, "a"),
        (RunState.RUNNING, RunState.SUBMITTING, "a"),
        (RunState.SUBMITTING, RunState.FAILED, "a"),
        (RunState.UNKNOWN, RunState.PENDING, "a"),
        (RunState.PENDING, RunState.COMPLETED, "b"),
        (RunState.FAILED, RunState.TIMED_OUT, "b"),  # same rank: the later update (shard b's clock) wins
    ],
)
def test_merge_keeps_the_more_advanced_state(tmp_path: Path, state_a: RunState, state_b: RunState, winner: str) -> None:
    """Where both shards hold an identity, the more advanced state wins, then the later updated_at."""

    def put(state: RunState, tag: str) -> Callable[[Manifest], None]:
        def build(m: Manifest) -> None:
            run = make_run(1)
            m.ensure_planned(run)
            if state is RunState.PENDING:
                return
            m.begin_attempt(run, {"from": tag})
            if state is RunState.SUBMITTING:
                return
            if state is RunState.UNKNOWN:
                m.set_state(run.identity, state, error="reply lost")
                return
            m.set_remote_id(run.identity, f"r_{tag}")
            if state is not RunState.RUNNING:
                m.finish(run.identity, state)

        return build

    a = shard(tmp_path / "a.sqlite", put(state_a, "a"), start=0)
    b = shard(tmp_path / "b.sqlite", put(state_b, "b"), start=1000)
    dest = tmp_path / "all.sqlite"
    for order in ([a, b], [b, a]):
        summary = merge_manifests(order, dest)
        assert (summary.runs, summary.conflicts) == (1, 1)
        with Manifest.open(dest, pipeline_name=NAME, writer=False, create=False) as m:
            rec = m.get("hero-1")
            assert rec is not None
            assert rec.state is (state_a if winner == "a" else state_b)
            assert rec.inputs == ({"from": winner} if rec.state is not RunState.PENDING else rec.inputs)


def test_merge_does_not_duplicate_identical_transitions(tmp_path: Path) -> None:
    """Merging a manifest with a copy of itself keeps each transition once."""

    def build(m: Manifest) -> None:
        m.begin_attempt(make_run(1), {})
        m.set_remote_id("hero-1", "r1")

    a = shard(tmp_path / "a.sqlite", build)
    b = tmp_path / "b.sqlite"
    b.write_bytes(a.read_bytes())
    summary = merge_manifests([a, b], tmp_path / "all.sqlite")
    assert summary.transitions == 2
    assert summary.conflicts == 1


def test_merge_refuses_mixed_pipelines(tmp_path: Path) -> None:
    """Sources of different pipelines are refused, naming the odd file and both names; nothing is written."""
    a = shard(tmp_path / "a.sqlite", lambda m: None)
    b = shard(tmp_path / "b.sqlite", lambda m: None, name="other")
    dest = tmp_path / "all.sqlite"
    with pytest.raises(ManifestError, match=r"b\.sqlite belongs to pipeline 'other'.*'catalogue-hero'"):
        merge_manifests([a, b], dest)
    assert not dest.exists()


def test_merge_refuses_dest_among_sources(tmp_path: Path) -> None:
    """Writing the merge over one of its sources is refused before anything is touched."""
    a = shard(tmp_path / "a.sqlite", lambda m: m.ensure_planned(make_run(1)))
    before = a.read_bytes()
    with pytest.raises(ManifestError, match="is also a source"):
        merge_manifests([a, tmp_path / "." / "a.sqlite"], tmp_path / "a.sqlite")
    assert a.read_bytes() == before


def test_merge_replaces_dest_atomically(tmp_path: Path) -> None:
    """An existing dest is replaced whole (no stale WAL replayed, no temp files left behind)."""
    a = shard(tmp_path / "a.sqlite", lambda m: m.ensure_planned(make_run(1)))
    dest = tmp_path / "all.sqlite"
    shard(dest, lambda m: m.ensure_planned_many(make_run(n) for n in range(10, 20)))
    Path(str(dest) + "-wal").write_bytes(b"stale")
    merge_manifests([a], dest)
    with Manifest.open(dest, pipeline_name=NAME, writer=True) as m:
        assert [r.identity for r in m.iter_runs()] == ["hero-1"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_merge_refuses_a_dest_in_use(tmp_path: Path) -> None:
    """A dest that a running batch is writing is not swapped out from under it."""
    a = shard(tmp_path / "a.sqlite", lambda m: m.ensure_planned(make_run(1)))
    dest = tmp_path / "all.sqlite"
    with Manifest.open(dest, pipeline_name=NAME, writer=True), pytest.raises(ManifestLockedError):
        merge_manifests([a], dest)


def test_merge_of_overlapping_manifests_names_the_runs_paid_twice_and_keeps_the_dropped(tmp_path: Path) -> None:
    """Two sources that ran the same identity as different remote runs: the summary counts the identity once as
    run more than once and names the dropped remote run; the merged history notes it and keeps its remote id."""

    def run_as(remote: str, n: int = 1) -> Callable[[Manifest], object]:
        def build(m: Manifest) -> None:
            m.begin_attempt(make_run(n), {})
            m.set_remote_id(f"hero-{n}", remote)
            m.finish(f"hero-{n}", RunState.COMPLETED)

        return build

    a = shard(tmp_path / "a.sqlite", run_as("ra"))
    b = shard(tmp_path / "b.sqlite", run_as("rb"), start=100)  # later: b's completed row wins the tie
    c = shard(tmp_path / "c.sqlite", run_as("rc", n=2))
    dest = tmp_path / "all.sqlite"
    summary = merge_manifests([a, b, c], dest)
    assert summary.run_more_than_once == 1
    assert [(d.identity, d.remote_id, d.state, d.source, d.kept) for d in summary.dropped] == [
        ("hero-1", "ra", "completed", str(a), "rb")
    ]
    with Manifest.open(dest, pipeline_name=NAME, writer=False, create=False) as m:
        rec = m.get("hero-1")
        assert rec is not None
        assert rec.remote_id == "rb"
        notes = [t.detail for t in m.transitions("hero-1") if t.detail and t.detail.startswith("merge:")]
        assert notes == [f"merge: dropped remote run ra (completed in {a}); kept rb"]
        assert m.known_remote_ids("app_7Hk2") == {"ra", "rb", "rc"}
    again = merge_manifests([dest, c], tmp_path / "again.sqlite")  # the same remote run twice is no overlap
    assert (again.run_more_than_once, again.dropped) == (0, ())


def test_merge_keeps_each_sources_earlier_attempts(tmp_path: Path) -> None:
    """A run redone in one shard keeps its superseded attempt (remote run, cost) in the merged manifest."""

    def a(m: Manifest) -> None:
        run = make_run(1)
        m.begin_attempt(run, {"Prompt": "a"}, credits_estimate=4.0)
        m.set_remote_id(run.identity, "ra1")
        m.finish(run.identity, RunState.COMPLETED)
        m.begin_attempt(run, {"Prompt": "b"}, redo=True, credits_estimate=4.0)

    def b(m: Manifest) -> None:
        m.ensure_planned(make_run(2))

    dest = tmp_path / "all.sqlite"
    merge_manifests([shard(tmp_path / "a.sqlite", a), shard(tmp_path / "b.sqlite", b)], dest)
    with Manifest.open(dest, pipeline_name=NAME, writer=False, create=False) as m:
        past = m.past_attempts("hero-1")["hero-1"]
    assert [(p.attempt, p.state, p.remote_id) for p in past] == [(1, RunState.COMPLETED, "ra1")]
