"""The executor's public names, kept importable here: the executor itself lives in the `execute` package."""

from __future__ import annotations

from lamina_batch.crash import crashpoint
from lamina_batch.execute import START_GRACE, UPSTREAM_FAILED, ExecOptions, Executor, RunResult, StopReason
from lamina_batch.times import parse_timestamp

__all__ = [
    "START_GRACE",
    "UPSTREAM_FAILED",
    "ExecOptions",
    "Executor",
    "RunResult",
    "StopReason",
    "crashpoint",
    "parse_timestamp",
]
