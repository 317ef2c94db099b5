"""Preflight: rendered inputs checked against the live app definitions before anything is started
(`validate --check-apps` and the start of `run`). One get_app per distinct app; problems, not exceptions."""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from lamina_batch.errors import NotFoundError, Problem
from lamina_batch.matrix import display_path
from lamina_batch.models import AppInfo, AppParameter, ItemPlan, Pipeline, PlannedRun, Step

UPSTREAM_MARKER = "<lamina-batch:upstream:"
MAX_PROBLEMS = 50


class AppSource(Protocol):
    """What preflight needs of a client (LaminaClient fits; tests pass fakes)."""

    async def get_app(self, app_id: str) -> AppInfo: ...


class _Collector:
    """Ordered, de-duplicated problems, capped; counts what it had to leave out."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept: dict[Problem, None] = {}
        self._extra: set[int] = set()  # hashes only: a 100k-row batch with one bad column stays small

    def add(self, problem: Problem) -> None:
        if problem in self.kept:
            return
        if len(self.kept) < self.cap:
            self.kept[problem] = None
        else:
            self._extra.add(hash(problem))

    def result(self) -> list[Problem]:
        problems = list(self.kept)
        if self._extra:
            problems.append(Problem(f"... and {len(self._extra)} more problems not shown"))
        return problems


async def check_apps(
    pipeline: Pipeline,
    client: AppSource,
    runs: Iterable[ItemPlan],
    *,
    max_problems: int = MAX_PROBLEMS,
) -> list[Problem]:
    """Every problem the live apps find with the planned runs (empty: all fits).

    Costs one get_app per distinct app. A missing app is a Problem; any other API failure (a rejected key,
    an outage) propagates, since the answer would be meaningless."""
    app_ids = list(dict.fromkeys(step.app for step in pipeline.steps))
    fetched = await asyncio.gather(*(client.get_app(a) for a in app_ids), return_exceptions=True)
    apps: dict[str, AppInfo | None] = {}
    for app_id, result in zip(app_ids, fetched, strict=True):
        if isinstance(result, NotFoundError):
            apps[app_id] = None
        elif isinstance(result, BaseException):
            raise result
        else:
            apps[app_id] = result

    sink = _Collector(max_problems)
    file = display_path(pipeline.path)
    for step in pipeline.steps:
        app = apps[step.app]
        if app is None:
            sink.add(
                Problem(
                    f"step '{step.id}': app '{step.app}' does not exist or this API key cannot see it",
                    file=file,
                    line=step.line,
                    path=f"steps.{step.id}.app",
                    hint="`lamina-batch apps list` shows the apps you can use",
                )
            )
            continue
        _check_names(sink, file, step, app, step.inputs.keys())
        _check_outputs(sink, file, step, app)

    by_step = {step.id: step for step in pipeline.steps}
    for plan in runs:
        for run in plan.runs:
            run_step = by_step.get(run.step_id)
            run_app = apps.get(run.app_id)
            if run_step is None or run_app is None:
                continue
            _check_names(sink, file, run_step, run_app, run.inputs.keys())
            _check_values(sink, file, run_step, run_app, run)
    return sink.result()


def _app_label(app: AppInfo) -> str:
    return f"app '{app.name}' ({app.app_id})"


def _input_path(step: Step, name: str) -> str:
    return f"steps.{step.id}.inputs[{name!r}]"


def _suggest(name: str, app: AppInfo) -> str:
    names = [p.name for p in app.parameters]
    for p in app.parameters:
        # Names are case-sensitive on the server; the API key (`prompt`) is not what inputs are keyed by.
        if name.lower() in (p.name.lower(), (p.key or "").lower()):
            return f"did you mean '{p.name}'? parameter names are exact"
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "its parameters: " + ", ".join(repr(n) for n in names) if names else "it takes no parameters"


def _check_names(sink: _Collector, file: str, step: Step, app: AppInfo, given: Iterable[str]) -> None:
    known = {p.name for p in app.parameters}
    given_set = set(given)
    for name in given_set - known:
        sink.add(
            Problem(
                f"{_app_label(app)} has no parameter {name!r}",
                file=file,
                line=step.line,
                path=_input_path(step, name),
                hint=_suggest(name, app),
            )
        )
    for param in app.parameters:
        # `required` is unreliable (DESIGN.md §3); a parameter with no default is what must be supplied.
        if not param.has_default and param.name not in given_set:
            sink.add(
                Problem(
                    f"{_app_label(app)} needs {param.name!r} (it has no default) but the step does not set it",
                    file=file,
                    line=step.line,
                    path=f"steps.{step.id}.inputs",
                    hint=f"add {param.name!r} under inputs",
                )
            )


def _check_outputs(sink: _Collector, file: str, step: Step, app: AppInfo) -> None:
    labels = [o.label for o in app.outputs]
    for label in step.outputs or ():
        if label not in labels:
            close = difflib.get_close_matches(label, labels, n=1, cutoff=0.6)
            sink.add(
                Problem(
                    f"{_app_label(app)} has no output {label!r}",
                    file=file,
                    line=step.line,
                    path=f"steps.{step.id}.outputs",
                    hint=f"did you mean '{close[0]}'?" if close else "its outputs: " + ", ".join(map(repr, labels)),
                )
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _row_label(run: PlannedRun) -> str:
    key = f" ({run.item.key})" if run.item.key else ""
    return f"row {run.item.row_number}{key}"


def _check_values(sink: _Collector, file: str, step: Step, app: AppInfo, run: PlannedRun) -> None:
    params: Mapping[str, AppParameter] = {p.name: p for p in app.parameters}
    for name, value in run.inputs.items():
        param = params.get(name)
        if param is None or (isinstance(value, str) and UPSTREAM_MARKER in value):
            continue  # unknown names are reported per step; upstream outputs are only known at run time
        message: str | None = None
        hint: str | None = None
        if param.type == "options" and param.options is not None:
            text = value if isinstance(value, str) else None if isinstance(value, dict | list) else str(value)
            if text is None or text not in param.options:
                message = f"{_short(value)} is not an option of {name!r}"
                # Options are short labels like "16:9" where fuzzy matching misleads; only case is a safe guess.
                same = [o for o in param.options if text is not None and o.lower() == text.strip().lower()]
                hint = f"did you mean '{same[0]}'? " if same else ""
                hint += "options: " + ", ".join(param.options)
        elif param.type == "url":
            if value == "" and param.has_default:
                continue  # empty means "use the default" for an optional image
            if not _is_http_url(value):
                message = f"{name!r} must be a public http(s) URL, got {_short(value)}"
        if message is not None:
            sink.add(
                Problem(
                    f"{_row_label(run)}: {message}",
                    file=file,
                    line=step.line,
                    path=_input_path(step, name),
                    hint=hint,
                )
            )


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
