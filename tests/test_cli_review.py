"""`lamina-batch review` and `run/plan --redo rejected` as processes against the emulator: the scripted verdicts,
--list, --import with its bad-input lines, the served page's first line and host refusal, and a redo that starts
exactly the rejected runs and their downstream runs, keeping the earlier files as history."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from helpers import cli_env, manifest_path, run_cli, write_pipeline

from lamina_batch.emulator import Emulator
from lamina_batch.manifest import Manifest
from lamina_batch.models import RunRecord, RunState


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def served(env: dict[str, str], pipeline: Path, *flags: str) -> Iterator[str]:
    """`review PIPELINE` as a process for the block: its URL (the first line it prints, without the slash)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina_batch", "review", str(pipeline), *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip().rstrip("/")
    finally:
        proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture
def done(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> tuple[Path, Emulator, dict[str, str]]:
    """Three rows of hero -> banner, completed with downloads."""
    emu = make_emulator()
    pipeline = write_pipeline(tmp_path, 3, download=True)
    env = cli_env(emu)
    r = run_cli(pipeline, env)
    assert r.returncode == 0, r.stderr
    return pipeline, emu, env


def records(pipeline: Path) -> dict[tuple[str, str], RunRecord]:
    with Manifest.open(manifest_path(pipeline), pipeline_name="crash", writer=False) as m:
        return {(r.row_key or "", r.step_id): r for r in m.iter_runs()}


def test_reject_approve_and_list(done: tuple[Path, Emulator, dict[str, str]]) -> None:
    """--reject/--approve ROW[:STEP] record verdicts on the current attempt; --list and --list --json show them."""
    pipeline, _, env = done
    r = cli(env, "review", str(pipeline), "--reject", "S001:hero", "--note", "too red")
    assert r.returncode == 0, r.stderr
    assert "S001:hero: 1 runs rejected" in r.stdout
    assert cli(env, "review", str(pipeline), "--approve", "#3").returncode == 0
    listed = cli(env, "review", str(pipeline), "--list")
    assert listed.returncode == 0, listed.stderr
    assert "6 completed runs: 2 approved, 1 rejected, 3 unreviewed" in listed.stdout
    entries = json.loads(cli(env, "review", str(pipeline), "--list", "--json").stdout)
    rejected = [e for e in entries if e["verdict"] == "rejected"]
    assert [(e["row_key"], e["step"], e["note"], e["attempt"]) for e in rejected] == [("S001", "hero", "too red", 1)]


def test_unknown_row_key_is_refused_with_a_suggestion(done: tuple[Path, Emulator, dict[str, str]]) -> None:
    """A row key that does not exist: exit 2, one line with did-you-mean, nothing recorded."""
    pipeline, _, env = done
    r = cli(env, "review", str(pipeline), "--reject", "S01")
    assert r.returncode == 2
    assert "no row 'S01'" in r.stderr
    assert "did you mean" in r.stderr
    assert "Traceback" not in r.stderr
    assert "0 approved, 0 rejected" in cli(env, "review", str(pipeline), "--list").stdout


def test_bad_verdicts_file_names_the_file_and_the_problem(
    done: tuple[Path, Emulator, dict[str, str]], tmp_path: Path
) -> None:
    """--import of a file that is not JSON, or lacks its fields: exit 2 naming the file and what is wrong."""
    pipeline, _, env = done
    bad = tmp_path / "verdicts.json"
    bad.write_text("{not json", encoding="utf-8")
    r = cli(env, "review", str(pipeline), "--import", str(bad))
    assert r.returncode == 2
    assert str(bad) in r.stderr
    assert "Traceback" not in r.stderr
    missing = cli(env, "review", str(pipeline), "--import", str(tmp_path / "nope.json"))
    assert missing.returncode == 2
    assert "nope.json" in missing.stderr


def test_import_records_an_exported_document(done: tuple[Path, Emulator, dict[str, str]], tmp_path: Path) -> None:
    """A verdicts.json as the gallery exports it is recorded (newer verdicts win: the runs are approved now);
    importing it again records nothing new."""
    from lamina_batch.review import export_verdicts, mark

    pipeline, _, env = done
    mpath = manifest_path(pipeline)
    mark(mpath, "crash", "S002", "rejected", "cropped")
    doc = export_verdicts(mpath, "crash")
    doc["verdicts"] = [{**v, "verdict": "approved", "at": "2030-01-01T00:00:00Z"} for v in doc["verdicts"]]
    path = tmp_path / "verdicts.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    r = cli(env, "review", str(pipeline), "--import", str(path))
    assert r.returncode == 0, r.stderr
    assert "2 verdicts recorded" in r.stdout
    assert "2 approved, 0 rejected" in cli(env, "review", str(pipeline), "--list").stdout
    again = cli(env, "review", str(pipeline), "--import", str(path))
    assert "0 verdicts recorded, 2 already recorded" in again.stdout


def test_serve_prints_the_url_first_and_refuses_a_remote_host(done: tuple[Path, Emulator, dict[str, str]]) -> None:
    """The served form prints its URL as the first line and answers there; a non-loopback --host without
    --allow-remote is exit 2 with nothing served."""
    pipeline, _, env = done
    refused = cli(env, "review", str(pipeline), "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "--allow-remote" in refused.stderr
    with served(env, pipeline) as url:
        assert url.startswith("http://127.0.0.1:")
        items = httpx.get(url + "/api/items", timeout=10).json()["items"]
        assert len(items) == 3


def test_redo_rejected_starts_the_rejected_runs_and_their_downstream(
    done: tuple[Path, Emulator, dict[str, str]],
) -> None:
    """plan --redo rejected names the rejected hero and its banner; run --redo rejected starts exactly those two
    (counted at the emulator), the old files move to history, the new attempt is unreviewed, and status
    --fail-on-rejected passes once nothing rejected is left without a newer attempt."""
    pipeline, emu, env = done
    before = records(pipeline)
    starts = emu.stats.starts
    assert cli(env, "review", str(pipeline), "--reject", "S001:hero").returncode == 0
    gate = cli(env, "status", str(pipeline), "--fail-on-rejected")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "1 rejected" in gate.stdout

    plan = cli(env, "plan", str(pipeline), "--redo", "rejected")
    assert plan.returncode == 0, plan.stderr
    assert "would start 2 runs (0 new, 0 to retry, 2 to redo)" in plan.stdout
    assert "[S001] hero: redo: rejected" in plan.stdout
    assert "[S001] banner: redo: upstream hero redone" in plan.stdout
    assert "would start 0 runs" in cli(env, "plan", str(pipeline)).stdout

    r = run_cli(pipeline, env, "--redo", "rejected")
    assert r.returncode == 0, r.stderr
    assert emu.stats.starts - starts == 2
    after = records(pipeline)
    for step in ("hero", "banner"):
        new = after[("S001", step)]
        assert new.state is RunState.COMPLETED
        assert new.attempts == 2
        assert after[("S002", step)] == before[("S002", step)]
    hero = after[("S001", "hero")]
    assert (pipeline.parent / "out" / "S001" / "history" / "hero.attempt-1.png").is_file()
    assert (pipeline.parent / "out" / "S001" / "hero.png").is_file()
    with Manifest.open(manifest_path(pipeline), pipeline_name="crash", writer=False) as m:
        past = m.past_attempts(hero.identity)[hero.identity]
    assert [(p.attempt, p.state) for p in past] == [(1, RunState.COMPLETED)]
    assert past[0].downloads[0].path == "out/S001/history/hero.attempt-1.png"
    assert cli(env, "status", str(pipeline), "--fail-on-rejected").returncode == 0
    again = run_cli(pipeline, env, "--redo", "rejected")
    assert again.returncode == 0
    assert emu.stats.starts - starts == 2


def test_redo_set_varies_the_input(done: tuple[Path, Emulator, dict[str, str]]) -> None:
    """--redo-set NAME=TEMPLATE renders with the attempt and replaces the input on the redo only."""
    pipeline, _emu, env = done
    assert cli(env, "review", str(pipeline), "--reject", "S000:banner").returncode == 0
    r = run_cli(pipeline, env, "--redo", "rejected", "--redo-set", "Headline=Item 0 take {{ attempt }}")
    assert r.returncode == 0, r.stderr
    banner = records(pipeline)[("S000", "banner")]
    assert banner.inputs["Headline"] == "Item 0 take 2"
    bad = run_cli(pipeline, env, "--redo", "rejected", "--redo-set", "Headline")
    assert bad.returncode == 2
    assert "--redo-set" in bad.stderr


def test_a_redo_killed_after_its_start_was_sent_is_adopted_not_paid_twice(
    done: tuple[Path, Emulator, dict[str, str]],
) -> None:
    """kill -9 right after the redo's start request left: the intent (submitting, attempt 2) was on disk, so the
    next `run --redo rejected` reconciles and adopts that remote run; the emulator saw one start per redone run."""
    pipeline, emu, env = done
    starts = emu.stats.starts
    assert cli(env, "review", str(pipeline), "--reject", "S002:hero").returncode == 0
    killed = run_cli(pipeline, {**env, "LAMINA_BATCH_CRASHPOINT": "after-send"}, "--redo", "rejected")
    assert killed.returncode == -9
    hero = records(pipeline)[("S002", "hero")]
    assert (hero.state, hero.attempts) == (RunState.SUBMITTING, 2)
    resumed = run_cli(pipeline, env, "--redo", "rejected")
    assert resumed.returncode == 0, resumed.stderr
    assert emu.stats.starts - starts == 2
    after = records(pipeline)
    assert [after[("S002", s)].attempts for s in ("hero", "banner")] == [2, 2]
    hero_starts = {k: n for k, n in emu.stats.starts_by_inputs.items() if k[0] == "app_7Hk2" and "Item 2" in k[1]}
    assert list(hero_starts.values()) == [2]  # attempt 1 and the one redo, adopted after the kill


def test_max_starts_bounds_a_redo(done: tuple[Path, Emulator, dict[str, str]]) -> None:
    """A redo is a start like any other: --max-starts 1 makes one and stops resumable (exit 3); the next
    `run --redo rejected` makes the rest."""
    pipeline, emu, env = done
    starts = emu.stats.starts
    assert cli(env, "review", str(pipeline), "--reject", "S000:hero").returncode == 0
    assert cli(env, "review", str(pipeline), "--reject", "S001:hero").returncode == 0
    first = run_cli(pipeline, env, "--redo", "rejected", "--max-starts", "1")
    assert first.returncode == 3, first.stderr
    assert emu.stats.starts - starts == 1
    rest = run_cli(pipeline, env, "--redo", "rejected")
    assert rest.returncode == 0, rest.stderr
    assert emu.stats.starts - starts == 4


def test_served_images_come_from_the_folder_the_run_wrote_to(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """After `run --output-dir ELSEWHERE`, `review` (no flag) serves the images from ELSEWHERE, as the manifest
    recorded it; `review --output-dir` overrides that folder."""
    emu = make_emulator()
    (tmp_path / "p").mkdir()
    pipeline = write_pipeline(tmp_path / "p", 2, download=True)
    env = cli_env(emu)
    elsewhere = tmp_path / "elsewhere"
    r = run_cli(pipeline, env, "--output-dir", str(elsewhere))
    assert r.returncode == 0, r.stderr
    assert not (pipeline.parent / "out").exists()

    def first_image(*flags: str) -> int:
        with served(env, pipeline, *flags) as url:
            items = httpx.get(url + "/api/items", timeout=10).json()["items"]
            src = items[0]["runs"][0]["images"][0]["src"]
            return httpx.get(url + src, timeout=10).status_code

    assert first_image() == 200
    assert first_image("--output-dir", str(tmp_path / "nowhere")) == 404
