"""Frozen value types shared across layers: the parsed pipeline, planned runs, API answers, manifest states.

Modules import these instead of passing dicts around; TypedDicts appear only at the wire/JSON edge (client, emulator).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .times import parse_timestamp

Dialect = Literal["runs", "executions"]


# --------------------------------------------------------------------------- the pipeline spec (DESIGN.md §1)


@dataclass(frozen=True)
class Rate:
    """A request rate such as 90/min: `count` requests per `per_seconds` seconds."""

    count: float
    per_seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.per_seconds)
        n = int(self.count) if float(self.count).is_integer() else self.count
        return f"{n}/{unit}" if unit else f"{n}/{self.per_seconds}s"


@dataclass(frozen=True)
class FailureLimit:
    """`max_failures`: a share of finished runs (judged once `min_finished` have finished) or a count."""

    fraction: float | None = 0.2
    count: int | None = None
    min_finished: int = 20

    def exceeded(self, failed: int, finished: int) -> bool:
        if self.count is not None:
            return failed > self.count
        if self.fraction is not None and finished >= self.min_finished:
            return failed / finished > self.fraction
        return False


@dataclass(frozen=True)
class WebhookSettings:
    """Webhook mode: the public URL Lamina posts to and the local address the receiver listens on."""

    url: str
    listen: str = "127.0.0.1:8787"


@dataclass(frozen=True)
class RunSettings:
    """The `run:` block; command-line flags override it field by field (dataclasses.replace)."""

    concurrency: int = 8
    rate_limit: Rate = Rate(90, 60)
    # False: the default rate, used only while the server states no budget; True: the user's own hard cap.
    rate_limit_explicit: bool = False
    poll_interval: float = 4.0
    timeout: float = 1800.0
    retries: int = 0
    max_failures: FailureLimit = FailureLimit()
    max_starts: int | None = None
    webhook: WebhookSettings | None = None
    max_credits: float | None = None  # never commit more (estimated) credits than this in one invocation


@dataclass(frozen=True)
class Step:
    """One `steps[]` entry. `inputs` maps parameter name to a template string or a literal (number/bool)."""

    id: str
    app: str
    inputs: Mapping[str, Any]
    outputs: tuple[str, ...] | None = None
    needs: tuple[str, ...] = ()
    concurrency: int | None = None
    line: int | None = None  # line of the step in the pipeline file, for messages
    input_lines: Mapping[str, int] = field(default_factory=dict)  # input name -> its line, for messages


@dataclass(frozen=True)
class MatrixSpec:
    """The `matrix:` block: exactly one source, `csv` or `xlsx` (absolute paths) or `rows`.

    A source given as an https:// URL has `url` set and its path None until `sources.localize` fetched it
    (then the path is the local copy and `url` stays, for messages). `header_row` None: the sheet's first
    non-empty row. `lines` maps a matrix key (`csv`, `key`, `where`, ...) to its line in the pipeline file,
    `row_lines` gives each inline row's line."""

    csv: Path | None = None
    rows: tuple[Mapping[str, str], ...] | None = None
    key: str | None = None
    where: str | None = None
    axes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    xlsx: Path | None = None
    sheet: str | int | None = None  # a sheet name or 1-based index; None: the first sheet
    header_row: int | None = None
    delimiter: str | None = None  # None: ',' (and a header that looks otherwise separated is refused)
    fill_down: tuple[str, ...] = ()
    url: str | None = None
    lines: Mapping[str, int] = field(default_factory=dict)
    row_lines: tuple[int, ...] = ()
    source_sha256: str | None = None  # of the copy `url` was fetched to (sources.fetch_for_invocation)


@dataclass(frozen=True)
class ReviewSpec:
    """The `review:` block: `vary` maps an input (key, name or id) to a template used from attempt 2 on."""

    vary: Mapping[str, str] = field(default_factory=dict)
    line: int | None = None


@dataclass(frozen=True)
class ReportSpec:
    """The `report:` block: `columns`, the row columns a gallery card or review tile shows (None: the ones the
    templates use)."""

    columns: tuple[str, ...] | None = None
    line: int | None = None


@dataclass(frozen=True)
class DownloadSpec:
    """The `download:` block; `path` is a template relative to `base_dir`."""

    path: str
    base_dir: Path
    line: int | None = None  # line of `download.path` in the pipeline file, for messages


@dataclass(frozen=True)
class Pipeline:
    """A loaded, validated pipeline file. Steps are in topological order (every `needs` before its user)."""

    path: Path
    name: str
    api: Dialect
    matrix: MatrixSpec
    steps: tuple[Step, ...]
    run: RunSettings
    manifest: Path
    download: DownloadSpec | None = None
    review: ReviewSpec = ReviewSpec()
    report: ReportSpec = ReportSpec()

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


# --------------------------------------------------------------------------- planning (DESIGN.md §2)


@dataclass(frozen=True)
class MatrixItem:
    """One (row, axes combination). `item_id` is stable under row reordering/insertion (used for shards)."""

    row_number: int  # 1-based data row in the CSV / inline rows
    row: Mapping[str, str]
    axes: Mapping[str, str]
    key: str | None
    item_id: str


@dataclass(frozen=True)
class PlannedRun:
    """One step for one matrix item. `inputs` are rendered; values that depend on upstream outputs hold a
    placeholder naming the upstream identity until `render_inputs` fills them in at run time."""

    identity: str
    step_id: str
    app_id: str
    item: MatrixItem
    inputs: Mapping[str, Any]
    output_labels: tuple[str, ...] | None
    needs: Mapping[str, str] = field(default_factory=dict)  # upstream step id -> upstream identity


@dataclass(frozen=True)
class ItemPlan:
    """All runs of one matrix item, in step (topological) order."""

    item: MatrixItem
    runs: tuple[PlannedRun, ...]


# --------------------------------------------------------------------------- the Lamina API, as values


@dataclass(frozen=True)
class AppParameter:
    id: str
    name: str
    type: str  # text | options | url (unknown types are kept as given)
    required: bool = False
    key: str | None = None
    options: tuple[str, ...] | None = None
    default: Any = None
    has_default: bool = False
    accept: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AppOutput:
    index: int
    label: str
    type: str


@dataclass(frozen=True)
class AppSummary:
    app_id: str
    name: str
    description: str | None
    is_public: bool
    credits: float | None = None  # credits per run, where the API lists them


@dataclass(frozen=True)
class AppInfo:
    app_id: str
    name: str
    description: str | None
    parameters: tuple[AppParameter, ...]
    outputs: tuple[AppOutput, ...]


@dataclass(frozen=True)
class RunOutput:
    id: str
    label: str
    type: str
    value: Any
    status: str  # pending | completed | error
    error: str | None = None


TERMINAL_REMOTE_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class RemoteRun:
    """A run as the API reports it (start reply, status, wait, webhook body)."""

    run_id: str
    status: str  # queued | running | completed | failed | cancelled | anything else = not terminal
    error_message: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    outputs: tuple[RunOutput, ...] = ()
    timed_out: bool = False  # /wait returned before the run finished

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_REMOTE_STATUSES


@dataclass(frozen=True)
class RunPage:
    """One page of the runs list (runs API only). Items carry no inputs or outputs."""

    items: tuple[RemoteRun, ...]
    total: int
    limit: int
    offset: int


# --------------------------------------------------------------------------- the manifest


class RunState(enum.StrEnum):
    """Manifest states (DESIGN.md §2)."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES

    @property
    def bad(self) -> bool:
        return self in BAD_STATES


FINISHED_STATES = frozenset(
    {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT, RunState.UNKNOWN}
)
BAD_STATES = frozenset({RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT, RunState.UNKNOWN})


DOWNLOAD_FAILED = "DOWNLOAD_FAILED"  # the error_code of a completed run whose files could not all be written


@dataclass(frozen=True)
class DownloadRecord:
    """One output file written to disk, as recorded in the manifest (path relative to the output dir; `folder`,
    the absolute output dir it was written under, so reports find it whatever `--output-dir` the run used)."""

    output_index: int
    label: str
    url: str
    path: str
    size: int
    sha256: str
    folder: str | None = None  # None: recorded before folders were (the pipeline's folder then)


@dataclass(frozen=True)
class RunRecord:
    """One run as the manifest holds it. Timestamps are ISO-8601 UTC strings."""

    identity: str
    step_id: str
    app_id: str
    row_number: int
    row_key: str | None
    item_id: str
    row: Mapping[str, str]
    axes: Mapping[str, str]
    inputs: Mapping[str, Any]
    output_labels: tuple[str, ...] | None
    needs: Mapping[str, str]
    state: RunState
    remote_id: str | None = None
    attempts: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    submitted_at: str | None = None  # when the current attempt's start intent was committed
    finished_at: str | None = None
    remote_duration: float | None = None  # completedAt - startedAt (or createdAt) as the API reported
    outputs: tuple[RunOutput, ...] = ()
    error: str | None = None
    error_code: str | None = None
    request_id: str | None = None
    downloads: tuple[DownloadRecord, ...] = ()
    credits_estimate: float | None = None  # expected credits the current attempt was started under
    credits_actual: float | None = None  # what the API reported the current attempt cost, where it does
    credits_earlier: float = 0.0  # what earlier attempts of this identity cost (actual, else estimate)

    @property
    def credits(self) -> float | None:
        """What this run has cost so far: earlier attempts plus the current one where it created a remote run
        (its actual cost, else the estimate it was started under); None when nothing is known."""
        current = None
        if self.remote_id is not None:
            current = self.credits_actual if self.credits_actual is not None else self.credits_estimate
        if current is None:
            return self.credits_earlier or None
        return self.credits_earlier + current

    # step id -> the attempt of that step's run (of this item) this run's current attempt consumed ({}: unknown)
    upstream_attempts: Mapping[str, int] = field(default_factory=dict)

    @property
    def submitted_epoch(self) -> float | None:
        """`submitted_at` as epoch seconds (the executor's deadlines and reconcile windows are numbers)."""
        return parse_timestamp(self.submitted_at)


@dataclass(frozen=True)
class PastAttempt:
    """An earlier attempt of a run (a retry or a redo), kept as history: what it produced and where its
    files went (download paths relative to the output folder, like the current attempt's)."""

    attempt: int
    state: RunState
    outputs: tuple[RunOutput, ...] = ()
    downloads: tuple[DownloadRecord, ...] = ()
    remote_id: str | None = None
    finished_at: str | None = None
    error: str | None = None
