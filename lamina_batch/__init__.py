"""lamina-batch: run Lamina AI apps over a spreadsheet, safely (plan, start, poll, checkpoint, resume).

The public library API is listed in `__all__` (imported lazily, so `lamina-batch --help` stays fast): start with
`run_batch(path, BatchOptions(...))`, `plan` and `load_pipeline`. The `lamina-batch` command is `lamina_batch.cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    "run_batch": "batch",
    "run_batch_async": "batch",
    "BatchOptions": "options",
    "BatchResult": "batch",
    "validate": "operations",
    "plan": "operations",
    "status": "operations",
    "cancel": "operations",
    "report": "operations",
    "load_pipeline": "spec",
    "parse_duration": "spec",
    "parse_rate": "spec",
    "iter_items": "matrix",
    "expand_runs": "matrix",
    "render_inputs": "matrix",
    "validate_pipeline": "matrix",
    "shard_of": "matrix",
    "LaminaClient": "client",
    "Manifest": "manifest",
    "merge_manifests": "manifest",
    "Executor": "executor",
    "ExecOptions": "executor",
    "RunResult": "executor",
    "StopReason": "events",
    "plan_against_manifest": "planner",
    "status_report": "planner",
    "cancel_running": "planner",
    "check_apps": "preflight",
    "write_report": "reports",
    "ReportInput": "reports",
    "Pipeline": "models",
    "PlannedRun": "models",
    "ItemPlan": "models",
    "RunRecord": "models",
    "RunState": "models",
    "LaminaBatchError": "errors",
    "ConfigError": "errors",
    "OptionError": "errors",
    "ApiError": "errors",
}

__all__ = [
    "ApiError",
    "BatchOptions",
    "BatchResult",
    "ConfigError",
    "ExecOptions",
    "Executor",
    "ItemPlan",
    "LaminaBatchError",
    "LaminaClient",
    "Manifest",
    "OptionError",
    "Pipeline",
    "PlannedRun",
    "ReportInput",
    "RunRecord",
    "RunResult",
    "RunState",
    "StopReason",
    "__version__",
    "cancel",
    "cancel_running",
    "check_apps",
    "expand_runs",
    "iter_items",
    "load_pipeline",
    "merge_manifests",
    "parse_duration",
    "parse_rate",
    "plan",
    "plan_against_manifest",
    "render_inputs",
    "report",
    "run_batch",
    "run_batch_async",
    "shard_of",
    "status",
    "status_report",
    "validate",
    "validate_pipeline",
    "write_report",
]

if TYPE_CHECKING:
    from lamina_batch.batch import BatchResult, run_batch, run_batch_async
    from lamina_batch.client import LaminaClient
    from lamina_batch.errors import ApiError, ConfigError, LaminaBatchError, OptionError
    from lamina_batch.events import StopReason
    from lamina_batch.executor import ExecOptions, Executor, RunResult
    from lamina_batch.manifest import Manifest, merge_manifests
    from lamina_batch.matrix import expand_runs, iter_items, render_inputs, shard_of, validate_pipeline
    from lamina_batch.models import ItemPlan, Pipeline, PlannedRun, RunRecord, RunState
    from lamina_batch.operations import cancel, plan, report, status, validate
    from lamina_batch.options import BatchOptions
    from lamina_batch.planner import cancel_running, plan_against_manifest, status_report
    from lamina_batch.preflight import check_apps
    from lamina_batch.reports import ReportInput, write_report
    from lamina_batch.spec import load_pipeline, parse_duration, parse_rate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina_batch' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lamina_batch.{module}"), name)
