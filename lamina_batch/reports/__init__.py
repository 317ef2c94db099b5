"""Reports over manifest records: csv, jsonl, junit, html, markdown and xlsx, each written atomically.

`write_report(fmt, ReportInput(...), out)` is the one entry point the CLI needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lamina_batch.atomic import atomic_text_writer
from lamina_batch.errors import ConfigError, Problem
from lamina_batch.reports.common import ReportInput
from lamina_batch.reports.csv_report import escape_cell, write_csv
from lamina_batch.reports.html import write_html
from lamina_batch.reports.jsonl import run_to_json, write_jsonl
from lamina_batch.reports.junit import write_junit
from lamina_batch.reports.markdown import append_github_summary, render_markdown, write_markdown
from lamina_batch.reports.xlsx import write_xlsx

FORMATS = ("csv", "jsonl", "junit", "html", "markdown", "xlsx")

_WRITERS: dict[str, Callable[[ReportInput, Path], None]] = {
    "csv": write_csv,
    "jsonl": write_jsonl,
    "junit": write_junit,
    "html": write_html,
    "markdown": write_markdown,
    "xlsx": write_xlsx,  # XlsxWriter is imported only when it writes (the `excel` extra)
}


def write_report(fmt: str, data: ReportInput, out: Path) -> None:
    """Write `data` as `fmt` to `out` (atomically); an unknown format is a ConfigError (exit 2)."""
    writer = _WRITERS.get(fmt)
    if writer is None:
        raise ConfigError(
            Problem(f"unknown report format {fmt!r}", path="--report", hint=f"one of {', '.join(FORMATS)}")
        )
    writer(data, Path(out))


__all__ = [
    "FORMATS",
    "ReportInput",
    "append_github_summary",
    "atomic_text_writer",
    "escape_cell",
    "render_markdown",
    "run_to_json",
    "write_csv",
    "write_html",
    "write_jsonl",
    "write_junit",
    "write_markdown",
    "write_report",
    "write_xlsx",
]
