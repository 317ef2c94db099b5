"""GitHub Actions: `::error file=...,line=...::` annotations for bad input and a `::warning::` per failed run
(printed only when `GITHUB_ACTIONS=true`), and the run's markdown summary appended to `$GITHUB_STEP_SUMMARY`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from lamina_batch.cli.common import Out
from lamina_batch.errors import Problem

if TYPE_CHECKING:
    from lamina_batch.batch import BatchResult

__all__ = ["annotate_problems", "annotate_warning", "append_step_summary", "on_actions"]


def on_actions(environ: Mapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get("GITHUB_ACTIONS") == "true"


def _escape(text: str, *, prop: bool = False) -> str:
    """GitHub's workflow-command escaping (data: % CR LF; properties also : and ,)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def annotate_problems(problems: Iterable[Problem], out: Out) -> None:
    """One `::error::` per problem, on its file and line when known (stdout: the runner reads it there)."""
    for p in problems:
        props = []
        if p.file:
            props.append(f"file={_escape(p.file, prop=True)}")
            if p.line is not None:
                props.append(f"line={p.line}")
        head = "::error " + ",".join(props) if props else "::error"
        out.result(f"{head}::{_escape(str(p))}")


def annotate_warning(message: str, out: Out) -> None:
    out.result(f"::warning::{_escape(message)}")


def append_step_summary(result: BatchResult) -> None:
    """Append the run's markdown summary to `$GITHUB_STEP_SUMMARY` when that is set (and the run did not write
    a markdown report, which appends itself), with the runs never started counted, so a stopped batch does not
    read as done."""
    if not os.environ.get("GITHUB_STEP_SUMMARY") or any(fmt == "markdown" for fmt, _ in result.reports):
        return
    from lamina_batch.manifest import Manifest
    from lamina_batch.reports import ReportInput, append_github_summary, render_markdown
    from lamina_batch.spec import load_pipeline

    steps = [s.id for s in load_pipeline(result.pipeline_path).steps]
    with Manifest.open(result.manifest, pipeline_name=result.pipeline_name, writer=False) as manifest:
        data = ReportInput(
            result.pipeline_name, steps, manifest.iter_runs(), result.output_dir, not_started=result.not_started
        )
        append_github_summary(render_markdown(data))
