"""The README's measured claims against their sources: the benchmark table, the issue-4 lines and the figures its
plain reading quotes must be those in benchmarks/results/latest.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
RESULTS: dict[str, Any] = json.loads((REPO / "benchmarks" / "results" / "latest.json").read_text(encoding="utf-8"))
HEADER = "| workload | contender | C | done/N | wall s |"

# README column -> the JSON field it shows (None: a text column compared as is)
NUMERIC = {
    "C": "concurrency",
    "wall s": "wall",
    "real-time equivalent s": "wall_equiv",
    "ideal s": "ideal_equiv",
    "req/run": "requests_per_run",
    "429s": "sent_429",
    "CPU s": "cpu",
    "CPU s/1k runs": "cpu_per_1000",
    "peak RSS MiB": "peak_rss_mib",
    "dup starts": "duplicate_starts",
}


def readme_table() -> list[dict[str, str]]:
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip().strip("|").split("|")), strict=True)))
    return rows


def shows(cell: str, value: float | None) -> bool:
    """A table cell shows `value` when it is `value` rounded to the digits the cell has ('n/a' for None)."""
    if value is None:
        return cell == "n/a"
    digits = len(cell.partition(".")[2])
    return abs(float(cell) - value) <= 0.5 * 10**-digits + 1e-9


def lamina(workload: str) -> list[dict[str, Any]]:
    return [r for r in RESULTS["rows"] if r["workload"].startswith(workload) and r["contender"] == "lamina-batch"]


def script(workload: str) -> list[dict[str, Any]]:
    rows = RESULTS["rows"]
    return [r for r in rows if r["workload"].startswith(workload) and r["contender"] == "baseline: async script"]


def span(values: list[float], fmt: str) -> str:
    """'lo-hi' as the README writes a range (one figure when both ends read the same)."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def test_benchmark_table_rows_are_the_measured_rows() -> None:
    """Every row of the README's benchmark table shows exactly the figures of its row in latest.json, in order."""
    table, measured = readme_table(), RESULTS["rows"]
    assert len(table) == len(measured)
    for shown, row in zip(table, measured, strict=True):
        assert (shown["workload"], shown["contender"], shown["note"]) == (
            row["workload"],
            row["contender"],
            row["note"],
        )
        assert shown["done/N"] == f"{row['completed']}/{row['n']}"
        for column, key in NUMERIC.items():
            assert shows(shown[column], row[key]), (row["workload"], row["contender"], column, shown[column], row[key])
        assert shown["peak in flight"] == str(row["extra"].get("peak_active", "n/a"))


def test_benchmark_provenance_and_issue_4_lines_match_the_results() -> None:
    """The README names the date, command and machine of latest.json and quotes its issue-4 lines verbatim."""
    meta = RESULTS["meta"]
    machine = meta["machine"]
    assert (
        f"Measured {meta['date']} with `{meta['command']}` on {machine['uname']}, {machine['cpu']}, "
        f"{machine['cores']} cores, Python {machine['python']}."
    ) in README
    assert meta["checks"]
    for line in meta["checks"]:
        assert f"\n- {line}\n" in README


def per_run(rows: list[dict[str, Any]]) -> str:
    return span([r["requests_per_run"] for r in rows], ".2f")


def real_time(rows: list[dict[str, Any]]) -> str:
    return span([r["wall_equiv"] for r in rows], ".0f")


CLAIMS = {
    "w2-wall": lambda: (
        f"in {lamina('2 ')[0]['wall']:.2f} s (median of three: {span(lamina('2 ')[0]['extra']['walls'], '.2f')} s)"
    ),
    "w2-script": lambda: f"the async script's {script('2 ')[0]['wall']:.0f} s",
    "requests": lambda: f"{per_run(lamina('1 '))} a run on the runs API, {per_run(lamina('3 '))} on the executions API",
    "webhooks": lambda: f"{per_run(lamina('4 '))} with webhooks",
    "script-requests": lambda: f"the async script's {per_run(script('1 ') + script('3 '))}",
    "limited-walls": lambda: (
        f"({real_time(lamina('1 ') + lamina('3 '))} s against {real_time(script('1 ') + script('3 '))} s)"
    ),
    "resume": lambda: f"({lamina('5 ')[0]['wall_equiv']:.0f} s to finish the rest)",
    "resume-script": lambda: f"again and takes {script('5 ')[0]['wall_equiv']:.0f} s",
    "memory": lambda: (
        f"holds {lamina('6 ')[1]['peak_rss_mib']:.1f} MiB at peak and takes {lamina('6 ')[1]['wall']:.1f} s"
    ),
}


@pytest.mark.parametrize("claim", list(CLAIMS))
def test_plain_reading_quotes_the_measured_figures(claim: str) -> None:
    """Each figure the README's plain reading of the benchmark quotes is the one latest.json holds."""
    assert CLAIMS[claim]() in " ".join(README.split())
