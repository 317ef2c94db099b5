"""Smoke test of benchmarks/run.py: every workload and contender runs on a tiny workload (no thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"
WORKLOAD_PREFIXES = ("1 ", "2 ", "3 ", "4 ", "5 ", "6 ")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    return data, (out / "latest.md").read_text(encoding="utf-8"), proc.stdout


def test_every_workload_has_rows(smoke: tuple[dict[str, Any], str, str]) -> None:
    """The smoke run produces at least one row for each of the six workloads."""
    data, _, _ = smoke
    workloads = {r["workload"] for r in data["rows"]}
    for prefix in WORKLOAD_PREFIXES:
        assert any(w.startswith(prefix) for w in workloads), prefix


def test_every_contender_appears(smoke: tuple[dict[str, Any], str, str]) -> None:
    """Both baselines and lamina-batch are measured (or reported as not available)."""
    data, _, _ = smoke
    contenders = {r["contender"] for r in data["rows"]}
    assert contenders == {"baseline: guide script", "baseline: async script", "lamina-batch"}


def test_baselines_complete_and_are_counted_by_the_emulator(smoke: tuple[dict[str, Any], str, str]) -> None:
    """Baseline rows that ran finished every run, with server-side request counts and process rusage."""
    data, _, _ = smoke
    ran = [r for r in data["rows"] if r["contender"].startswith("baseline") and r["wall"] is not None]
    assert ran
    for r in ran:
        assert r["completed"] == r["n"], r
        assert r["requests_per_run"] >= 2.0, r  # at least start + one status per run, as the server saw
        assert r["cpu"] > 0, r
        assert r["peak_rss_mib"] > 0, r


def test_rerun_baseline_repeats_starts(smoke: tuple[dict[str, Any], str, str]) -> None:
    """Killing the async baseline at 50% and running it again pays again for the runs already started."""
    data, _, _ = smoke
    (row,) = [r for r in data["rows"] if r["workload"].startswith("5 ") and r["contender"] == "baseline: async script"]
    assert row["duplicate_starts"] >= row["n"] // 2


def test_lamina_rows_are_measured_or_say_why_not(smoke: tuple[dict[str, Any], str, str]) -> None:
    """A lamina-batch row either completed every run or carries a generated 'not available' note."""
    data, _, _ = smoke
    rows = [r for r in data["rows"] if r["contender"] == "lamina-batch"]
    assert rows
    for r in rows:
        assert r["completed"] == r["n"] or r["note"].startswith("not available"), r


def test_markdown_table_printed_and_written(smoke: tuple[dict[str, Any], str, str]) -> None:
    """The table goes to stdout and latest.md, with the command and the machine it ran on."""
    data, md, stdout = smoke
    assert "| workload | contender |" in md
    assert md.strip() in stdout
    assert data["meta"]["command"].startswith("python benchmarks/run.py --smoke")
    assert data["meta"]["machine"]["cores"] >= 1
