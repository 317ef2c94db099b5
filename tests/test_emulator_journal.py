"""The in-process emulator's state file: a resumed `run --emulator` finds the runs of the process before it
(killed mid-batch), pays for none twice, and never sees a run id again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from helpers import wait_for, write_pipeline

from lamina_batch.emulator import Emulator, EmulatorConfig
from lamina_batch.emulator.journal import Journal


def _created(journal: Path) -> list[dict[str, object]]:
    if not journal.exists():
        return []
    entries = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [e for e in entries if "id" in e]


def test_a_killed_emulator_run_resumes_and_starts_nothing_twice(tmp_path: Path) -> None:
    """kill -9 an `--emulator` run mid-batch; the same command again completes every run, none started twice,
    none failed as "the remote run is gone"."""
    pipeline = write_pipeline(tmp_path, 6, concurrency=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "GITHUB_"))}
    cmd = [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--emulator", "--no-progress"]
    journal = tmp_path / "pipeline.emulator.lamina.sqlite.emulator-runs.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(_created(journal)) >= 3, 60, "3 runs created")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "12 completed" in resumed.stdout
    created = _created(journal)
    assert len(created) == 12
    assert len({(e["app"], json.dumps(e["inputs"], sort_keys=True)) for e in created}) == 12
    assert len({e["id"] for e in created}) == 12


def test_a_new_emulator_on_a_state_file_knows_the_old_runs_and_issues_new_ids(tmp_path: Path) -> None:
    """Runs created by one emulator are served by the next on the same file (status, files), cancels kept,
    and the next one's run ids are new."""
    state = tmp_path / "state.jsonl"
    config = EmulatorConfig(duration=0.0, queued=0.0, rate_limit=None, state_file=state)

    with Emulator(config) as first:
        headers = {"Authorization": f"Bearer {first.key}"}
        r = httpx.post(f"{first.base_url}/v1/apps/app_7Hk2/runs", json={"inputs": {"Prompt": "a"}}, headers=headers)
        old_id = r.json()["data"]["runId"]
    with Emulator(config) as second:
        body = httpx.get(f"{second.base_url}/v1/runs/{old_id}", headers=headers).json()["data"]
        assert body["status"] == "completed"  # zero duration: done as soon as it was created
        assert httpx.get(body["outputs"][0]["value"]).status_code == 200
        r = httpx.post(f"{second.base_url}/v1/apps/app_7Hk2/runs", json={"inputs": {"Prompt": "a"}}, headers=headers)
        assert r.json()["data"]["runId"] != old_id
    assert Journal(state).last_port() is not None
    assert len(Journal(state).load()) == 2
