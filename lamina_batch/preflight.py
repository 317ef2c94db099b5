"""Preflight: rendered inputs checked against the live app definitions before anything is started
(`validate --check-apps` and the start of `run`). One get_app per distinct app; problems, not exceptions.
Inputs resolve as the server resolves them (params.py); one bad value shared by many rows is one problem."""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from lamina_batch.errors import NotFoundError, Problem
from lamina_batch.matrix import InputDigest, SeenValue, display_path
from lamina_batch.models import AppInfo, AppParameter, ItemPlan, Pipeline, Step
from lamina_batch.params import ParameterIndex, Resolution, label, preferred_spelling, resolve_inputs, suggest
from lamina_batch.templates import UPSTREAM_MARKER

MAX_PROBLEMS = 50
RANGES_KEPT = 6  # row ranges a collapsed problem lists before "..."


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


class _RowSet:
    """Distinct row numbers, fed in ascending order (axes repeat a row), kept as a few ranges and a count."""

    __slots__ = ("count", "last", "more", "ranges")

    def __init__(self) -> None:
        self.count = 0
        self.last = -1
        self.ranges: list[list[int]] = []
        self.more = False

    def add(self, row: int) -> None:
        if row == self.last or (row < self.last and any(lo <= row <= hi for lo, hi in self.ranges)):
            return
        self.count += 1
        if row < self.last:
            self.more = True  # out of order: counted, not placed (both sources feed rows in file order)
        elif self.ranges and not self.more and row == self.last + 1:
            self.ranges[-1][1] = row
        elif len(self.ranges) < RANGES_KEPT:
            self.ranges.append([row, row])
        else:
            self.more = True
        self.last = max(self.last, row)

    def text(self) -> str:
        parts = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges]
        return "rows " + ", ".join(parts) + (", ..." if self.more else "")


@dataclass
class _Group:
    """Every row whose value of one input has one problem (same message and hint)."""

    order: tuple[int, int, int, int]  # first row, step index, input index, arrival: the sort key
    line: int | None
    path: str
    message: str
    hint: str | None
    first_key: str | None
    rows: _RowSet

    def problem(self, file: str) -> Problem:
        if self.rows.count == 1:
            text = f"{_row_label(self.order[0], self.first_key)}: {self.message}"
        else:
            text = f"{self.message} in {self.rows.count} rows ({self.rows.text()})"
        return Problem(text, file=file, line=self.line, path=self.path, hint=self.hint)


class _ValueProblems:
    """Problems with rendered values; identical ones across rows collapse into one `_Group`."""

    def __init__(self) -> None:
        self.groups: dict[tuple[int, int, str, str | None], _Group] = {}

    def add(
        self,
        step: Step,
        s_index: int,
        i_index: int,
        name: str,
        verdict: tuple[str, str | None],
        row: int,
        key: str | None,
    ) -> None:
        gkey = (s_index, i_index, *verdict)
        group = self.groups.get(gkey)
        if group is None:
            order = (row, s_index, i_index, len(self.groups))
            line = _input_line(step, name)
            group = _Group(order, line, _input_path(step, name), verdict[0], verdict[1], key, _RowSet())
            self.groups[gkey] = group
        group.rows.add(row)

    def problems(self, file: str) -> list[Problem]:
        return [g.problem(file) for g in sorted(self.groups.values(), key=lambda g: g.order)]


async def _fetch_apps(pipeline: Pipeline, client: AppSource) -> dict[str, AppInfo | None]:
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
    return apps


async def check_apps(
    pipeline: Pipeline,
    client: AppSource,
    runs: Iterable[ItemPlan],
    *,
    max_problems: int = MAX_PROBLEMS,
    digest: InputDigest | None = None,
    apps_seen: dict[str, AppInfo] | None = None,
) -> list[Problem]:
    """Every problem the live apps find with the planned runs (empty: all fits).

    Costs one get_app per distinct app. A missing app is a Problem; any other API failure (a rejected key,
    an outage) propagates, since the answer would be meaningless. With `digest` (from validate_pipeline over
    the same runs), `runs` is iterated only for inputs the app constrains whose bad values the digest did not
    keep every row of (so a collapsed problem can name all its rows). `apps_seen` receives the apps fetched
    (app id -> AppInfo), for a caller that needs them later (a redo's varied inputs resolve against them)."""
    apps = await _fetch_apps(pipeline, client)
    if apps_seen is not None:
        apps_seen.update({app_id: app for app_id, app in apps.items() if app is not None})
    sink = _Collector(max_problems)
    file = display_path(pipeline.path)
    values = _ValueProblems()
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
        resolution = resolve_inputs(ParameterIndex(app), step.inputs)
        # Every run of a step renders the same input names, so names are checked once per step.
        _check_names(sink, file, step, app, resolution)
        _check_outputs(sink, file, step, app)
        for i_index, name in enumerate(step.inputs):
            param = resolution.resolved.get(name)
            if param is None or not _constrains(param):
                continue
            seen = digest.values(step.id, name) if digest is not None else None
            if seen is None or not _complete(param, seen):
                rerender.setdefault(step.id, []).append((i_index, name, param))
                continue
            for value in seen:
                verdict = _value_problem(param, value.value)
                if verdict is not None:
                    for row_number, key in value.rows:
                        values.add(step, s_index, i_index, name, verdict, row_number, key)
    if rerender:
        _render_again(pipeline, runs, rerender, values)
    for problem in values.problems(file):
        sink.add(problem)
    return sink.result()


def _complete(param: AppParameter, seen: list[SeenValue]) -> bool:
    """The digest kept every row of every value that has a problem."""
    return all(v.count == len(v.rows) or _value_problem(param, v.value) is None for v in seen)


def _render_again(
    pipeline: Pipeline,
    runs: Iterable[ItemPlan],
    rerender: dict[str, list[tuple[int, str, AppParameter]]],
    values: _ValueProblems,
) -> None:
    index = {step.id: n for n, step in enumerate(pipeline.steps)}
    by_step = {step.id: step for step in pipeline.steps}
    for plan in runs:
        for run in plan.runs:
            for i_index, name, param in rerender.get(run.step_id, ()):
                if name not in run.inputs:
                    continue
                verdict = _value_problem(param, run.inputs[name])
                if verdict is not None:
                    step = by_step[run.step_id]
                    values.add(step, index[run.step_id], i_index, name, verdict, run.item.row_number, run.item.key)


def _app_label(app: AppInfo) -> str:
    return f"app '{app.name}' ({app.app_id})"


def _input_path(step: Step, name: str) -> str:
    return f"steps.{step.id}.inputs[{name!r}]"


def _input_line(step: Step, name: str) -> int | None:
    return step.input_lines.get(name, step.line)


def _check_names(sink: _Collector, file: str, step: Step, app: AppInfo, resolution: Resolution) -> None:
    for name in resolution.unknown:
        sink.add(
            Problem(
                f"{_app_label(app)} has no parameter {name!r}",
                file=file,
                line=_input_line(step, name),
                path=_input_path(step, name),
                hint=suggest(app, name),
            )
        )
    for param, spellings in resolution.clashes:
        named = " and ".join(
            f"{s!r}" + (f" (line {step.input_lines[s]})" if s in step.input_lines else "") for s in spellings
        )
        sink.add(
            Problem(
                f"inputs {named} all set {label(param)} of {_app_label(app)}",
                file=file,
                line=_input_line(step, spellings[-1]),
                path=_input_path(step, spellings[-1]),
                hint="a parameter is named by its key, name or id: keep one of them",
            )
        )
    for param in app.parameters:
        # `required` is unreliable (DESIGN.md §3); a parameter with no default is what must be supplied.
        if not param.has_default and not resolution.given(param):
            sink.add(
                Problem(
                    f"{_app_label(app)} needs {label(param)} (it has no default) but the step does not set it",
                    file=file,
                    line=step.line,
                    path=f"steps.{step.id}.inputs",
                    hint=f"add {preferred_spelling(param)!r} under inputs",
                )
            )


def _check_outputs(sink: _Collector, file: str, step: Step, app: AppInfo) -> None:
    labels = [o.label for o in app.outputs]
    for output in step.outputs or ():
        if output not in labels:
            close = difflib.get_close_matches(output, labels, n=1, cutoff=0.6)
            sink.add(
                Problem(
                    f"{_app_label(app)} has no output {output!r}",
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


def _value_problem(param: AppParameter, value: Any) -> tuple[str, str | None] | None:
    """(message, hint) when `value` does not fit `param`, else None."""
    if isinstance(value, str) and UPSTREAM_MARKER in value:
        return None  # upstream outputs are only known at run time
    if param.type == "options" and param.options is not None:
        text = value if isinstance(value, str) else None if isinstance(value, dict | list) else str(value)
        if text is not None and text in param.options:
            return None
        guess = option_guess(text, param.options) if text is not None else None
        hint = f"did you mean '{guess}'? " if guess is not None else ""
        return f"{_short(value)} is not an option of {label(param)}", hint + "options: " + ", ".join(param.options)
    if param.type == "url":
        if value == "" and param.has_default:
            return None  # empty means "use the default" for an optional image
        if not _is_http_url(value):
            return f"{label(param)} must be a public http(s) URL, got {_short(value)}", None
    return None


_RATIO = re.compile(r"\s*(\d+)\s*[x×/:]\s*(\d+)\s*", re.IGNORECASE)


def option_guess(text: str, options: Iterable[str]) -> str | None:
    """The option `text` most likely meant: the same up to case and spaces, a ratio written `16x9`, or (for
    worded values only: fuzzy matching misleads on labels like `2:1` vs `1:1`) a prefix or a close spelling."""
    options = list(options)
    folded = re.sub(r"\s+", "", text.casefold())
    for option in options:
        if re.sub(r"\s+", "", option.casefold()) == folded:
            return option
    ratio = _RATIO.fullmatch(text)
    if ratio is not None and f"{ratio[1]}:{ratio[2]}" in options:
        return f"{ratio[1]}:{ratio[2]}"
    if not any(c.isalpha() for c in folded):
        return None
    worded = {o.casefold(): o for o in options if any(c.isalpha() for c in o)}
    prefixed = [
        o for f, o in worded.items() if min(len(f), len(folded)) >= 3 and (folded.startswith(f) or f.startswith(folded))
    ]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(folded, list(worded), n=1, cutoff=0.6)
    return worded[close[0]] if close else None


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
