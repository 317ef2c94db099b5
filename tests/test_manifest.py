"""Tests for the SQLite manifest: round trips, transitions, the writer lock, readers during a run,
refusals (corrupt / other pipeline / newer schema), migrations, webhook dedup and merge."""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina_batch.errors import ManifestError, ManifestLockedError
from lamina_batch.manifest import (
    SCHEMA_VERSION,
    Manifest,
    _migrate_to_1,
    default_manifest_path,
    merge_manifests,
    utcnow_iso,
)
from lamina_batch.models import DownloadRecord, MatrixItem, PlannedRun, RemoteRun, RunOutput, RunState

REPO = Path(__file__).resolve().parents[1]
NAME = "catalogue-hero"


def make_run(
    n: int = 1,
    *,
    step: str = "hero",
    app: str = "app_7Hk2",
    key: str | None = None,
    axes: dict[str, str] | None = None,
    identity: str | None = None,
) -> PlannedRun:
    item = MatrixItem(
        row_number=n,
        row={"sku": f"SKU{n}", "name": f"Mug {n}"},
        axes=axes if axes is not None else {"aspect": "1:1"},
        key=key,
        item_id=f"item{n}",
    )
    return PlannedRun(
        identity=identity or f"{step}-{n}",
        step_id=step,
        app_id=app,
        item=item,
        inputs={"Prompt": f"photo of mug {n}", "Aspect Ratio": "1:1"},
        output_labels=("Hero Image",) if step == "hero" else None,
        needs={} if step == "hero" else {"hero": f"hero-{n}"},
    )


def ticking_clock(start: int = 0) -> Callable[[], str]:
    """A deterministic clock: one millisecond later on every call."""
    counter = itertools.count(start)
    return lambda: f"2025-01-01T00:00:{next(counter) / 1000:06.3f}Z"


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


def child(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --------------------------------------------------------------------------- basics


def test_utcnow_iso_is_utc_with_milliseconds() -> None:
    """Timestamps are ISO-8601 UTC with milliseconds and a Z suffix."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utcnow_iso())


def test_default_path_is_beside_the_pipeline(tmp_path: Path) -> None:
    """The default manifest is `<stem>.lamina.sqlite` beside the pipeline file."""
    assert default_manifest_path(tmp_path / "cat.yaml") == tmp_path / "cat.lamina.sqlite"


def test_new_manifest_uses_wal_and_records_name_and_version(mpath: Path) -> None:
    """A writer creates the file in WAL mode with the schema version and pipeline name in meta."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.pipeline_name == NAME
        assert m.get_meta("schema_version") == str(SCHEMA_VERSION)
        raw = sqlite3.connect(mpath)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            raw.close()
        assert m._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_round_trip_of_every_field(writer: Manifest) -> None:
    """Every RunRecord field written through the write API comes back with its model type."""
    run = make_run(3, key="SKU3", axes={"aspect": "16:9"})
    sent = {"Prompt": "photo of mug 3", "Aspect Ratio": "16:9", "n": 2, "flag": True}
    rec = writer.begin_attempt(run, sent)
    assert rec.state is RunState.SUBMITTING
    writer.set_remote_id(run.identity, "run_abc", RemoteRun(run_id="run_abc", status="queued"))
    outputs = (
        RunOutput(id="o1", label="Hero Image", type="image", value="https://x/y.png", status="completed"),
        RunOutput(id="o2", label="Alt", type="text", value={"k": [1, 2]}, status="error", error="boom"),
    )
    writer.finish(run.identity, RunState.COMPLETED, outputs=outputs, request_id="req_1", remote_duration=12.5)
    dl = DownloadRecord(
        output_index=0, label="Hero Image", url="https://x/y.png", path="out/a.png", size=7, sha256="ab"
    )
    writer.add_download(run.identity, dl)

    got = writer.get(run.identity)
    assert got is not None
    assert (got.identity, got.step_id, got.app_id) == (run.identity, "hero", "app_7Hk2")
    assert (got.row_number, got.row_key, got.item_id) == (3, "SKU3", "item3")
    assert got.row == {"sku": "SKU3", "name": "Mug 3"}
    assert got.axes == {"aspect": "16:9"}
    assert got.inputs == sent
    assert got.output_labels == ("Hero Image",)
    assert got.needs == {}
    assert got.state is RunState.COMPLETED
    assert got.remote_id == "run_abc"
    assert got.attempts == 1
    assert got.created_at
    assert got.updated_at
    assert got.submitted_at
    assert got.finished_at
    assert got.remote_duration == 12.5
    assert got.outputs == outputs
    assert got.error is None
    assert got.error_code is None
    assert got.request_id == "req_1"
    assert got.downloads == (dl,)

    down = make_run(3, step="banner", app="app_9Qx1")
    writer.begin_attempt(down, {"Product Image": "https://x/y.png"})
    writer.finish(down.identity, RunState.FAILED, error="model crashed", error_code="RUN_FAILED")
    got2 = writer.get(down.identity)
    assert got2 is not None
    assert got2.output_labels is None
    assert got2.needs == {"hero": "hero-3"}
    assert (got2.error, got2.error_code, got2.state) == ("model crashed", "RUN_FAILED", RunState.FAILED)


def test_transitions_are_appended_in_order(mpath: Path) -> None:
    """Every state change appends one transition row (from, to, at, detail); nothing is rewritten."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True, clock=ticking_clock()) as m:
        run = make_run()
        m.ensure_planned(run)
        m.begin_attempt(run, run.inputs)
        m.set_state(run.identity, RunState.UNKNOWN, error="reply lost", error_code="UNKNOWN_OUTCOME")
        m.set_state(run.identity, RunState.PENDING, detail="--restart-unknown")
        m.begin_attempt(run, run.inputs)
        m.set_remote_id(run.identity, "r2")
        m.finish(run.identity, RunState.COMPLETED)
        ts = m.transitions(run.identity)
    assert [(t.from_state, t.to_state) for t in ts] == [
        (None, RunState.PENDING),
        (RunState.PENDING, RunState.SUBMITTING),
        (RunState.SUBMITTING, RunState.UNKNOWN),
        (RunState.UNKNOWN, RunState.PENDING),
        (RunState.PENDING, RunState.SUBMITTING),
        (RunState.SUBMITTING, RunState.RUNNING),
        (RunState.RUNNING, RunState.COMPLETED),
    ]
    assert ts[2].detail == "UNKNOWN_OUTCOME: reply lost"
    assert ts[3].detail == "--restart-unknown"
    assert ts[4].detail == "attempt 2"
    assert ts[5].detail == "remote r2"
    assert [t.at for t in ts] == sorted(t.at for t in ts)


def test_begin_attempt_resets_the_previous_attempt(writer: Manifest) -> None:
    """A new attempt clears remote id, error and outputs, bumps attempts, and stores the inputs sent."""
    run = make_run()
    writer.begin_attempt(run, {"Prompt": "a"})
    writer.set_remote_id(run.identity, "r1")
    writer.finish(run.identity, RunState.FAILED, error="x", error_code="E")
    rec = writer.begin_attempt(run, {"Prompt": "b"})
    assert (rec.attempts, rec.state, rec.remote_id, rec.error, rec.finished_at) == (
        2,
        RunState.SUBMITTING,
        None,
        None,
        None,
    )
    assert rec.inputs == {"Prompt": "b"}


def test_begin_attempt_returns_what_a_read_would(writer: Manifest) -> None:
    """The record begin_attempt returns (built without a read) equals the one read back, first try and retry."""
    run = make_run(4, key="SKU4", axes={"aspect": "1:1"})
    first = writer.begin_attempt(run, {"Prompt": "a", "n": 2})
    assert first == writer.get(run.identity)
    writer.set_remote_id(run.identity, "r1")
    writer.finish(run.identity, RunState.FAILED, error="x", error_code="E")
    again = writer.begin_attempt(run, {"Prompt": "b"})
    assert again == writer.get(run.identity)
    assert again.created_at == first.created_at


@pytest.mark.parametrize("state", [RunState.RUNNING, RunState.COMPLETED])
def test_begin_attempt_refuses_a_run_that_would_be_paid_twice(writer: Manifest, state: RunState) -> None:
    """Starting again a run that is running or completed is refused, naming its remote id."""
    run = make_run()
    writer.begin_attempt(run, run.inputs)
    writer.set_remote_id(run.identity, "r_live")
    if state is RunState.COMPLETED:
        writer.finish(run.identity, state)
    with pytest.raises(ManifestError, match="r_live"):
        writer.begin_attempt(run, run.inputs)
    rec = writer.get(run.identity)
    assert rec is not None
    assert rec.state is state
    assert rec.attempts == 1


def test_finish_rejects_a_non_finished_state(writer: Manifest) -> None:
    """finish() only accepts finished states; other transitions go through set_state()."""
    run = make_run()
    writer.begin_attempt(run, run.inputs)
    with pytest.raises(ValueError, match="set_state"):
        writer.finish(run.identity, RunState.RUNNING)


def test_writes_to_an_unknown_identity_are_refused(writer: Manifest) -> None:
    """State writes for an identity the manifest does not hold raise ManifestError and write nothing."""
    with pytest.raises(ManifestError, match="no run nope"):
        writer.set_remote_id("nope", "r1")
    assert writer.known_remote_ids("app_7Hk2") == set()


def test_ensure_planned_inserts_once_and_follows_moved_rows(writer: Manifest) -> None:
    """ensure_planned inserts a pending run once; a later call only refreshes the row position."""
    run = make_run(5)
    assert writer.ensure_planned(run).state is RunState.PENDING
    writer.begin_attempt(run, run.inputs)
    moved = PlannedRun(
        identity=run.identity,
        step_id=run.step_id,
        app_id=run.app_id,
        item=MatrixItem(
            row_number=9, row={"sku": "SKU5", "name": "Mug 5"}, axes=run.item.axes, key=None, item_id="item5"
        ),
        inputs=run.inputs,
        output_labels=run.output_labels,
    )
    rec = writer.ensure_planned(moved)
    assert (rec.row_number, rec.state) == (9, RunState.SUBMITTING)
    assert len(writer.transitions(run.identity)) == 2  # moving a row is not a transition
    writer.set_state(run.identity, RunState.PENDING)
    assert writer.begin_attempt(run, run.inputs).row_number == 5  # the start follows the row too
    assert writer.ensure_planned_many([make_run(6), make_run(7), moved]) == 2


def test_downloads_replace_by_index_and_clear(writer: Manifest) -> None:
    """add_download replaces a record of the same output index; clear_downloads empties the list."""
    run = make_run()
    writer.begin_attempt(run, run.inputs)
    a = DownloadRecord(0, "Hero Image", "u0", "p0", 1, "s0")
    b = DownloadRecord(1, "Alt", "u1", "p1", 2, "s1")
    a2 = DownloadRecord(0, "Hero Image", "u0", "p0", 3, "s2")
    for d in (b, a, a2):
        writer.add_download(run.identity, d)
    rec = writer.get(run.identity)
    assert rec is not None
    assert rec.downloads == (a2, b)
    writer.clear_downloads(run.identity)
    rec = writer.get(run.identity)
    assert rec is not None
    assert rec.downloads == ()


def test_webhook_deliveries_are_deduplicated_across_reopen(mpath: Path) -> None:
    """record_webhook is True for a new request id and False for a redelivery, even after reopening."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.record_webhook("req_1", "run_1", "completed") is True
        assert m.record_webhook("req_1", "run_1", "completed") is False
        assert m.record_webhook("req_2", "run_1", "completed") is True
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.record_webhook("req_1", "run_1", "completed") is False


# --------------------------------------------------------------------------- reads


def test_iter_runs_orders_by_row_then_step_and_filters(mpath: Path) -> None:
    """iter_runs yields by row number then insertion (step) order, across pages, with step/state filters."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        runs = []
        for n in range(1200, 0, -1):  # inserted in reverse row order, more than two pages
            runs += [make_run(n), make_run(n, step="banner", app="app_9Qx1")]
        m.ensure_planned_many(runs)
        m.begin_attempt(make_run(7), {})
        got = [(r.row_number, r.step_id) for r in m.iter_runs()]
        assert got == [(n, s) for n in range(1, 1201) for s in ("hero", "banner")]
        assert [r.row_number for r in m.iter_runs(step_id="banner")][:3] == [1, 2, 3]
        assert [r.identity for r in m.iter_runs(states=[RunState.SUBMITTING])] == ["hero-7"]
        assert list(m.iter_runs(states=[])) == []
        assert next(iter(m.iter_runs(step_id="hero", states=["submitting", "running"]))).identity == "hero-7"


def test_counts_by_step_and_state(writer: Manifest) -> None:
    """counts() gives, per step in order of appearance, every state with zeros included."""
    writer.ensure_planned_many([make_run(1), make_run(2), make_run(1, step="banner", app="app_9Qx1")])
    writer.begin_attempt(make_run(2), {})
    counts = writer.counts()
    assert list(counts) == ["hero", "banner"]
    assert counts["hero"][RunState.PENDING] == 1
    assert counts["hero"][RunState.SUBMITTING] == 1
    assert counts["hero"][RunState.COMPLETED] == 0
    assert sum(counts["banner"].values()) == 1


def test_get_many_by_remote_id_and_known_remote_ids(writer: Manifest) -> None:
    """Lookups by identity batch, by remote id (including an earlier attempt's) and per-app remote ids."""
    runs = [make_run(n) for n in range(1, 1100)]
    writer.ensure_planned_many(runs)
    run = runs[0]
    writer.begin_attempt(run, {})
    writer.set_remote_id(run.identity, "old")
    writer.finish(run.identity, RunState.FAILED)
    writer.begin_attempt(run, {})
    writer.set_remote_id(run.identity, "new")
    found = writer.get_many([r.identity for r in runs] + ["missing"])
    assert len(found) == len(runs)
    assert "missing" not in found
    by_new, by_old = writer.by_remote_id("new"), writer.by_remote_id("old")
    assert by_new is not None
    assert by_new.identity == run.identity
    assert by_old is not None
    assert by_old.identity == run.identity
    assert writer.by_remote_id("nobody") is None
    assert writer.known_remote_ids("app_7Hk2") == {"old", "new"}
    assert writer.known_remote_ids("app_other") == set()


def test_median_duration_of_recent_completed_runs(mpath: Path) -> None:
    """median_duration is the median of the app's completed runs' remote durations, updated as runs finish."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.median_duration("app_7Hk2") is None
        for n, d in enumerate([10.0, 30.0, 20.0], start=1):
            run = make_run(n)
            m.begin_attempt(run, {})
            m.finish(run.identity, RunState.COMPLETED, remote_duration=d)
        failed = make_run(9)
        m.begin_attempt(failed, {})
        m.finish(failed.identity, RunState.FAILED, remote_duration=999.0)
        assert m.median_duration("app_7Hk2") == 20.0
        run = make_run(4)
        m.begin_attempt(run, {})
        m.finish(run.identity, RunState.COMPLETED, remote_duration=40.0)
        assert m.median_duration("app_7Hk2") == 25.0
    with Manifest.open(mpath, pipeline_name=NAME, writer=False) as r:
        assert r.median_duration("app_7Hk2") == 25.0
        assert r.median_duration("app_9Qx1") is None


def test_duration_quantile_is_nearest_rank(mpath: Path) -> None:
    """duration_quantile picks by nearest rank (0.95 of 20 durations is the 19th), the median by averaging."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.duration_quantile("app_7Hk2", 0.95) is None
        for n in range(1, 21):
            run = make_run(n)
            m.begin_attempt(run, {})
            m.finish(run.identity, RunState.COMPLETED, remote_duration=float(21 - n))
        assert m.duration_quantile("app_7Hk2", 0.95) == 19.0
        assert m.duration_quantile("app_7Hk2", 1.0) == 20.0
        assert m.duration_quantile("app_7Hk2", 0.5) == 10.5


# --------------------------------------------------------------------------- lock and concurrent readers


@pytest.mark.parametrize("ending", ["exit", "kill -9"])
def test_second_writer_in_another_process_is_refused_naming_the_pid(mpath: Path, ending: str) -> None:
    """While another process holds the writer lock a writer gets ManifestLockedError naming its pid; the lock
    goes with the process, even one killed with -9 mid-run, and its committed writes survive."""
    proc = child(
        "import sys\n"
        "from lamina_batch.manifest import Manifest\n"
        "from lamina_batch.models import MatrixItem, PlannedRun\n"
        f"m = Manifest.open({str(mpath)!r}, pipeline_name={NAME!r}, writer=True)\n"
        "item = MatrixItem(row_number=1, row={}, axes={}, key=None, item_id='i1')\n"
        "m.begin_attempt(PlannedRun('hero-1', 'hero', 'app_7Hk2', item, {}, None), {'Prompt': 'x'})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "m.close()\n"
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(ManifestLockedError) as info:
            Manifest.open(mpath, pipeline_name=NAME, writer=True)
        assert f"pid {proc.pid} on " in str(info.value)
        assert info.value.path == str(mpath)
        if ending == "kill -9":
            proc.kill()
    finally:
        proc.communicate(timeout=20)
    assert proc.returncode == (0 if ending == "exit" else -9)
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        rec = m.get("hero-1")
        assert rec is not None
        assert (rec.state, rec.inputs) == (RunState.SUBMITTING, {"Prompt": "x"})


def test_second_writer_in_the_same_process_is_refused(writer: Manifest, mpath: Path) -> None:
    """The lock is per open, so even this process cannot open a second writer; closing releases it."""
    with pytest.raises(ManifestLockedError, match=f"pid {os.getpid()}"):
        Manifest.open(mpath, pipeline_name=NAME, writer=True)
    writer.close()
    Manifest.open(mpath, pipeline_name=NAME, writer=True).close()


def test_reader_sees_each_committed_write_while_the_writer_runs(writer: Manifest, mpath: Path) -> None:
    """A reader opened during a run works without the lock and sees every write as soon as it returns."""
    run = make_run()
    writer.ensure_planned(run)
    with Manifest.open(mpath, pipeline_name=NAME, writer=False) as reader:
        assert reader.get(run.identity) is not None
        writer.begin_attempt(run, run.inputs)
        rec = reader.get(run.identity)
        assert rec is not None
        assert rec.state is RunState.SUBMITTING
        writer.set_remote_id(run.identity, "r1")
        assert reader.counts()["hero"][RunState.RUNNING] == 1
        with pytest.raises(ManifestError, match="read-only"):
            reader.set_state(run.identity, RunState.PENDING)


def test_reader_in_another_process_while_writer_keeps_writing(writer: Manifest, mpath: Path) -> None:
    """A reader process counts runs while this process holds the lock and keeps committing."""
    writer.ensure_planned_many(make_run(n) for n in range(1, 51))
    proc = child(
        "import sys\n"
        "from lamina_batch.manifest import Manifest\n"
        "for line in sys.stdin:\n"
        f"    with Manifest.open({str(mpath)!r}, pipeline_name={NAME!r}, writer=False) as m:\n"
        "        print(sum(sum(c.values()) for c in m.counts().values()), flush=True)\n"
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        seen = []
        for n in range(51, 54):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            seen.append(int(proc.stdout.readline()))
            writer.begin_attempt(make_run(n), {})
        assert seen == [50, 51, 52]
    finally:
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_reader_of_a_missing_file(mpath: Path) -> None:
    """A reader of a missing manifest gets an empty one (create=True) or a clear error, and writes no file."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=False) as m:
        assert list(m.iter_runs()) == []
        assert m.counts() == {}
        assert m.schema_version == 0
    with pytest.raises(ManifestError, match=r"no manifest at .* yet; run the pipeline first"):
        Manifest.open(mpath, pipeline_name=NAME, writer=False, create=False)
    with pytest.raises(ManifestError, match="no manifest at"):
        Manifest.open(mpath, pipeline_name=NAME, writer=True, create=False)
    assert not mpath.exists()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("writer_mode", [True, False])
def test_non_sqlite_file_is_refused(mpath: Path, writer_mode: bool) -> None:
    """A file that is not SQLite is refused as 'not a lamina-batch manifest', by writers and readers."""
    mpath.write_bytes(b"sku,name\nA1,Mug\n" * 200)
    with pytest.raises(ManifestError, match="is not a lamina-batch manifest"):
        Manifest.open(mpath, pipeline_name=NAME, writer=writer_mode)


def test_foreign_sqlite_database_is_refused(mpath: Path) -> None:
    """An SQLite database with other tables is not mistaken for an empty manifest."""
    raw = sqlite3.connect(mpath)
    raw.execute("CREATE TABLE customers (id INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(ManifestError, match="without lamina-batch tables"):
        Manifest.open(mpath, pipeline_name=NAME, writer=True)


def test_damaged_manifest_is_refused_by_the_integrity_check(mpath: Path) -> None:
    """A manifest with a clobbered data page (header and schema intact) is refused when a writer opens it."""
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        m.ensure_planned_many(make_run(n) for n in range(1, 400))
    data = bytearray(mpath.read_bytes())
    page = len(data) // 4096 // 2  # a page in the middle: only a check of every page finds it
    data[page * 4096 : (page + 1) * 4096] = b"\xff" * 4096
    mpath.write_bytes(bytes(data))
    for _ in range(2):  # the failed open released the lock: the second attempt is refused the same way
        with pytest.raises(ManifestError, match=r"is not a lamina-batch manifest.*malformed"):
            Manifest.open(mpath, pipeline_name=NAME, writer=True)


def test_manifest_of_another_pipeline_is_refused(mpath: Path) -> None:
    """Opening another pipeline's manifest names both pipelines and the fix."""
    Manifest.open(mpath, pipeline_name="other-batch", writer=True).close()
    for writer_mode in (True, False):
        with pytest.raises(ManifestError) as info:
            Manifest.open(mpath, pipeline_name=NAME, writer=writer_mode)
        text = str(info.value)
        assert "'other-batch'" in text
        assert f"'{NAME}'" in text
        assert "--manifest" in text
        assert "delete" in text


def test_newer_schema_is_refused(mpath: Path) -> None:
    """A manifest written by a newer lamina-batch is refused, naming both schema versions."""
    Manifest.open(mpath, pipeline_name=NAME, writer=True).close()
    raw = sqlite3.connect(mpath)
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    for writer_mode in (True, False):
        with pytest.raises(ManifestError, match=f"version 99.*version {SCHEMA_VERSION}"):
            Manifest.open(mpath, pipeline_name=NAME, writer=writer_mode)


# --------------------------------------------------------------------------- migrations


def write_v1_fixture(path: Path) -> None:
    """A schema-1 manifest (before webhooks and remote-id history) holding one running run."""
    raw = sqlite3.connect(path, isolation_level=None)
    _migrate_to_1(raw)
    raw.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('pipeline_name', ?)", (NAME,))
    raw.execute(
        "INSERT INTO runs (identity, step_id, app_id, row_number, row_key, item_id, row_json, axes_json, "
        "inputs_json, output_labels_json, needs_json, state, remote_id, attempts, created_at, updated_at) "
        "VALUES ('hero-1', 'hero', 'app_7Hk2', 1, NULL, 'item1', '{}', '{}', '{}', NULL, '{}', 'running', "
        "'r_v1', 1, '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')"
    )
    raw.close()


def test_v1_manifest_is_migrated_by_the_writer(mpath: Path) -> None:
    """A writer upgrades a v1 file in place, keeping its runs and backfilling the remote-id history."""
    write_v1_fixture(mpath)
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        assert m.get_meta("schema_version") == str(SCHEMA_VERSION)
        rec = m.get("hero-1")
        assert rec is not None
        assert rec.state is RunState.RUNNING
        assert m.known_remote_ids("app_7Hk2") == {"r_v1"}
        assert m.record_webhook("req", "r_v1", "completed") is True


def test_v1_manifest_is_readable_without_being_changed(mpath: Path) -> None:
    """A reader upgrades a private in-memory copy of an old file and leaves the file at its version."""
    write_v1_fixture(mpath)
    with Manifest.open(mpath, pipeline_name=NAME, writer=False) as m:
        assert m.schema_version == 1
        assert m.known_remote_ids("app_7Hk2") == {"r_v1"}
    raw = sqlite3.connect(mpath)
    try:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    finally:
        raw.close()


# --------------------------------------------------------------------------- merge


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


def test_batch_commits_all_or_nothing(writer: Manifest, mpath: Path) -> None:
    """Writes inside batch() become visible together at its end, and an error inside it undoes them all."""
    runs = [make_run(n) for n in range(1, 4)]
    writer.ensure_planned_many(runs)
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


def _reader_state(mpath: Path, identity: str) -> str:
    conn = sqlite3.connect(mpath)
    try:
        return str(conn.execute("SELECT state FROM runs WHERE identity = ?", (identity,)).fetchone()[0])
    finally:
        conn.close()


def test_deferred_finish_rides_with_the_next_commit(writer: Manifest, mpath: Path) -> None:
    """finish(defer=True) is not on disk until the next write transaction, which carries it."""
    a, b = make_run(1), make_run(2)
    writer.begin_attempt(a, a.inputs)
    writer.set_remote_id(a.identity, "r1")
    writer.finish(a.identity, RunState.COMPLETED, remote_duration=2.0, defer=True, app_id=a.app_id)
    assert _reader_state(mpath, a.identity) == "running"
    assert writer.median_duration(a.app_id) == 2.0
    writer.begin_attempt(b, b.inputs)
    assert _reader_state(mpath, a.identity) == "completed"
    assert [t.to_state for t in writer.transitions(a.identity)][-1] is RunState.COMPLETED


def test_deferred_finish_is_seen_by_reads_and_flushed_on_close(mpath: Path) -> None:
    """Reading a deferred-finished run writes it first; close() writes whatever is still deferred."""
    run_a, run_b = make_run(1), make_run(2)
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        for r in (run_a, run_b):
            m.begin_attempt(r, r.inputs)
            m.set_remote_id(r.identity, f"remote-{r.identity}")
        m.finish(run_a.identity, RunState.COMPLETED, defer=True, app_id=run_a.app_id)
        rec = m.get(run_a.identity)
        assert rec is not None
        assert rec.state is RunState.COMPLETED
        m.finish(run_b.identity, RunState.COMPLETED, defer=True, app_id=run_b.app_id)
        assert _reader_state(mpath, run_b.identity) == "running"
    assert _reader_state(mpath, run_b.identity) == "completed"


def test_deferred_finish_survives_a_rolled_back_transaction(writer: Manifest, mpath: Path) -> None:
    """A write that fails (and rolls back) keeps the deferred finish pending; the next write commits it."""
    a = make_run(1)
    writer.begin_attempt(a, a.inputs)
    writer.set_remote_id(a.identity, "r1")
    writer.finish(a.identity, RunState.COMPLETED, defer=True, app_id=a.app_id)
    with pytest.raises(ManifestError):
        writer.begin_attempt(a, a.inputs)  # completed now (inside the transaction): refused, rolled back
    assert _reader_state(mpath, a.identity) == "running"
    writer.flush()
    assert _reader_state(mpath, a.identity) == "completed"


def _state_on_disk(mpath: Path, identity: str) -> tuple[str, str | None]:
    raw = sqlite3.connect(mpath)
    try:
        row = raw.execute("SELECT state, remote_id FROM runs WHERE identity = ?", (identity,)).fetchone()
    finally:
        raw.close()
    return row[0], row[1]


def test_deferred_remote_id_is_committed_with_the_next_intent(writer: Manifest, mpath: Path) -> None:
    """A remote id set with defer=True is not on disk until the next write, and the next intent carries it."""
    first, second = make_run(1), make_run(2)
    writer.begin_attempt(first, {"Prompt": "one"})
    writer.set_remote_id(first.identity, "r1", defer=True)
    assert _state_on_disk(mpath, first.identity) == ("submitting", None)
    writer.begin_attempt(second, {"Prompt": "two"})
    assert _state_on_disk(mpath, first.identity) == ("running", "r1")
    assert _state_on_disk(mpath, second.identity) == ("submitting", None)
    states = [t.to_state for t in writer.transitions(first.identity)]
    assert states == [RunState.SUBMITTING, RunState.RUNNING]


def test_deferred_remote_id_is_seen_by_reads_flush_and_close(writer: Manifest, mpath: Path) -> None:
    """Reads of a run with a deferred id flush it first; flush() and close() write whatever is pending."""
    a, b = make_run(1), make_run(2)
    writer.begin_attempt(a, {"Prompt": "a"})
    writer.begin_attempt(b, {"Prompt": "b"})
    writer.set_remote_id(a.identity, "ra", defer=True)
    got = writer.get(a.identity)
    assert got is not None
    assert (got.state, got.remote_id) == (RunState.RUNNING, "ra")
    writer.set_remote_id(b.identity, "rb", defer=True)
    writer.flush()
    assert _state_on_disk(mpath, b.identity) == ("running", "rb")
    c = make_run(3)
    writer.begin_attempt(c, {"Prompt": "c"})
    writer.set_remote_id(c.identity, "rc", defer=True)
    writer.close()
    assert _state_on_disk(mpath, c.identity) == ("running", "rc")


def test_intent_commit_leaves_other_deferred_finishes_pending(writer: Manifest, mpath: Path) -> None:
    """An intent does not carry other runs' deferred finishes (they wait for the flush), but its own goes first."""
    done, fresh = make_run(1), make_run(2)
    writer.begin_attempt(done, {"Prompt": "done"})
    writer.set_remote_id(done.identity, "r1")
    writer.finish(done.identity, RunState.FAILED, error="boom", defer=True, app_id=done.app_id)
    writer.begin_attempt(fresh, {"Prompt": "fresh"})
    assert _state_on_disk(mpath, done.identity) == ("running", "r1")
    writer.begin_attempt(done, {"Prompt": "done"})  # a retry of the failed run: its finish lands first
    assert _state_on_disk(mpath, done.identity) == ("submitting", None)
    assert [t.to_state for t in writer.transitions(done.identity)][-2:] == [RunState.FAILED, RunState.SUBMITTING]
