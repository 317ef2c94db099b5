"""Never pay twice under kill -9: the real CLI killed at every named crash point and by the emulator as a run is
created, on both API dialects; the write-ahead intent and the remote id found on disk where they are promised;
the kill loop. Every test counts starts at the emulator."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Row,
    assert_exactly_once,
    cli_env,
    manifest_path,
    manifest_rows,
    manifest_states,
    run_cli,
    start_cli,
    wait_for,
    write_pipeline,
)

from lamina_batch.crash import POINTS, _parse
from lamina_batch.emulator import Emulator

MakeEmu = Callable[..., Emulator]
FAST_POLL = "0.05s"  # the executions API polls: keep its first poll quick with short emulator runs


def pipeline_for(tmp_path: Path, api: str, rows: int = 6, **kw: Any) -> Path:
    """Runs API: hero + banner (two apps, so two starts can be in flight); executions API: hero only, so a
    run left `unknown` has no downstream run waiting on it."""
    options: dict[str, Any] = {"banner": api == "runs", "poll_interval": FAST_POLL, **kw}
    return write_pipeline(tmp_path, rows, api=api, **options)


def inputs_of(emu: Emulator, nth: int) -> dict[str, Any]:
    """The inputs of the `nth` run the emulator created (1-based), in creation order."""
    _, canonical = list(emu.stats.starts_by_inputs)[nth - 1]
    decoded: dict[str, Any] = json.loads(canonical)
    return decoded


def row_with(rows: list[Row], inputs: dict[str, Any]) -> Row:
    (row,) = [r for r in rows if r.inputs == inputs]
    return row


def test_crash_points_are_named_in_start_path_order() -> None:
    """The crash points process tests rely on exist under their contract names, in the order a start meets them."""
    assert POINTS == ("before-intent", "after-intent", "after-send", "after-reply", "after-id", "before-download")


def test_crashpoint_spec_parsing() -> None:
    """LAMINA_BATCH_CRASHPOINT accepts `name` (first hit) and `name:N` (N-th hit); a bad N means the first."""
    assert _parse(None) is None
    assert _parse("") is None
    assert _parse("after-intent") == ("after-intent", 1)
    assert _parse("after-reply:3") == ("after-reply", 3)
    assert _parse("after-send:x") == ("after-send", 1)


def test_crashpoint_kills_at_its_nth_hit_and_ignores_other_names() -> None:
    """LAMINA_BATCH_CRASHPOINT=name:N SIGKILLs the process at the N-th hit of `name`, not before, not at others."""
    code = (
        "from lamina_batch.crash import crashpoint\n"
        "crashpoint('after-send'); crashpoint('after-id'); crashpoint('after-id'); print('alive', flush=True)\n"
        "crashpoint('after-send'); print('not reached', flush=True)\n"
    )
    env = {**os.environ, "LAMINA_BATCH_CRASHPOINT": "after-send:2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout == "alive\n"


# ---- named crash points, both dialects --------------------------------------------------------------------

CLEAN = "clean"  # the resume finishes everything, each run started exactly once
UNKNOWN = "unknown"  # executions API: the start may have been sent and there is no runs list to ask

EXPECTED = {("runs", point): CLEAN for point in POINTS} | {
    ("executions", "before-intent"): CLEAN,
    ("executions", "after-intent"): UNKNOWN,
    ("executions", "after-send"): UNKNOWN,
    ("executions", "after-reply"): UNKNOWN,
    ("executions", "after-id"): CLEAN,  # the id is committed at once on this dialect
    ("executions", "before-download"): CLEAN,
}


@pytest.mark.parametrize(("api", "point"), sorted(EXPECTED), ids=[f"{a}-{p}" for a, p in sorted(EXPECTED)])
def test_kill_at_each_crash_point_then_resume(api: str, point: str, tmp_path: Path, make_emulator: MakeEmu) -> None:
    """Killed at each crash point, a resume pays nothing twice; an outcome it cannot know stays `unknown`."""
    # Runs API, and the executions API where the manifest knows the outcome: every run completes with one start
    # and every remote run accounted for. Otherwise (executions, no runs list) the run is `unknown`, exit 1, and
    # not sent again; --restart-unknown then starts it once more, the user's explicit choice.
    emu = make_emulator(duration=(0.05, 0.2))
    pipeline = pipeline_for(tmp_path, api, download=True)
    total = 12 if api == "runs" else 6
    crashed = run_cli(pipeline, cli_env(emu, LAMINA_BATCH_CRASHPOINT=f"{point}:3"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    env = cli_env(emu)
    final = run_cli(pipeline, env)
    if EXPECTED[(api, point)] == CLEAN:
        assert final.returncode == 0, final.stderr
        assert manifest_states(pipeline) == {"completed": total}
        assert_exactly_once(emu, total)
        assert {r.remote_id for r in manifest_rows(manifest_path(pipeline))} == set(emu.run_ids())
        assert len(list((tmp_path / "out").rglob("*.png"))) == total
        return
    assert final.returncode == 1, final.stderr
    assert manifest_states(pipeline) == {"completed": total - 1, "unknown": 1}
    assert emu.stats.duplicate_starts() == {}  # a plain resume never sends an unknown start again
    (unknown,) = [r for r in manifest_rows(manifest_path(pipeline)) if r.state == "unknown"]
    sent_before = emu.stats.starts  # 5 if the 3rd start never left (after-intent), else 6
    assert sent_before == (total - 1 if point == "after-intent" else total)
    restarted = run_cli(pipeline, env, "--restart-unknown")
    assert restarted.returncode == 0, restarted.stderr
    assert manifest_states(pipeline) == {"completed": total}
    assert emu.stats.starts == sent_before + 1
    key = ("app_7Hk2", json.dumps(unknown.inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    assert emu.stats.duplicate_starts() == ({} if point == "after-intent" else {key: 2})


def test_after_id_on_the_executions_api_leaves_the_id_on_disk(tmp_path: Path, make_emulator: MakeEmu) -> None:
    """Executions API: killed right after a remote id was handed to the manifest, the id is already on disk."""
    emu = make_emulator(duration=(5.0, 5.0))  # nothing finishes before the kill
    pipeline = pipeline_for(tmp_path, "executions", concurrency=4)
    crashed = run_cli(pipeline, cli_env(emu, LAMINA_BATCH_CRASHPOINT="after-id:3"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert emu.stats.starts == 3
    rows = manifest_rows(manifest_path(pipeline))
    third = row_with(rows, inputs_of(emu, 3))
    assert (third.state, third.remote_id) == ("running", emu.run_ids()[2])
    assert not [r for r in rows if r.state == "submitting"]


def test_after_id_on_the_runs_api_may_defer_and_resume_adopts(tmp_path: Path, make_emulator: MakeEmu) -> None:
    """Runs API: killed right after the id was handed over (maybe deferred), the resume adopts that remote run."""
    emu = make_emulator(duration=(0.05, 0.2))
    pipeline = pipeline_for(tmp_path, "runs", banner=False)
    crashed = run_cli(pipeline, cli_env(emu, LAMINA_BATCH_CRASHPOINT="after-id:3"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    third_inputs, third_id = inputs_of(emu, 3), emu.run_ids()[2]
    third = row_with(manifest_rows(manifest_path(pipeline)), third_inputs)
    assert (third.state, third.remote_id) in {("submitting", None), ("running", third_id)}
    final = run_cli(pipeline, cli_env(emu))
    assert final.returncode == 0, final.stderr
    assert_exactly_once(emu, 6)
    assert row_with(manifest_rows(manifest_path(pipeline)), third_inputs).remote_id == third_id


# ---- the emulator kills the CLI as the k-th run is created (its reply never read) ---------------------------


def killed_at_creation(emu: Emulator, pipeline: Path, nth: int) -> subprocess.Popen[str]:
    """Start the CLI and have the emulator SIGKILL it when it creates its `nth` run; wait for the kill."""
    assert emu.stats.starts == 0
    proc = start_cli(pipeline, cli_env(emu))
    emu.kill_on_start(proc.pid, nth)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert emu.stats.kills == 1
    assert emu.stats.starts == nth
    return proc


def test_runs_api_resume_adopts_the_run_created_as_the_cli_died(tmp_path: Path, make_emulator: MakeEmu) -> None:
    """Runs API: killed as a run is created (reply unread), it is `submitting`; the resume adopts it, 0 duplicates."""
    emu = make_emulator(duration=(0.05, 0.2))
    pipeline = pipeline_for(tmp_path, "runs")
    killed_at_creation(emu, pipeline, 4)
    victim_inputs, victim_id = inputs_of(emu, 4), emu.run_ids()[3]
    victim = row_with(manifest_rows(manifest_path(pipeline)), victim_inputs)
    assert (victim.state, victim.remote_id) == ("submitting", None)
    final = run_cli(pipeline, cli_env(emu))
    assert final.returncode == 0, final.stderr
    assert manifest_states(pipeline) == {"completed": 12}
    assert_exactly_once(emu, 12)
    assert row_with(manifest_rows(manifest_path(pipeline)), victim_inputs).remote_id == victim_id
    assert {r.remote_id for r in manifest_rows(manifest_path(pipeline))} == set(emu.run_ids())


def test_executions_api_never_resends_the_start_and_restart_unknown_completes_it(
    tmp_path: Path, make_emulator: MakeEmu
) -> None:
    """Executions API: killed as a run is created, it becomes `unknown` (exit 1); --restart-unknown completes it."""
    emu = make_emulator(duration=(0.05, 0.2))
    pipeline = pipeline_for(tmp_path, "executions")
    env = cli_env(emu)
    killed_at_creation(emu, pipeline, 3)
    victim_inputs = inputs_of(emu, 3)
    assert row_with(manifest_rows(manifest_path(pipeline)), victim_inputs).state == "submitting"
    resumed = run_cli(pipeline, env)
    assert resumed.returncode == 1, resumed.stderr
    assert manifest_states(pipeline) == {"completed": 5, "unknown": 1}
    assert row_with(manifest_rows(manifest_path(pipeline)), victim_inputs).state == "unknown"
    assert_exactly_once(emu, 6)  # the victim was created once and not sent again
    restarted = run_cli(pipeline, env, "--restart-unknown")
    assert restarted.returncode == 0, restarted.stderr
    assert manifest_states(pipeline) == {"completed": 6}
    assert emu.stats.starts == 7
    assert list(emu.stats.duplicate_starts().values()) == [2]  # only the victim, by the user's explicit choice


# ---- durability where it is promised ------------------------------------------------------------------------


class DiskCheck:
    """Hooks the emulator calls on its own thread: each looks at the manifest on disk (read-only, as another
    process would) and records what it found; a failed look never raises into the emulator."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0
        self.problems: list[str] = []

    def rows(self) -> list[Row]:
        return manifest_rows(self.path) if self.path.exists() else []

    def start_arrived(self, app_id: str, inputs: dict[str, Any]) -> None:
        self.seen += 1
        try:
            mine = [r for r in self.rows() if r.inputs == inputs]
        except Exception as e:  # reported by the test, not by the emulator
            self.problems.append(f"start of {inputs}: {e!r}")
            return
        if [(r.state, r.remote_id) for r in mine] != [("submitting", None)]:
            self.problems.append(f"start of {inputs} arrived; on disk: {[(r.state, r.remote_id) for r in mine]}")

    def result_requested(self, run_id: str) -> None:
        self.seen += 1
        try:
            mine = [r for r in self.rows() if r.remote_id == run_id]
        except Exception as e:
            self.problems.append(f"poll of {run_id}: {e!r}")
            return
        if len(mine) != 1 or mine[0].state == "submitting":
            self.problems.append(f"poll of {run_id} arrived; on disk: {[(r.state, r.remote_id) for r in mine]}")


@pytest.mark.parametrize("api", ["runs", "executions"])
def test_every_start_arrives_with_its_run_already_submitting_on_disk(
    api: str, tmp_path: Path, make_emulator: MakeEmu
) -> None:
    """README write-ahead: as every start request arrives, its run is already `submitting` in the manifest on disk."""
    emu = make_emulator(duration=(0.05, 0.2))
    pipeline = pipeline_for(tmp_path, api)
    check = DiskCheck(manifest_path(pipeline))
    emu.on_start(check.start_arrived)
    final = run_cli(pipeline, cli_env(emu))
    assert final.returncode == 0, final.stderr
    total = 12 if api == "runs" else 6
    assert_exactly_once(emu, total)
    assert check.seen == total
    assert check.problems == []


def test_executions_api_id_is_on_disk_before_the_next_poll(tmp_path: Path, make_emulator: MakeEmu) -> None:
    """README: on the executions API the remote id is on disk (`running`) before any poll of that run arrives."""
    emu = make_emulator(duration=(0.05, 0.2), queued=0.0)
    pipeline = write_pipeline(tmp_path, 8, api="executions", banner=False, poll_interval="0.001s")
    check = DiskCheck(manifest_path(pipeline))
    emu.on_result_request(check.result_requested)
    final = run_cli(pipeline, cli_env(emu))
    assert final.returncode == 0, final.stderr
    assert_exactly_once(emu, 8)
    assert check.seen >= 8
    assert check.problems == []


# ---- the kill loop ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """One SIGKILL of the loop: how it was triggered and how many runs it left `submitting` on disk."""

    how: str
    submitting: int


def completed_at_emulator(emu: Emulator) -> int:
    return sum(1 for rid in emu.run_ids() if (emu.run_status(rid) or {}).get("status") == "completed")


def kill_loop(emu: Emulator, pipeline: Path, total: int, rng: random.Random, kills: int) -> list[Kill]:
    """Start the CLI and SIGKILL it `kills` times, each at an event the emulator reports: as its k-th new run
    is created (the emulator kills it, before the reply is written) or once k more runs completed remotely
    (the test kills it). Every kill lands: the batch cannot finish before those events."""
    done: list[Kill] = []
    env = cli_env(emu)
    margin = 3  # runs left unfinished at a completion kill, so the CLI cannot have finished the batch
    while len(done) < kills:
        starts_left = total - emu.stats.starts
        completions_left = total - margin - completed_at_emulator(emu)
        use_start = starts_left > 0 and (completions_left < 3 or rng.random() < 0.5)
        assert use_start or completions_left >= 3, f"the batch ran out of events after {len(done)} kills"
        kills_before, requests_before = emu.stats.kills, len(emu.stats.requests)
        proc = start_cli(pipeline, env)
        if use_start:
            nth = rng.randint(1, min(2, starts_left))
            victim = emu.stats.starts + nth
            emu.kill_on_start(proc.pid, nth)
            proc.communicate(timeout=60)
            assert emu.stats.kills == kills_before + 1
            victim_row = row_with(manifest_rows(manifest_path(pipeline)), inputs_of(emu, victim))
            assert (victim_row.state, victim_row.remote_id) == ("submitting", None)  # the intent came first
        else:
            # counted from the CLI's first request, so that no kill lands in the interpreter's start-up
            wait_for(lambda: len(emu.stats.requests) > requests_before, 30, "the CLI's first request")  # noqa: B023
            target = min(total - margin, completed_at_emulator(emu) + rng.randint(1, 2))
            wait_for(lambda: completed_at_emulator(emu) >= target, 60, f"{target} completed runs")  # noqa: B023
            assert proc.poll() is None, "the CLI ended before the batch did"
            proc.kill()
            proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        submitting = manifest_states(pipeline).get("submitting", 0) if manifest_path(pipeline).exists() else 0
        done.append(Kill("start" if use_start else "completion", submitting))
    return done


def test_kill_minus_nine_loop_never_pays_twice(tmp_path: Path, make_emulator: MakeEmu) -> None:
    """20 SIGKILLs at emulator events (a run created, runs completed), then a resume: 80 runs, one start each."""
    emu = make_emulator(duration=(0.2, 0.6), queued=0.02)
    pipeline = write_pipeline(tmp_path, 40, concurrency=4)
    kills = kill_loop(emu, pipeline, 80, random.Random(20261128), kills=20)
    assert len(kills) == 20
    assert {k.how for k in kills} == {"start", "completion"}
    assert all(k.submitting >= 1 for k in kills if k.how == "start")
    final = run_cli(pipeline, cli_env(emu))
    assert final.returncode == 0, final.stderr
    assert manifest_states(pipeline) == {"completed": 80}
    assert_exactly_once(emu, 80)
    assert {r.remote_id for r in manifest_rows(manifest_path(pipeline))} == set(emu.run_ids())


@pytest.mark.slow
def test_kill_minus_nine_soak(tmp_path: Path, make_emulator: MakeEmu) -> None:
    """The long kill loop: 80 SIGKILLs at emulator events over a 160-run batch, still exactly one start per run."""
    emu = make_emulator(duration=(1.0, 3.0), queued=0.05, seed=7)
    pipeline = write_pipeline(tmp_path, 80, concurrency=3)
    kills = kill_loop(emu, pipeline, 160, random.Random(7), kills=80)
    assert len(kills) == 80
    assert {k.how for k in kills} == {"start", "completion"}
    assert all(k.submitting >= 1 for k in kills if k.how == "start")
    final = run_cli(pipeline, cli_env(emu), timeout=300)
    assert final.returncode == 0, final.stderr
    assert manifest_states(pipeline) == {"completed": 160}
    assert_exactly_once(emu, 160)
    assert {r.remote_id for r in manifest_rows(manifest_path(pipeline))} == set(emu.run_ids())
