"""The real `lamina-batch` process against the emulator: kill -9, crash points, signals, locks, exit codes."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina_batch.emulator import Emulator

COLOURS = ["red", "blue", "green", "black", "white", "navy", "beige", "grey"]


def write_pipeline(
    folder: Path,
    rows: int,
    *,
    banner: bool = True,
    download: bool = False,
    concurrency: int = 8,
    extra_run: str = "",
) -> Path:
    """A hero (+ banner) pipeline over `rows` inline rows keyed by sku."""
    lines = ["version: 1", "name: crash", "matrix:", "  key: sku", "  rows:"]
    for i in range(rows):
        lines.append(f"    - {{sku: S{i:03d}, name: Item {i}, colour: {COLOURS[i % len(COLOURS)]}}}")
    lines += [
        "steps:",
        "  - id: hero",
        "    app: app_7Hk2",
        "    inputs:",
        '      Prompt: "Studio photo of {{ row.name }} in {{ row.colour }}"',
    ]
    if banner:
        lines += [
            "  - id: banner",
            "    app: app_9Qx1",
            "    needs: [hero]",
            "    inputs:",
            '      Product Image: "{{ steps.hero.output }}"',
            '      Headline: "{{ row.name }}"',
        ]
    if download:
        lines += ["download:", '  path: "out/{{ row.sku }}/{{ step.id }}{{ output.ext }}"']
    lines += ["run:", f"  concurrency: {concurrency}", "  rate_limit: 100/s", "  poll_interval: 1s", extra_run]
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cli_env(emu: Emulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "COV_", "GITHUB_STEP"))}
    env.update(LAMINA_BASE_URL=emu.base_url, LAMINA_API_KEY=emu.key, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start_cli(pipeline: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(pipeline: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--no-progress", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def manifest_states(pipeline: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{pipeline.parent / 'pipeline.lamina.sqlite'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT state, count(*) FROM runs GROUP BY state").fetchall())
    finally:
        db.close()


def assert_exactly_once(emu: Emulator, runs: int) -> None:
    assert emu.stats.duplicate_starts() == {}
    assert emu.stats.starts == runs


def kill_loop(pipeline: Path, env: dict[str, str], rng: random.Random, kills: int) -> int:
    """Start the CLI and SIGKILL it at a random moment, `kills` times; return how many kills landed."""
    landed = 0
    for _ in range(kills):
        proc = start_cli(pipeline, env)
        time.sleep(rng.uniform(0.2, 2.2))
        if proc.poll() is None:
            proc.kill()
            landed += 1
        proc.communicate(timeout=30)
        if proc.returncode == 0:
            break
    return landed


def test_kill_minus_nine_at_random_moments_never_pays_twice(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """20+ SIGKILLs at seeded random moments, then a resume: all 60 runs complete with one start each."""
    emu = make_emulator(duration=(0.6, 1.6), queued=0.05)
    pipeline = write_pipeline(tmp_path, 30)
    env = cli_env(emu)
    landed = kill_loop(pipeline, env, random.Random(20261128), kills=22)
    final = run_cli(pipeline, env)
    assert final.returncode == 0, final.stderr
    assert landed >= 5  # the loop really interrupted the batch
    assert manifest_states(pipeline) == {"completed": 60}
    assert_exactly_once(emu, 60)


@pytest.mark.slow
def test_kill_minus_nine_soak(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    """The long kill loop: 80 SIGKILLs over a 120-run batch, still exactly one start per run."""
    # Runs long enough (and few enough in flight) that the batch outlives the loop: every kill lands mid-batch.
    emu = make_emulator(duration=(2.0, 6.0), queued=0.05, seed=7)
    pipeline = write_pipeline(tmp_path, 60, concurrency=3)
    env = cli_env(emu)
    landed = kill_loop(pipeline, env, random.Random(7), kills=80)
    assert landed == 80
    final = run_cli(pipeline, env, timeout=300)
    assert final.returncode == 0, final.stderr
    assert manifest_states(pipeline) == {"completed": 120}
    assert_exactly_once(emu, 120)


@pytest.mark.parametrize("point", ["before-intent", "after-intent", "after-reply", "before-download"])
def test_named_crash_points_resume_without_duplicates(
    point: str, tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """A SIGKILL at each named crash point, then a resume: every run completes, none started twice."""
    emu = make_emulator(duration=(0.05, 0.2))
    pipeline = write_pipeline(tmp_path, 6, download=True)
    env = cli_env(emu)
    crashed = run_cli(pipeline, cli_env(emu, LAMINA_BATCH_CRASHPOINT=f"{point}:3"))
    assert crashed.returncode == -signal.SIGKILL
    final = run_cli(pipeline, env)
    assert final.returncode == 0, final.stderr
    assert manifest_states(pipeline) == {"completed": 12}
    assert_exactly_once(emu, 12)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert len(files) == 12


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_exits_with_its_code_and_resumes(
    sig: signal.Signals, code: int, tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """The first SIGINT/SIGTERM records in-flight runs and exits 130/143 within seconds; a rerun finishes."""
    emu = make_emulator(duration=(3.0, 4.0))
    pipeline = write_pipeline(tmp_path, 8, banner=False, concurrency=4)
    env = cli_env(emu)
    proc = start_cli(pipeline, env)
    deadline = time.monotonic() + 20
    while emu.stats.starts < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
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
        deadline = time.monotonic() + 20
        while emu.stats.starts < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
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


def test_insufficient_credits_stops_with_exit_3(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> None:
    """Running out of credits stops new starts, records what ran, and exits 3 (resumable)."""
    emu = make_emulator(credits=12)  # the hero app costs 4 credits a run: three runs fit
    pipeline = write_pipeline(tmp_path, 6, banner=False, concurrency=1)
    res = run_cli(pipeline, cli_env(emu))
    assert res.returncode == 3, res.stderr
    assert "credits" in res.stderr.lower()
    states = manifest_states(pipeline)
    assert states.get("completed") == 3
    assert emu.stats.starts == 3


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
    """A 60 s outage (every API request 503, or its connection dropped) mid-batch: every run completes, once."""
    emu = make_emulator(duration=(1.0, 2.0))
    pipeline = write_pipeline(tmp_path, 12)
    proc = start_cli(pipeline, cli_env(emu))
    deadline = time.monotonic() + 30
    while emu.stats.starts < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    emu.set_outage(True, drop=drop)
    time.sleep(60)
    emu.set_outage(False)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
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
    deadline = time.monotonic() + 20
    while emu.stats.starts < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
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
