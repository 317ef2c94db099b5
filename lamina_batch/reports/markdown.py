"""Markdown summary: counts by state per step and the failures with row and reason, for humans and
`$GITHUB_STEP_SUMMARY` (which `append_github_summary` appends to; the CLI decides when)."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path

from lamina_batch.atomic import atomic_text_writer
from lamina_batch.models import RunRecord, RunState
from lamina_batch.reports.common import (
    STATE_LABELS,
    STATE_ORDER,
    ReportInput,
    add_credits,
    credits_line,
    error_text,
    item_label,
    verdict_of,
)

FAILURE_CAP = 50
_REASON_CAP = 300


def md_cell(text: str) -> str:
    """Text made safe for one GitHub table cell: no raw HTML, no pipes or newlines breaking the row."""
    text = html.escape(text, quote=False)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return " ".join(text.split())


def render_markdown(data: ReportInput, *, failure_cap: int = FAILURE_CAP) -> str:
    """The summary as Markdown text: one pass over the records, at most `failure_cap` failures kept."""
    counts: dict[str, dict[RunState, int]] = {step: {} for step in data.step_ids}
    failures: list[RunRecord] = []
    more = 0
    spent: dict[str, float] = {}
    reviewed: dict[str, int] = {}
    for rec in data.records:
        add_credits(spent, rec)
        per_state = counts.setdefault(rec.step_id, {})
        per_state[rec.state] = per_state.get(rec.state, 0) + 1
        if data.verdicts and rec.state is RunState.COMPLETED:
            v = verdict_of(data, rec)
            word = v.verdict if v is not None else "unreviewed"
            reviewed[word] = reviewed.get(word, 0) + 1
        if rec.state.bad:
            if len(failures) < failure_cap:
                failures.append(rec)
            else:
                more += 1

    shown = [s for s in STATE_ORDER if any(c.get(s) for c in counts.values())] or [RunState.COMPLETED]
    lines = [f"## lamina-batch: {md_cell(data.pipeline_name)}", ""]
    lines.append("| step | runs | " + " | ".join(STATE_LABELS[s] for s in shown) + " |")
    lines.append("|---|---:|" + "---:|" * len(shown))
    for step, per_state in counts.items():
        total = sum(per_state.values())
        cells = [str(per_state.get(s, 0)) for s in shown]
        lines.append(f"| {md_cell(step)} | {total} | " + " | ".join(cells) + " |")
    lines.append("")
    if data.not_started:
        lines += [f"**{data.not_started} planned runs were never started**: run the same command again to go on.", ""]
    spent_line = credits_line(spent)
    if spent_line is not None:
        lines += [md_cell(spent_line[0].upper() + spent_line[1:]), ""]

    n_bad = len(failures) + more
    if n_bad == 0:
        lines.append("No failed, cancelled, timed out or unknown runs.")
    else:
        lines += [f"### Failures ({n_bad})", "", "| step | row | state | reason |", "|---|---|---|---|"]
        for rec in failures:
            reason = error_text(rec) or STATE_LABELS[rec.state]
            if len(reason) > _REASON_CAP:
                reason = reason[: _REASON_CAP - 1] + "…"
            lines.append(
                f"| {md_cell(rec.step_id)} | {md_cell(item_label(rec))} | {STATE_LABELS[rec.state]} "
                f"| {md_cell(reason)} |"
            )
        if more:
            lines += ["", f"… and {more} more."]
    if reviewed:
        lines += [
            "",
            f"Review: {reviewed.get('approved', 0)} approved, {reviewed.get('rejected', 0)} rejected, "
            f"{reviewed.get('unreviewed', 0)} unreviewed.",
        ]
    lines.append("")
    return "\n".join(lines)


def write_markdown(data: ReportInput, out: Path) -> None:
    """Write the Markdown summary to `out` atomically."""
    text = render_markdown(data)
    with atomic_text_writer(out, newline="\n") as fh:
        fh.write(text)


def append_github_summary(text: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Append `text` to the file `$GITHUB_STEP_SUMMARY` names; return that path, or None when it is not set.

    Appending (not replacing) is what GitHub expects: several steps of a job share the one summary file.
    """
    environ = os.environ if env is None else env
    target = environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8", newline="\n") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path
