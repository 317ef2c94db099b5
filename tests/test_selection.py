"""A subset for a smoke run: `--rows 1-5,42` and `--limit N` on run/plan/validate (lamina_batch/selection.py and
its wiring through BatchOptions, the planner and the executor)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env, manifest_states, run_cli, write_pipeline

from lamina_batch.emulator import Emulator
from lamina_batch.errors import ConfigError, OptionError
from lamina_batch.matrix import expand_runs
from lamina_batch.options import BatchOptions
from lamina_batch.selection import Selection, parse_rows, subset_text
from lamina_batch.spec import load_pipeline


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_parse_rows_sorts_ranges_and_single_rows() -> None:
    """`42,1-5` is the ranges (1, 5) and (42, 42), in order."""
    assert parse_rows("42, 1-5") == ((1, 5), (42, 42))


@pytest.mark.parametrize("text", ["", "0", "5-1", "a", "1-", "1,,2", "-3"])
def test_parse_rows_refuses_malformed_lists(text: str) -> None:
    """Row numbers count from 1, ranges go low-high; anything else is a ConfigError naming --rows."""
    with pytest.raises(ConfigError, match="--rows"):
        parse_rows(text)


def test_batch_options_selection_is_none_without_flags_and_checked_with_them() -> None:
    """No --rows/--limit is the whole batch; a bad --limit is an OptionError naming `limit`."""
    assert BatchOptions().selection is None
    assert BatchOptions(rows="2-3", limit=1).selection == Selection(rows=((2, 3),), limit=1)
    with pytest.raises(OptionError, match="limit"):
        _ = BatchOptions(limit=-1).selection
    with pytest.raises(OptionError, match="rows"):
        _ = BatchOptions(rows="x").selection


def test_subset_runs_have_the_identities_of_the_full_batch(tmp_path: Path) -> None:
    """The runs --rows picks are the same (identity and all) as those rows' runs in the full batch."""
    pipeline = load_pipeline(write_pipeline(tmp_path, 10))
    full = {r.identity: r for plan in expand_runs(pipeline) for r in plan.runs}
    subset = [r for plan in expand_runs(pipeline, selection=Selection.parse("2-3,9")) for r in plan.runs]
    assert sorted({r.item.row_number for r in subset}) == [2, 3, 9]
    assert all(full[r.identity] == r for r in subset)
    limited = [r for plan in expand_runs(pipeline, selection=Selection.parse("4-10", 2)) for r in plan.runs]
    assert sorted({r.item.row_number for r in limited}) == [4, 5]


def test_subset_text_counts_items() -> None:
    """The summary wording: '5 of 600 items'."""
    assert subset_text(5, 600) == "5 of 600 items"
    assert subset_text(1, 1) == "1 of 1 item"
    assert subset_text(1, 4, Selection.parse("2"), 4) == "1 of 4 items"
    assert subset_text(0, 4, Selection.parse("2,9-12"), 4) == (
        "0 of 4 items; there are 4 data rows, so --rows past 4 picks nothing"
    )
    assert subset_text(0, 4, Selection.parse(None, 3), 4) == "0 of 4 items"  # --limit past the end is no typo


def test_rows_past_the_last_are_named_by_validate_plan_and_run(tmp_path: Path, emulator: Emulator) -> None:
    """`--rows` past the sheet's last data row says so in validate's, plan's and run's summaries (exit 0)."""
    pipeline = write_pipeline(tmp_path, 4)
    for command in ("validate", "plan"):
        res = cli(command, str(pipeline), "--rows", "3-9")
        assert res.returncode == 0, res.stderr
        assert "there are 4 data rows, so --rows past 4 picks nothing" in res.stdout
    res = run_cli(pipeline, cli_env(emulator), "--rows", "40")
    assert res.returncode == 0, res.stderr
    assert "a subset: 0 of 4 items; there are 4 data rows" in res.stdout


def test_subset_run_then_full_run_reuses_the_subset(tmp_path: Path, emulator: Emulator) -> None:
    """`run --rows 1-2,5` starts only those rows' runs and says it was a subset; the full run afterwards starts
    only the rest (counted at the emulator), reusing the subset's runs."""
    pipeline = write_pipeline(tmp_path, 6, banner=False)
    env = cli_env(emulator)
    first = run_cli(pipeline, env, "--rows", "1-2,5")
    assert first.returncode == 0, first.stderr
    assert "a subset: 3 of 6 items" in first.stdout
    assert emulator.stats.starts == 3
    plan = cli("plan", str(pipeline), env=env)
    assert plan.returncode == 0, plan.stderr
    assert "would start 3 runs" in plan.stdout
    full = run_cli(pipeline, env)
    assert full.returncode == 0, full.stderr
    assert "subset" not in full.stdout
    assert emulator.stats.starts == 6
    assert manifest_states(pipeline) == {"completed": 6}


def test_limit_takes_the_first_items_after_where(tmp_path: Path, emulator: Emulator) -> None:
    """`--limit 2` starts the first two items; plan --limit says the subset and counts no orphans."""
    pipeline = write_pipeline(tmp_path, 5, banner=False)
    env = cli_env(emulator)
    res = run_cli(pipeline, env, "--limit", "2")
    assert res.returncode == 0, res.stderr
    assert emulator.stats.starts == 2
    plan = cli("plan", str(pipeline), "--rows", "3-5", env=env)
    assert plan.returncode == 0, plan.stderr
    assert "(a subset: 3 of 5 items)" in plan.stdout
    assert "would start 3 runs" in plan.stdout
    assert "orphaned (kept as history)" not in plan.stdout


def test_validate_reports_the_subset(tmp_path: Path) -> None:
    """`validate --rows 2` checks everything and says what the subset holds."""
    pipeline = write_pipeline(tmp_path, 4)
    res = cli("validate", str(pipeline), "--rows", "2")
    assert res.returncode == 0, res.stderr
    assert "a subset: 1 of 4 items, 2 runs" in res.stdout


@pytest.mark.parametrize("command", ["run", "plan", "validate"])
@pytest.mark.parametrize("flags", [("--rows", "5-1"), ("--rows", "x"), ("--limit", "0"), ("--limit", "two")])
def test_bad_subset_flags_exit_2_with_one_line(tmp_path: Path, command: str, flags: tuple[str, str]) -> None:
    """A malformed --rows or --limit exits 2 with one line naming the flag, before anything is read."""
    pipeline = write_pipeline(tmp_path, 2)
    res = cli(command, str(pipeline), *flags)
    assert res.returncode == 2
    assert flags[0] in res.stderr
    assert "Traceback" not in res.stderr
