"""Running a batch: `Executor` streams the plan and runs each planned run as `lifecycle.decide` says, with a stop
scope (pools, stops), a starter (app gate, write-ahead intent, ledger), reconcile, follow (webhook, /wait,
polling), completion and downloads as separate parts. `lamina_batch.executor` re-exports the public names.
"""

from __future__ import annotations

from lamina_batch.events import StopReason
from lamina_batch.lifecycle import UPSTREAM_FAILED
from lamina_batch.times import parse_timestamp

from .context import START_GRACE, ExecOptions
from .executor import Executor, RunResult

__all__ = ["START_GRACE", "UPSTREAM_FAILED", "ExecOptions", "Executor", "RunResult", "StopReason", "parse_timestamp"]
