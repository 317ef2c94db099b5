"""The real `lamina-batch` process against the emulator: signals, locks, exit codes, guards, outages, cancel, and
what reaches its reports, manifest and output. Crash tests (kill -9) are in test_crash.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    StreamLines,
    assert_exactly_once,
    cli_env,
    cli_process,
    manifest_states,
    run_cli,
    start_cli,
    wait_for,
    write_pipeline,
)

from lamina_batch.emulator import Emulator
from lamina_batch.executor import START_GRACE


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_exits_with_its_code_and_resumes(
    sig: signal.Signals, code: int, tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """The first SIGINT/SIGTERM records in-flight runs and exits 130/143 within seconds; a rerun finishes."""
    emu = make_emulator(duration=(3.0, 4.0))
    pipeline = write_pipeline(tmp_path, 8, banner=False, concurrency=4)
    env = cli_env(emu)
    proc = start_cli(pipeline, env)
    wait_for(lambda: emu.stats.starts >= 2, 20, "2 starts")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)  # hangs past this are failures, not slowness
    assert proc.returncode == code, err
    assert "resume" in err
    assert "Traceback" not in err
    final = run_cli(pipeline, env)
    assert final.returncode == 0, final.stderr
    assert_exactly_once(emu, 8)


def test_second_run_on_the_same_manifest_exits_3_naming_the_holder(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """While one `run` holds the manifest, a second exits 3 and says which process holds it."""
    emu = make_emulator(duration=(3.0, 3.0))
    pipeline = write_pipeline(tmp_path, 2, banner=False)
    env = cli_env(emu)
    first = start_cli(pipeline, env)
    try:
        wait_for(lambda: emu.stats.starts >= 1, 20, "a start")
        second = run_cli(pipeline, env)
        assert second.returncode == 3
        assert f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)


def test_missing_api_key_exits_2_before_any_request(tmp_path: Path, emulator: Emulator) -> None:
    """No LAMINA_API_KEY: one line naming the variable and the fix, exit 2, nothing sent."""
    pipeline = write_pipeline(tmp_path, 2)
    env = cli_env(emulator)
    del env["LAMINA_API_KEY"]
    res = run_cli(pipeline, env)
    assert res.returncode == 2
    assert "LAMINA_API_KEY" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert emulator.stats.requests == []


def test_rejected_api_key_exits_2_with_nothing_started(tmp_path: Path, emulator: Emulator) -> None:
    """A key the API refuses stops the preflight: exit 2, no start, no traceback."""
    pipeline = write_pipeline(tmp_path, 2)
    res = run_cli(pipeline, cli_env(emulator, LAMINA_API_KEY="lma_wrong"))
    assert res.returncode == 2
    assert "401" in res.stderr
    assert "lma_wrong" not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    assert emulator.stats.starts == 0


def test_preflight_refuses_bad_inputs_before_spending(tmp_path: Path, emulator: Emulator) -> None:
    """An option value the app does not offer is caught by the preflight: exit 2, zero starts."""
    pipeline = write_pipeline(tmp_path, 3, banner=False)
    text = pipeline.read_text().replace(
        '      Prompt: "Studio photo of {{ row.name }} in {{ row.colour }}"',
        '      Prompt: "Studio photo of {{ row.name }}"\n      Aspect Ratio: "2:1"\n      Promt: x',
    )
    pipeline.write_text(text)
    res = run_cli(pipeline, cli_env(emulator))
    assert res.returncode == 2, res.stderr
    assert "2:1" in res.stderr
    assert "did you mean 'Prompt'" in res.stderr
    assert "Traceback" not in res.stderr
    assert emulator.stats.starts == 0


def test_failed_runs_exit_1_and_retry_failed_reruns_them(tmp_path: Path, emulator: Emulator) -> None:
    """A run that fails remotely gives exit 1; --retry-failed starts only it again (and its downstream)."""
    pipeline = write_pipeline(tmp_path, 3)
    text = pipeline.read_text().replace("{sku: S001, name: Item 1", "{sku: S001, name: '[[fail]] Item 1'")
    pipeline.write_text(text)
    env = cli_env(emulator)
    first = run_cli(pipeline, env)
    assert first.returncode == 1, first.stderr
    assert "status" in first.stderr
    states = manifest_states(pipeline)
    assert states == {"completed": 4, "failed": 2}
    starts = emulator.stats.starts
    assert starts == 5  # the banner of the failed hero was never started
    again = run_cli(pipeline, env)
    assert again.returncode == 1
    assert emulator.stats.starts == starts  # failed runs stay failed without --retry-failed
    retried = run_cli(pipeline, env, "--retry-failed")
    assert retried.returncode == 1
    assert emulator.stats.starts == starts + 1  # the hero again; its banner still blocked


def test_insufficient_credits_mid_batch_stops_with_exit_3_and_resumes_after_a_top_up(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """The balance running out under a batch (another job spent it) stops new starts at once with exit 3 and
    "top up"; the refused run stays pending (not failed, not judged by max_failures) and starts on the resume.
    (Before issue 16 this batch, 24 credits against 12, was refused only at its fourth start; now the balance check
    refuses it before any start, so the balance drops mid-batch instead.)"""
    emu = make_emulator(credits=24)  # the hero app costs 4 credits a run: all six fit when the batch starts
    seen: list[str] = []

    def spend_elsewhere(app_id: str, inputs: dict[str, Any]) -> None:
        seen.append(app_id)
        if len(seen) == 3:
            emu.set_credits(4)  # another job spent the rest: this third start still fits, the fourth does not

    emu.on_start(spend_elsewhere)
    pipeline = write_pipeline(tmp_path, 6, banner=False, concurrency=1, extra_run="  max_failures: 1")
    env = cli_env(emu)
    res = run_cli(pipeline, env)
    assert res.returncode == 3, res.stderr
    assert "Top up and run the same command again" in res.stderr
    states = manifest_states(pipeline)
    assert states.get("completed") == 3
    assert states.get("pending") == 1
    assert "failed" not in states
    assert emu.stats.starts == 3
    emu.on_start(None)
    emu.top_up(12)
    again = run_cli(pipeline, env)
    assert again.returncode == 0, again.stderr
    assert_exactly_once(emu, 6)


def test_max_starts_guard_exits_3_and_resumes(tmp_path: Path, emulator: Emulator) -> None:
    """--max-starts stops after N new starts with exit 3; the next invocation carries on."""
    pipeline = write_pipeline(tmp_path, 5, banner=False)
    env = cli_env(emulator)
    res = run_cli(pipeline, env, "--max-starts", "2")
    assert res.returncode == 3, res.stderr
    assert emulator.stats.starts == 2
    final = run_cli(pipeline, env)
    assert final.returncode == 0, final.stderr
    assert_exactly_once(emulator, 5)


@pytest.mark.parametrize("drop", [False, True], ids=["503", "dropped-connections"])
def test_sixty_second_outage_mid_batch_costs_no_run(
    drop: bool, tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """A 60 s outage mid-batch (503s or dropped connections, seen in the request log): every run completes, once."""
    emu = make_emulator(duration=(1.0, 2.0))
    pipeline = write_pipeline(tmp_path, 12)
    with cli_process(pipeline, cli_env(emu)) as proc:
        wait_for(lambda: emu.stats.starts >= 6, 30, "6 starts")
        assert emu.stats.starts < 24  # mid-batch
        emu.set_outage(True, drop=drop)
        began, logged = time.monotonic(), len(emu.stats.requests)

        def refused() -> int:
            return sum(1 for r in emu.stats.requests[logged:] if (r.dropped if drop else r.status == 503))

        # the outage lasts 60 s and really meets the CLI: several of its requests refused
        wait_for(lambda: time.monotonic() - began >= 60 and refused() >= 3, 90, "60 s of outage meeting the CLI")
        emu.set_outage(False)
        assert proc.poll() is None  # it waited the outage out
        assert proc.wait(timeout=180) == 0
    assert manifest_states(pipeline) == {"completed": 24}
    assert_exactly_once(emu, 24)


def test_cancel_stops_the_runs_an_interrupted_batch_left_running(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """After a SIGTERM leaves runs going remotely, `cancel` cancels each one and `status` then exits 1."""
    emu = make_emulator(duration=(30.0, 30.0))
    pipeline = write_pipeline(tmp_path, 3, banner=False)
    env = cli_env(emu)
    proc = start_cli(pipeline, env)
    wait_for(lambda: emu.stats.starts >= 3, 20, "3 starts")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    assert manifest_states(pipeline) == {"running": 3}
    res = subprocess.run(
        [sys.executable, "-m", "lamina_batch", "cancel", str(pipeline)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": cancelled") == 3
    assert manifest_states(pipeline) == {"cancelled": 3}
    assert sorted(emu.run_status(i)["status"] for i in emu.run_ids()) == ["cancelled"] * 3
    status = subprocess.run(
        [sys.executable, "-m", "lamina_batch", "status", str(pipeline)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 1


def test_reports_are_written_at_the_end_of_an_interrupted_run(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """README: `--report` files are written at the end of an interrupted run too, listing the runs left running."""
    emu = make_emulator(duration=(30.0, 30.0))
    pipeline = write_pipeline(tmp_path, 4, concurrency=2)
    reports = {fmt: tmp_path / "reports" / f"r.{fmt}" for fmt in ("csv", "jsonl", "html", "junit", "markdown")}
    flags = [arg for fmt, path in reports.items() for arg in ("--report", f"{fmt}={path}")]
    proc = start_cli(pipeline, cli_env(emu), *flags)
    wait_for(lambda: emu.stats.starts >= 2, 20, "2 starts")
    wait_for(lambda: manifest_states(pipeline).get("running") == 2, 20, "2 runs recorded running")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert all(path.stat().st_size > 0 for path in reports.values()), err
    lines = [json.loads(line) for line in reports["jsonl"].read_text(encoding="utf-8").splitlines()]
    assert sorted((r["state"], r["remote_id"]) for r in lines) == sorted(("running", i) for i in emu.run_ids())
    csv_text = reports["csv"].read_text(encoding="utf-8")
    assert all(run_id in csv_text for run_id in emu.run_ids())


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    """README: a second Ctrl-C exits at once, not waiting for a start in flight; the resume pays nothing twice."""
    emu = make_emulator(duration=(0.05, 0.2))
    arrived, release = threading.Event(), threading.Event()

    def hold(app_id: str, inputs: dict[str, Any]) -> None:  # the first start gets no reply until released
        if not arrived.is_set():
            arrived.set()
            release.wait(60)

    emu.on_start(hold)
    pipeline = write_pipeline(tmp_path, 3, banner=False)
    proc = start_cli(pipeline, cli_env(emu))
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = StreamLines(proc.stdout), StreamLines(proc.stderr)
    try:
        wait_for(arrived.is_set, 30, "the first start")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "press again" in err.text(), 20, "the first Ctrl-C's message")
        proc.send_signal(signal.SIGINT)
        # the start is still unanswered; without the second Ctrl-C the CLI would give it START_GRACE (5 s)
        assert proc.wait(timeout=START_GRACE - 1) == 130
        assert not release.is_set()
    finally:
        release.set()
        proc.kill()
        proc.wait(30)
    out.finish()
    text = err.finish()
    assert "Interrupted: run the same command again" not in text  # it did not take the orderly way out
    assert "Traceback" not in text
    assert manifest_states(pipeline) == {"submitting": 1}
    emu.on_start(None)
    final = run_cli(pipeline, cli_env(emu))
    assert final.returncode == 0, final.stderr
    assert_exactly_once(emu, 3)


def test_the_api_key_reaches_no_manifest_report_or_output(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """README: the API key (accepted or rejected) reaches no manifest, report, download or output, --verbose too."""
    key = "lma_SeCrEtKeY_4f2b9c81d7e6a5"
    emu = make_emulator(key=key)
    pipeline = write_pipeline(tmp_path, 3, download=True)
    text = pipeline.read_text().replace("{sku: S001, name: Item 1", "{sku: S001, name: '[[fail]] Item 1'")
    pipeline.write_text(text)
    env = cli_env(emu)
    flags = [
        arg
        for fmt in ("csv", "jsonl", "html", "junit", "markdown")
        for arg in ("--report", f"{fmt}={tmp_path / f'r.{fmt}'}")
    ]
    env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "step-summary.md")
    outputs = [run_cli(pipeline, env, "--verbose", *flags)]
    assert outputs[0].returncode == 1, outputs[0].stderr
    for command in (
        ["status", str(pipeline)],
        ["report", str(pipeline), "--format", "jsonl", "-o", str(tmp_path / "again.jsonl")],
    ):
        outputs.append(
            subprocess.run(
                [sys.executable, "-m", "lamina_batch", *command, "--verbose"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd=tmp_path,
            )
        )
    wrong = "lma_WrOnGkEy_0a1b2c3d4e5f"
    outputs.append(run_cli(pipeline, cli_env(emu, LAMINA_API_KEY=wrong), "--verbose"))
    assert outputs[-1].returncode == 2
    for res in outputs:
        for secret in (key, wrong):
            assert secret not in res.stdout + res.stderr, res.args
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".sqlite", ".csv", ".jsonl", ".html", ".junit", ".markdown", ".png", ".md"}
    for path in files:
        data = path.read_bytes()
        for secret in (key, wrong):
            assert secret.encode() not in data, path
