"""What every report shares: the input value, atomic file writing, and grouping/labelling of manifest records.

Reports are functions over plain data (`ReportInput`), so they never touch the manifest or the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lamina_batch.credits import format_credits
from lamina_batch.models import PastAttempt as PastAttempt  # re-exported: reports and review use it
from lamina_batch.models import RunRecord, RunState
from lamina_batch.verdicts import Verdict

# The order states are shown in, everywhere: good news first, then the bad, then what is not finished.
STATE_ORDER: tuple[RunState, ...] = (
    RunState.COMPLETED,
    RunState.FAILED,
    RunState.TIMED_OUT,
    RunState.CANCELLED,
    RunState.UNKNOWN,
    RunState.RUNNING,
    RunState.SUBMITTING,
    RunState.PENDING,
)

STATE_LABELS: Mapping[RunState, str] = {
    RunState.COMPLETED: "completed",
    RunState.FAILED: "failed",
    RunState.TIMED_OUT: "timed out",
    RunState.CANCELLED: "cancelled",
    RunState.UNKNOWN: "unknown",
    RunState.RUNNING: "running",
    RunState.SUBMITTING: "submitting",
    RunState.PENDING: "pending",
}


@dataclass(frozen=True)
class ReportInput:
    """Everything a report needs. `records` come ordered by row_number (as `Manifest.iter_runs()` yields them)
    and may be a one-shot iterator; `base_dir` is the directory download paths are relative to unless
    `output_dir` names the folder the run really wrote to (then that one is used).

    Only the HTML gallery reads the rest: `columns` (the spec's `report.columns`: the row columns a card shows;
    None: `template_columns`, the columns the pipeline's templates use, in order of first use), `key_column`
    (`matrix.key`, so a card titled by its key does not list it again), `embed` (inline the images as data
    URIs), `verdicts` (the verdict in force per (identity, attempt)) and `history` (earlier attempts per
    identity, newest first)."""

    pipeline_name: str
    step_ids: Sequence[str]
    records: Iterable[RunRecord]
    base_dir: Path
    output_dir: Path | None = None
    columns: Sequence[str] | None = None
    template_columns: Sequence[str] = ()
    key_column: str | None = None
    embed: bool = False
    verdicts: Mapping[tuple[str, int], Verdict] = field(default_factory=dict)
    history: Mapping[str, Sequence[PastAttempt]] = field(default_factory=dict)
    # planned runs of the batch that were never started (a stop, a guard): the markdown summary says so
    not_started: int = 0
    thumbnails: bool = False  # the xlsx report: a small image per downloaded output in its row

    @property
    def files_dir(self) -> Path:
        """The folder download paths resolve against."""
        return self.output_dir if self.output_dir is not None else self.base_dir


def verdict_of(data: ReportInput, rec: RunRecord) -> Verdict | None:
    """The verdict in force for `rec`'s current attempt (None: not reviewed)."""
    return data.verdicts.get((rec.identity, max(rec.attempts, 1))) if data.verdicts else None


def iter_items(records: Iterable[RunRecord]) -> Iterator[list[RunRecord]]:
    """Yield the runs of one matrix item at a time, holding only one row's runs in memory.

    Records arrive ordered by row_number, but the axes combinations of one row may interleave, so runs are
    gathered per row_number and then split by item_id in order of first appearance.
    """
    current_row: int | None = None
    bucket: dict[str, list[RunRecord]] = {}
    for rec in records:
        if rec.row_number != current_row and bucket:
            yield from bucket.values()
            bucket = {}
        current_row = rec.row_number
        bucket.setdefault(rec.item_id, []).append(rec)
    yield from bucket.values()


def latest_per_step(runs: Sequence[RunRecord]) -> dict[str, RunRecord]:
    """The run to show for each step of one item: the manifest may keep older (orphaned) runs as history,
    and the most recently updated one is the one that describes the row now."""
    chosen: dict[str, RunRecord] = {}
    for rec in runs:
        prev = chosen.get(rec.step_id)
        if prev is None or (rec.updated_at or "") >= (prev.updated_at or ""):
            chosen[rec.step_id] = rec
    return chosen


def row_label(rec: RunRecord) -> str:
    """How a run's row is named to people: its key value, else `row N`."""
    return rec.row_key if rec.row_key else f"row {rec.row_number}"


def axes_label(axes: Mapping[str, str]) -> str:
    """`[aspect=1:1, size=xl]`, or the empty string without axes."""
    if not axes:
        return ""
    return "[" + ", ".join(f"{k}={v}" for k, v in axes.items()) + "]"


def item_label(rec: RunRecord) -> str:
    """Row label plus axes: unique per matrix item."""
    axes = axes_label(rec.axes)
    return f"{row_label(rec)} {axes}" if axes else row_label(rec)


def output_text(value: object) -> str:
    """An output value as a cell: strings as they are, anything else (numbers, lists) as its str()."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def is_web_url(value: object) -> bool:
    """Only http(s) links are ever emitted as links or image sources (never javascript:, data:, file:)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def credits_text(value: float | None) -> str:
    """A credits figure as a cell: 12, 2.5; empty when unknown."""
    return "" if value is None else format_credits(value)


def credits_line(by_step: Mapping[str, float]) -> str | None:
    """`credits: hero 12, banner 18; total 30` (actual cost where the API reported one, else the expected estimate
    each run was started under), or None when no run has a known cost."""
    if not by_step:
        return None
    parts = ", ".join(f"{step} {credits_text(v)}" for step, v in by_step.items())
    return f"credits: {parts}; total {credits_text(sum(by_step.values()))}"


def add_credits(by_step: dict[str, float], rec: RunRecord) -> None:
    """Add `rec`'s cost (when known) to its step's sum."""
    cost = rec.credits
    if cost is not None:
        by_step[rec.step_id] = by_step.get(rec.step_id, 0.0) + cost


def error_text(rec: RunRecord) -> str:
    """The reason a run is not completed, or the errors of its outputs when the run itself succeeded."""
    if rec.error:
        return rec.error
    if rec.error_code:
        return rec.error_code
    out_errors = [f"{o.label}: {o.error}" for o in rec.outputs if o.status == "error" and o.error]
    return "; ".join(out_errors)
