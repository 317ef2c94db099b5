"""Preflight: rendered inputs checked against the live app definitions before anything is started
(`validate --check-apps` and the start of `run`). One get_app per distinct app; problems, not exceptions.
The values come from the local check's InputDigest where it kept them, else from rendering the rows again."""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

from lamina_batch.errors import NotFoundError, Problem
from lamina_batch.matrix import InputDigest, display_path
from lamina_batch.models import AppInfo, AppParameter, ItemPlan, Pipeline, Step
from lamina_batch.templates import UPSTREAM_MARKER

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
        self.uncounted = 0  # problems known only by number (rows an InputDigest did not keep)

    def add(self, problem: Problem) -> None:
        if problem in self.kept:
            return
        if len(self.kept) < self.cap:
            self.kept[problem] = None
        else:
            self._extra.add(hash(problem))

    def result(self) -> list[Problem]:
        problems = list(self.kept)
        more = len(self._extra) + self.uncounted
        if more:
            problems.append(Problem(f"... and {more} more problems not shown"))
        return problems


async def check_apps(
    pipeline: Pipeline,
    client: AppSource,
    runs: Iterable[ItemPlan],
    *,
    max_problems: int = MAX_PROBLEMS,
    digest: InputDigest | None = None,
) -> list[Problem]:
    """Every problem the live apps find with the planned runs (empty: all fits).

    Costs one get_app per distinct app. A missing app is a Problem; any other API failure (a rejected key,
    an outage) propagates, since the answer would be meaningless. With `digest` (from validate_pipeline over
    the same runs), `runs` is iterated only for inputs whose values it did not keep and the app constrains."""
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
    # (row, step index, input index, problem): value problems go out in row order, whichever way they were found
    found: list[tuple[int, int, int, Problem]] = []
    rerender: dict[str, list[tuple[int, str, AppParameter]]] = {}
    for s_index, step in enumerate(pipeline.steps):
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
        # Every run of a step renders the same input names, so names are checked once per step.
        _check_names(sink, file, step, app, step.inputs.keys())
        _check_outputs(sink, file, step, app)
        params = {p.name: p for p in app.parameters}
        for i_index, name in enumerate(step.inputs):
            param = params.get(name)
            if param is None or not _constrains(param):
                continue
            seen = digest.values(step.id, name) if digest is not None else None
            if seen is None:
                rerender.setdefault(step.id, []).append((i_index, name, param))
                continue
            for value in seen:
                verdict = _value_problem(param, name, value.value)
                if verdict is None:
                    continue
                for row_number, key in value.rows:
                    problem = _problem(file, step, name, _row_label(row_number, key), *verdict)
                    found.append((row_number, s_index, i_index, problem))
                sink.uncounted += value.count - len(value.rows)

    if rerender:
        index = {step.id: n for n, step in enumerate(pipeline.steps)}
        by_step = {step.id: step for step in pipeline.steps}
        for plan in runs:
            for run in plan.runs:
                for i_index, name, param in rerender.get(run.step_id, ()):
                    if name not in run.inputs:
                        continue
                    verdict = _value_problem(param, name, run.inputs[name])
                    if verdict is not None:
                        label = _row_label(run.item.row_number, run.item.key)
                        problem = _problem(file, by_step[run.step_id], name, label, *verdict)
                        found.append((run.item.row_number, index[run.step_id], i_index, problem))
    found.sort(key=lambda f: f[:3])
    for *_, problem in found:
        sink.add(problem)
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


def _row_label(row_number: int, key: str | None) -> str:
    return f"row {row_number}" + (f" ({key})" if key else "")


def _constrains(param: AppParameter) -> bool:
    """The parameter's type limits the values it takes (so rendered values must be checked one by one)."""
    return (param.type == "options" and param.options is not None) or param.type == "url"


def _value_problem(param: AppParameter, name: str, value: Any) -> tuple[str, str | None] | None:
    """(message, hint) when `value` does not fit `param`, else None."""
    if isinstance(value, str) and UPSTREAM_MARKER in value:
        return None  # upstream outputs are only known at run time
    if param.type == "options" and param.options is not None:
        text = value if isinstance(value, str) else None if isinstance(value, dict | list) else str(value)
        if text is not None and text in param.options:
            return None
        # Options are short labels like "16:9" where fuzzy matching misleads; only case is a safe guess.
        same = [o for o in param.options if text is not None and o.lower() == text.strip().lower()]
        hint = f"did you mean '{same[0]}'? " if same else ""
        return f"{_short(value)} is not an option of {name!r}", hint + "options: " + ", ".join(param.options)
    if param.type == "url":
        if value == "" and param.has_default:
            return None  # empty means "use the default" for an optional image
        if not _is_http_url(value):
            return f"{name!r} must be a public http(s) URL, got {_short(value)}", None
    return None


def _problem(file: str, step: Step, name: str, row: str, message: str, hint: str | None) -> Problem:
    return Problem(f"{row}: {message}", file=file, line=step.line, path=_input_path(step, name), hint=hint)


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
