"""Events a batch emits while it runs (the executor's, and `run_batch`'s PlanReady and ReportWritten): frozen
values the CLI (and tests) render or count; the library never prints, it emits these instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from .models import RunState

__all__ = [
    "DownloadFailed",
    "Event",
    "Notice",
    "PlanReady",
    "Reconciled",
    "ReportWritten",
    "RunAdopted",
    "RunFinished",
    "RunRetrying",
    "RunReused",
    "RunStarted",
    "StopReason",
    "Stopping",
]


class StopReason(enum.Enum):
    """Why `Executor.run` returned; the CLI maps it to an exit code."""

    FINISHED = "finished"
    MAX_FAILURES = "max_failures"
    MAX_STARTS = "max_starts"
    MAX_CREDITS = "max_credits"
    FATAL = "fatal"
    SIGINT = "sigint"
    SIGTERM = "sigterm"


@dataclass(frozen=True)
class PlanReady:
    """Emitted once before any run starts, when totals are known (optional: the CLI may count itself)."""

    total_runs: int
    by_step: dict[str, int]


@dataclass(frozen=True)
class RunStarted:
    """A start request created a remote run (its id is committed to the manifest)."""

    identity: str
    step_id: str
    row_number: int
    row_key: str | None
    remote_id: str
    attempt: int


@dataclass(frozen=True)
class RunFinished:
    """A run reached its final state for this invocation. `kept` is true for a failed/unknown run left as it
    was (no --retry-failed / --restart-unknown): it is reported, not run again."""

    identity: str
    step_id: str
    row_number: int
    row_key: str | None
    state: RunState
    error: str | None = None
    kept: bool = False


@dataclass(frozen=True)
class RunReused:
    """A run already completed in the manifest; nothing is sent (its downloads are re-verified)."""

    identity: str
    step_id: str
    row_number: int
    row_key: str | None
    state: RunState = RunState.COMPLETED


@dataclass(frozen=True)
class RunAdopted:
    """A remote run is followed again: `how` is "resumed" (manifest had its id) or "reconciled" (found in the
    runs list after a lost start reply)."""

    identity: str
    step_id: str
    row_number: int
    row_key: str | None
    remote_id: str
    how: str


@dataclass(frozen=True)
class RunRetrying:
    """A remote run failed and a new attempt will be started (`retries`)."""

    identity: str
    step_id: str
    row_number: int
    attempt: int
    error: str | None


@dataclass(frozen=True)
class Reconciled:
    """The outcome of reconciling a start whose reply was lost: adopted / restart / unknown."""

    identity: str
    step_id: str
    outcome: str
    remote_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class DownloadFailed:
    """An output of a completed run could not be written; the run stays completed."""

    identity: str
    step_id: str
    row_number: int
    label: str
    error: str


@dataclass(frozen=True)
class ReportWritten:
    """`run_batch` wrote a report the caller asked for (`BatchOptions.reports`), after the runs."""

    format: str
    path: Path


@dataclass(frozen=True)
class Notice:
    """A human-readable warning (backing off after errors, pauses, reconciliation results)."""

    message: str


@dataclass(frozen=True)
class Stopping:
    """No new runs will be started from now on; `message` says why in words."""

    reason: StopReason
    message: str | None = None


Event = (
    PlanReady
    | RunStarted
    | RunFinished
    | RunReused
    | RunAdopted
    | RunRetrying
    | Reconciled
    | DownloadFailed
    | ReportWritten
    | Notice
    | Stopping
)
