"""lamina-batch: run Lamina AI apps over a spreadsheet, safely (plan, start, poll, checkpoint, resume).

The public library API is listed in `__all__` (imported lazily, so `lamina-batch --help` stays fast); the
`lamina-batch` command lives in `lamina_batch.cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS: dict[str, str] = {
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
    "ApiError": "errors",
}

__all__ = [
    "ApiError",
    "ConfigError",
    "ExecOptions",
    "Executor",
    "ItemPlan",
    "LaminaBatchError",
    "LaminaClient",
    "Manifest",
    "Pipeline",
    "PlannedRun",
    "ReportInput",
    "RunRecord",
    "RunResult",
    "RunState",
    "StopReason",
    "__version__",
    "cancel_running",
    "check_apps",
    "expand_runs",
    "iter_items",
    "load_pipeline",
    "merge_manifests",
    "parse_duration",
    "parse_rate",
    "plan_against_manifest",
    "render_inputs",
    "shard_of",
    "status_report",
    "validate_pipeline",
    "write_report",
]

if TYPE_CHECKING:
    from lamina_batch.client import LaminaClient
    from lamina_batch.errors import ApiError, ConfigError, LaminaBatchError
    from lamina_batch.events import StopReason
    from lamina_batch.executor import ExecOptions, Executor, RunResult
    from lamina_batch.manifest import Manifest, merge_manifests
    from lamina_batch.matrix import expand_runs, iter_items, render_inputs, shard_of, validate_pipeline
    from lamina_batch.models import ItemPlan, Pipeline, PlannedRun, RunRecord, RunState
    from lamina_batch.planner import cancel_running, plan_against_manifest, status_report
    from lamina_batch.preflight import check_apps
    from lamina_batch.reports import ReportInput, write_report
    from lamina_batch.spec import load_pipeline, parse_duration, parse_rate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina_batch' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lamina_batch.{module}"), name)
