"""The matrix: items from the row stream (`rows.py`) with `where`, `key` and `axes`, plan-time rendering, run
identity (DESIGN.md §2), shards and subsets, run-time `render_inputs`, and `validate_pipeline` that renders
everything for every row. Bookkeeping over all rows (key uniqueness, occurrence numbers) lives in a DigestIndex,
so memory stays flat in the number of rows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jinja2

from lamina_batch import templates
from lamina_batch.errors import ConfigError, MatrixError, Problem, TemplateError
from lamina_batch.models import ItemPlan, MatrixItem, Pipeline, PlannedRun, RunOutput, Step
from lamina_batch.rows import RowStream, SourceRow, display_path, open_rows, read_table, source_name
from lamina_batch.seen import DigestIndex
from lamina_batch.selection import Picker, Selection, Tally
from lamina_batch.templates import Namespace

MAX_PROBLEMS = 50
IDENTITY_HEX = 32

__all__ = [
    "MAX_PROBLEMS",
    "InputDigest",
    "Selection",
    "Tally",
    "ValidationSummary",
    "display_path",
    "expand_runs",
    "item_identity",
    "iter_items",
    "parse_shard",
    "read_csv_header",
    "render_inputs",
    "render_vary",
    "run_identity",
    "shard_of",
    "validate_pipeline",
]


class SeenValue:
    """One distinct rendered value of an input: the first rows that rendered it, and how many rows did."""

    __slots__ = ("count", "last_row", "rows", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.rows: list[tuple[int, str | None]] = []  # (row number, key), the first ROWS_CAP of them
        self.count = 0  # distinct rows (axes combinations of one row count once)
        self.last_row = -1


class InputDigest:
    """What the local check saw of each step's rendered inputs, so the preflight can hold them against the
    live apps without rendering every row again: per (step, input) the distinct values, each with its first
    rows. An input with more than `values_cap` distinct values (a prompt per row, say) keeps none: the
    preflight renders again if, and only if, the app says such an input is an option or a URL."""

    def __init__(self, *, values_cap: int = 256, rows_cap: int = MAX_PROBLEMS) -> None:
        self.values_cap = values_cap
        self.rows_cap = rows_cap
        self.totals: dict[str, int] = {}  # runs per step
        self._seen: dict[tuple[str, str], dict[str, SeenValue] | None] = {}

    def add(self, run: PlannedRun) -> None:
        self.totals[run.step_id] = self.totals.get(run.step_id, 0) + 1
        row = run.item.row_number
        for name, value in run.inputs.items():
            if isinstance(value, str) and templates.UPSTREAM_MARKER in value:
                continue  # known only at run time: the preflight skips these anyway
            slot = (run.step_id, name)
            values = self._seen.get(slot, {})
            if values is None:
                continue
            vkey = value if isinstance(value, str) else "\x00" + _CANONICAL.encode(value)
            seen = values.get(vkey)
            if seen is None:
                if len(values) >= self.values_cap:
                    self._seen[slot] = None
                    continue
                seen = values[vkey] = SeenValue(value)
                self._seen[slot] = values
            if seen.last_row != row:
                seen.last_row = row
                seen.count += 1
                if len(seen.rows) < self.rows_cap:
                    seen.rows.append((row, run.item.key))

    def values(self, step_id: str, name: str) -> list[SeenValue] | None:
        """The distinct values of one input in row order of first use, or None if too many were kept."""
        values = self._seen.get((step_id, name), {})
        return None if values is None else list(values.values())


@dataclass(frozen=True)
class ValidationSummary:
    """What `validate` found: data rows read, matrix items after `where` x axes, steps, runs planned; the items
    and runs a Selection picked (all of them without one); and warnings that are not errors but mean there is
    nothing to do (a CSV with a header and no rows, a `where` that keeps no row): `validate` shows them, `run`
    refuses an empty batch."""

    rows: int
    items: int
    steps: int
    runs: int
    selected_items: int = -1  # -1: the same as items (no selection)
    selected_runs: int = -1
    warnings: tuple[Problem, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.selected_items < 0:
            object.__setattr__(self, "selected_items", self.items)
        if self.selected_runs < 0:
            object.__setattr__(self, "selected_runs", self.runs)


# --------------------------------------------------------------------------- problem collection


class _Collector:
    """Either raises at the first problem (streaming for `run`/`plan`) or gathers every problem, grouping the
    same message across rows (`row 3: ... (and 99 more rows)`) and capping the list for `validate`."""

    def __init__(self, *, collect: bool) -> None:
        self.collect = collect
        self.groups: dict[tuple[str | None, int | None, str | None, str, str | None], list[Any]] = {}
        self.dropped = 0
        self.matrix_kind = False

    def add(self, problem: Problem, *, row: int | str | None = None, template: bool = False) -> None:
        """Record (or raise) `problem`; `row` (a number or a label like `row 3 (book.xlsx:Sheet1!4:4)`) prefixes
        its message but not its grouping, so one mistake over many rows is one line."""
        if not template:
            self.matrix_kind = True
        label = f"row {row}" if isinstance(row, int) else row
        shown = Problem(f"{label}: {problem.message}", problem.file, problem.line, problem.path, problem.hint)
        if not self.collect:
            raise (TemplateError if template else MatrixError)(shown if row is not None else problem)
        gkey = (problem.file, problem.line, problem.path, problem.message, problem.hint)
        group = self.groups.get(gkey)
        if group is not None:
            group[1] += 1
        elif len(self.groups) < MAX_PROBLEMS:
            self.groups[gkey] = [shown if row is not None else problem, 1]
        else:
            self.dropped += 1

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        for first, count in self.groups.values():
            if count > 1:
                more = f" (and {count - 1} more row{'s' if count > 2 else ''})"
                first = Problem(first.message + more, first.file, first.line, first.path, first.hint)
            out.append(first)
        if self.dropped:
            out.append(Problem(f"... and {self.dropped} more problems"))
        return out

    def raise_if_any(self) -> None:
        problems = self.problems()
        if problems:
            raise (MatrixError if self.matrix_kind else TemplateError)(problems)


def read_csv_header(path: Path) -> list[str]:
    """The header row of a CSV or workbook (for `init --csv`), with the same checks and messages as the matrix."""
    return read_table(path, limit=0)[0]


# --------------------------------------------------------------------------- items


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# the same text _CANONICAL gives for a str, without the encoder's per-call setup
_json_str = json.encoder.encode_basestring


def _digest(obj: Any) -> bytes:
    """sha256 of canonical JSON (sorted keys, compact, UTF-8): the basis of every identity."""
    return hashlib.sha256(_CANONICAL.encode(obj).encode("utf-8")).digest()


def item_identity(row: Mapping[str, str], axes: Mapping[str, str], key: str | None, occurrence: int) -> str:
    """Stable id of a matrix item: the key value (+ axes), else the row values + axes + occurrence among
    identical rows, so reordering or inserting rows changes no existing item id."""
    return _item_identity(row, _CANONICAL.encode(axes), key, occurrence)


def _item_identity(row: Mapping[str, str], axes_json: str, key: str | None, occurrence: int) -> str:
    if key is not None:
        text = f"item/key\x1f{_json_str(key)}\x1f{axes_json}"
    else:
        text = f"item/row\x1f{_CANONICAL.encode(row)}\x1f{axes_json}\x1f{occurrence}"
    return hashlib.sha256(text.encode()).hexdigest()[:IDENTITY_HEX]


def row_label(row: SourceRow) -> str:
    """How problems name a row: `row 3`, and for a sheet also its place, `row 3 (book.xlsx:Sheet1!4:4)`."""
    if row.origin.kind == "sheet":
        return f"row {row.number} ({row.origin.file}:{row.origin.sheet}!{row.line}:{row.line})"
    return f"row {row.number}"


def _ref(column: str) -> str:
    """How a template names a column: `row.Title`, or `row['Image Src']` when it is not an identifier."""
    return f"row.{column}" if column.isidentifier() else f"row[{column!r}]"


def _duplicate(row: SourceRow, key_col: str, key: str, first: int) -> Problem:
    """A duplicate key; continuation rows (other cells mostly empty, as in Shopify's variant rows) get a fix."""
    others = [c for c in row.values if c != key_col]
    empty = [c for c in others if not row.values[c].strip()]
    hint = "matrix.key values must be unique among the rows that where keeps"
    if others and len(empty) * 2 > len(others):
        filled = len(others) - len(empty)
        hint += (
            f"; row {row.number} looks like a continuation of row {first} ({filled} of {len(others)} other cells"
            f" filled): keep one row per {key_col} with where: \"{_ref(empty[0])} != ''\", or carry the"
            f" product's values down with fill_down: [{', '.join(empty[:3])}] and key each variant by its own column"
        )
    message = f"duplicate key {key!r} in rows {first} and {row.number}"
    return row.problem(message, column=key_col, path=f"column {key_col!r}", hint=hint)


class _Pass:
    """One pass over the rows: the stream, `where`, the key check and occurrence numbers (both in one
    DigestIndex, so memory does not grow with the rows), the selection and the tally."""

    def __init__(self, pipeline: Pipeline, sink: _Collector, tally: Tally, selection: Selection | None) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.tally = tally
        self.picker = Picker(selection)
        self.pfile = display_path(pipeline.path)
        self.seen = DigestIndex()
        spec = pipeline.matrix
        self.where = templates.compile_expression(spec.where) if spec.where else None
        names = [name for name, _ in spec.axes]
        self.combos = [dict(zip(names, v, strict=True)) for v in itertools.product(*(v for _, v in spec.axes))]
        self.axes_ns = [templates.axes_context(c) for c in self.combos]
        self.axes_json = [_CANONICAL.encode(c) for c in self.combos]

    def columns_ok(self, stream: RowStream) -> bool:
        """`matrix.key` and `report.columns` name columns the source has."""
        ok = True
        wanted: list[tuple[str, str | None, str | None]] = [("matrix.key", "key", self.pipeline.matrix.key)]
        wanted += [("report.columns", None, c) for c in self.pipeline.report.columns or ()]
        for path, line_key, column in wanted:
            if column is None or column in stream.columns:
                continue
            line = self.pipeline.matrix.lines.get(line_key) if line_key else self.pipeline.report.line
            hint = templates.did_you_mean(column, stream.columns) or f"columns: {', '.join(stream.columns[:30])}"
            self.sink.add(
                Problem(
                    f"no column {column!r} for {path} in {source_name(self.pipeline.matrix)}",
                    self.pfile,
                    line,
                    path,
                    hint,
                )
            )
            ok = ok and path != "matrix.key"
        return ok

    def keep(self, row: SourceRow, row_ns: Namespace) -> bool:
        if self.where is None:
            return True
        try:
            keep = templates.evaluate(self.where, {"row": row_ns, "row_number": row.number})
        except TemplateError as e:
            where = Problem(e.problems[0].message, self.pfile, self.pipeline.matrix.lines.get("where"), "matrix.where")
            self.sink.add(where, row=row_label(row), template=True)
            return False
        return not isinstance(keep, jinja2.Undefined) and bool(keep)

    def key_of(self, row: SourceRow) -> tuple[bool, str | None]:
        """(usable, key): the row's key when `matrix.key` is set; not usable when empty or a duplicate."""
        key_col = self.pipeline.matrix.key
        if key_col is None:
            return True, None
        key = row.values.get(key_col, "")
        if not key.strip():
            hint = "every row that where keeps needs a key; drop rows without one with where"
            self.sink.add(row.problem(f"empty key column {key_col!r}", column=key_col, hint=hint), row=row.number)
            return False, None
        count, first = self.seen.see(hashlib.sha256(b"key\x1f" + key.encode()).digest()[:16], row.number)
        if count:
            self.sink.add(_duplicate(row, key_col, key, first))
            return False, None
        return True, key

    def items(self, stream: RowStream) -> Iterator[tuple[MatrixItem, Namespace, Namespace, bool, SourceRow]]:
        key_col = self.pipeline.matrix.key
        tally = self.tally
        pick = None if self.picker.selection.everything else self.picker.pick
        try:
            for row in stream:
                row_ns = templates.row_context(row.values)
                if not self.keep(row, row_ns):
                    continue
                usable, key = self.key_of(row)
                if not usable:
                    continue
                occurrence = 0
                if key_col is None:
                    occurrence = self.seen.see(_digest(row.values)[:16])[0]
                for combo, ans, ajson in zip(self.combos, self.axes_ns, self.axes_json, strict=True):
                    item = MatrixItem(
                        row_number=row.number,
                        row=row.values,
                        axes=combo,
                        key=key,
                        item_id=_item_identity(row.values, ajson, key, occurrence),
                    )
                    picked = pick is None or pick(row.number)
                    tally.items += 1
                    tally.selected_items += picked
                    yield item, row_ns, ans, picked, row
        finally:
            tally.rows = stream.rows_read


class _Found(NamedTuple):
    item: MatrixItem
    row_ns: Namespace
    axes_ns: Namespace
    picked: bool  # the selection wants it
    row: SourceRow
    seen: DigestIndex  # the pass's index: the planner counts run occurrences in it too

    @property
    def label(self) -> str:
        """How problems name its row."""
        return row_label(self.row)


def _items(
    pipeline: Pipeline, sink: _Collector, tally: Tally | None = None, selection: Selection | None = None
) -> Iterator[_Found]:
    """Items with their template namespaces (built once per row/axes, shared by every step)."""
    one = _Pass(pipeline, sink, tally if tally is not None else Tally(), selection)
    stream = open_rows(pipeline.matrix, one.pfile, sink.add)
    if stream is None:
        return
    try:
        if not one.columns_ok(stream):
            return
        for item, row_ns, axes_ns, picked, row in one.items(stream):
            yield _Found(item, row_ns, axes_ns, picked, row, one.seen)
    finally:
        stream.close()
        one.seen.close()


def iter_items(
    pipeline: Pipeline, *, selection: Selection | None = None, tally: Tally | None = None
) -> Iterator[MatrixItem]:
    """Stream matrix items (row x axes combination) with `where` applied (and only those `selection` picks);
    raises MatrixError at the first unusable row (run `validate_pipeline` first to see every problem)."""
    for found in _items(pipeline, _Collector(collect=False), tally, selection):
        if found.picked:
            yield found.item


# --------------------------------------------------------------------------- runs and identity


def run_identity(
    step: Step,
    inputs: Mapping[str, Any],
    axes: Mapping[str, str],
    *,
    key: str | None,
    occurrence: int,
) -> str:
    """DESIGN.md §2: hash of step id, app id, rendered inputs, output selection, axes, and the key value
    (or, without a key, the occurrence number among items rendering identical inputs for this step)."""
    base = _run_base(_step_prefix(step), inputs, _CANONICAL.encode(axes))
    return _finish_identity(base, _tail(key, occurrence))


# The hashed text is canonical JSON parts joined by \x1f, which JSON always escapes inside strings, so the
# parts cannot run into each other. Built from parts so the per-step part is encoded once, not per row.
def _step_prefix(step: Step) -> str:
    outputs = sorted(step.outputs) if step.outputs is not None else None
    return _CANONICAL.encode(["run/1", step.id, step.app, outputs])


def _run_base(prefix: str, inputs: Mapping[str, Any], axes_json: str) -> str:
    return f"{prefix}\x1f{_CANONICAL.encode(inputs)}\x1f{axes_json}"


def _tail(key: str | None, occurrence: int) -> str:
    return f'["key",{_json_str(key)}]' if key is not None else f'["occurrence",{occurrence}]'


def _finish_identity(base: str, tail: str) -> str:
    return hashlib.sha256(f"{base}\x1f{tail}".encode()).hexdigest()[:IDENTITY_HEX]


_EMPTY_STEPS = Namespace("upstream step")
Report = Callable[[str, str, str], None]  # (step id, input name, message)


class _Planner:
    """Renders one item's runs; compiled templates and ancestor lists are prepared once per pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.key = pipeline.matrix.key
        self.ancestors: dict[str, tuple[str, ...]] = {}
        order = [s.id for s in pipeline.steps]
        for step in pipeline.steps:
            found: set[str] = set()
            todo = list(step.needs)
            while todo:
                n = todo.pop()
                if n not in found:
                    found.add(n)
                    todo.extend(pipeline.step(n).needs)
            self.ancestors[step.id] = tuple(s for s in order if s in found)
        self.compiled: dict[str, list[tuple[str, Any, templates.CompiledTemplate | None]]] = {}
        for step in pipeline.steps:
            self.compiled[step.id] = [
                (name, value, templates.compile_template(value) if templates.is_template(value) else None)
                for name, value in step.inputs.items()
            ]
        self.labels = {s.id: s.outputs for s in pipeline.steps}
        self.prefixes = {s.id: _step_prefix(s) for s in pipeline.steps}
        self._axes_json: tuple[Mapping[str, str], str] | None = None
        # `.outputs` placeholders cost a list per run; build them only for steps whose templates might read them
        self.uses_outputs = {
            s.id: any(c is not None and "outputs" in c.source for _, _, c in self.compiled[s.id])
            for s in pipeline.steps
        }
        self.uses_steps = {
            s.id: any(c is not None and templates.uses_name(c.source, "steps") for _, _, c in self.compiled[s.id])
            for s in pipeline.steps
        }
        # everything plan() needs per step, looked up once instead of per row
        self.per_step = [
            (
                s,
                self.ancestors[s.id],
                bool(self.ancestors[s.id]) and self.uses_steps[s.id],
                self.uses_outputs[s.id],
                self.compiled[s.id],
                self.prefixes[s.id],
            )
            for s in pipeline.steps
        ]

    def plan(self, found: _Found, report: Report | None) -> tuple[PlannedRun, ...]:
        """The item's runs in step order; a template that fails raises (report None) or is reported and planned
        with a placeholder input, so validation goes on."""
        item, row_ns, axes_ns = found.item, found.row_ns, found.axes_ns
        identities: dict[str, str] = {}
        runs: list[PlannedRun] = []
        cached = self._axes_json
        if cached is None or cached[0] is not item.axes:  # items of one combination share its dict
            cached = self._axes_json = (item.axes, _CANONICAL.encode(item.axes))
        axes_json = cached[1]
        key_tail = _tail(item.key, 0) if self.key is not None else None
        for step, ancestors, needs_steps, with_outputs, compiled_inputs, prefix in self.per_step:
            if needs_steps:
                steps_ns = Namespace(
                    "upstream step",
                    {a: templates.placeholder_step(identities[a], self.labels[a], with_outputs) for a in ancestors},
                )
            else:
                steps_ns = _EMPTY_STEPS
            context = {
                "row": row_ns,
                "row_number": item.row_number,
                "attempt": 1,
                "axes": axes_ns,
                "steps": steps_ns,
            }
            inputs: dict[str, Any] = {}
            for name, value, compiled in compiled_inputs:
                if compiled is None:
                    inputs[name] = value
                    continue
                try:
                    inputs[name] = templates.render(compiled, context)
                except TemplateError as e:
                    if report is None:
                        raise _located(self.pipeline, step, name, found.label, e) from None
                    report(step.id, name, e.problems[0].message)
                    inputs[name] = f"<invalid:{name}>"
            base = _run_base(prefix, inputs, axes_json)
            if key_tail is None:
                occurrence = found.seen.see(hashlib.sha256(base.encode()).digest()[:16])[0]
                identity = _finish_identity(base, _tail(None, occurrence))
            else:
                identity = _finish_identity(base, key_tail)
            identities[step.id] = identity
            runs.append(
                PlannedRun(
                    identity=identity,
                    step_id=step.id,
                    app_id=step.app,
                    item=item,
                    inputs=inputs,
                    output_labels=step.outputs,
                    needs={a: identities[a] for a in ancestors} if ancestors else {},
                )
            )
        return tuple(runs)


def _located(pipeline: Pipeline, step: Step, name: str, label: str, e: TemplateError) -> TemplateError:
    return TemplateError(_input_problem(pipeline, step, name, e.problems[0].message, label))


def _input_problem(pipeline: Pipeline, step: Step, name: str, message: str, label: str | None) -> Problem:
    """A template problem located at the input's own line in the pipeline file."""
    return Problem(
        f"{label}: {message}" if label is not None else message,
        file=display_path(pipeline.path),
        line=step.input_lines.get(name, step.line),
        path=f"steps.{step.id}.inputs[{name!r}]",
    )


def parse_shard(text: str) -> tuple[int, int]:
    """`"2/4"` -> (2, 4); ConfigError unless 1 <= I <= N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(Problem(f"invalid shard {text!r}", path="--shard", hint="use I/N, e.g. 1/4")) from None
    if not 1 <= i <= n:
        raise ConfigError(Problem(f"invalid shard {text!r}: need 1 <= I <= N", path="--shard"))
    return i, n


def shard_of(item_id: str, n: int) -> int:
    """The 1-based shard of a matrix item among n shards (stable: depends on the item id only)."""
    if n < 1:
        raise ValueError("shard count must be at least 1")
    return int(item_id[:15], 16) % n + 1


def expand_runs(
    pipeline: Pipeline,
    *,
    shard: tuple[int, int] | None = None,
    selection: Selection | None = None,
    tally: Tally | None = None,
) -> Iterator[ItemPlan]:
    """Stream the matrix items with their planned runs (steps in topological order): all of them, or those of
    shard i of n (`shard=(i, n)`) and of the `selection`. Identities are always those of the full batch:
    every item is read, and without a key every item is rendered too (occurrence numbers count them all).
    `tally` counts items and runs, selected or not. Raises MatrixError/TemplateError at the first problem."""
    if shard is not None and not 1 <= shard[0] <= shard[1]:
        raise ConfigError(Problem(f"invalid shard {shard[0]}/{shard[1]}", path="--shard"))
    planner = _Planner(pipeline)
    tally = tally if tally is not None else Tally()
    keyed = pipeline.matrix.key is not None
    steps = len(pipeline.steps)
    for found in _items(pipeline, _Collector(collect=False), tally, selection):
        wanted = found.picked and (shard is None or shard_of(found.item.item_id, shard[1]) == shard[0])
        tally.runs += steps
        if not wanted and keyed:
            continue  # a keyed identity depends on its own row only: nothing to render
        runs = planner.plan(found, None)
        if wanted:
            tally.selected_runs += len(runs)
            yield ItemPlan(item=found.item, runs=runs)


def _context(
    pipeline: Pipeline, run: PlannedRun, upstream: Mapping[str, Sequence[RunOutput]], attempt: int
) -> dict[str, Any]:
    return {
        "row": templates.row_context(run.item.row),
        "row_number": run.item.row_number,
        "attempt": attempt,
        "axes": templates.axes_context(run.item.axes),
        "steps": templates.steps_context(upstream),
    }


def render_inputs(
    pipeline: Pipeline, run: PlannedRun, upstream: Mapping[str, Sequence[RunOutput]], *, attempt: int = 1
) -> dict[str, Any]:
    """The inputs to send for `run`, rendered again with the real outputs of its upstream runs
    (`upstream`: step id -> that step's outputs for this item) and `attempt` (1 for the first start; templates
    that read it render differently on a redo, while the identity keeps attempt 1). Raises TemplateError."""
    step = pipeline.step(run.step_id)
    if not step.needs and attempt == 1:
        return dict(run.inputs)
    context = _context(pipeline, run, upstream, attempt)
    inputs: dict[str, Any] = {}
    for name, value in step.inputs.items():
        if not templates.is_template(value):
            inputs[name] = value
            continue
        try:
            inputs[name] = templates.render(templates.compile_template(value), context)
        except TemplateError as e:
            raise _located(pipeline, step, name, f"row {run.item.row_number}", e) from None
    return inputs


def render_vary(
    pipeline: Pipeline,
    run: PlannedRun,
    upstream: Mapping[str, Sequence[RunOutput]],
    *,
    attempt: int,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`review.vary` (plus `overrides`, e.g. from `--redo-set NAME=TEMPLATE`, which win) rendered for this run's
    `attempt`: name -> value, to replace the inputs they match (by key, name or id: the caller knows the app).
    Empty for attempt 1: a run's first start never varies. Raises TemplateError naming the entry."""
    if attempt < 2:
        return {}
    entries = {**pipeline.review.vary, **(overrides or {})}
    context = _context(pipeline, run, upstream, attempt)
    out: dict[str, str] = {}
    for name, source in entries.items():
        try:
            out[name] = templates.render(templates.compile_template(source), context)
        except TemplateError as e:
            where = "--redo-set" if overrides and name in overrides else f"review.vary[{name!r}]"
            line = None if where == "--redo-set" else pipeline.review.line
            problem = Problem(
                f"row {run.item.row_number}: {e.problems[0].message}", display_path(pipeline.path), line, where
            )
            raise TemplateError(problem) from None
    return out


# --------------------------------------------------------------------------- validate


def _dummy_output(step: Step) -> RunOutput:
    label = step.outputs[0] if step.outputs else "output"
    return RunOutput(
        id="output-0", label=label, type="image", value="https://example.invalid/output.png", status="completed"
    )


def validate_pipeline(
    pipeline: Pipeline,
    *,
    digest: InputDigest | None = None,
    shard: tuple[int, int] | None = None,
    selection: Selection | None = None,
) -> ValidationSummary:
    """Read every row and render every template (inputs, where, download.path) for every run, without a
    request. Raises MatrixError or TemplateError listing every problem (grouped across rows, capped).
    `digest` collects the rendered inputs of the runs picked by `shard` and `selection` for the preflight;
    the summary counts the batch, what was picked, and warns when the batch is empty."""
    sink = _Collector(collect=True)
    try:
        planner = _Planner(pipeline)
        download = templates.compile_template(pipeline.download.path) if pipeline.download else None
    except TemplateError as e:  # load_pipeline checks syntax; a hand-built Pipeline may not have been
        raise TemplateError([Problem(p.message, file=display_path(pipeline.path)) for p in e.problems]) from None
    tally = Tally()
    label = [""]

    def report(step_id: str, name: str, message: str) -> None:
        step = pipeline.step(step_id)
        sink.add(_input_problem(pipeline, step, name, message, None), row=label[0], template=True)

    for found in _items(pipeline, sink, tally, selection):
        label[0] = found.label
        planned = planner.plan(found, report)
        tally.runs += len(planned)
        wanted = found.picked and (shard is None or shard_of(found.item.item_id, shard[1]) == shard[0])
        if found.picked:
            tally.selected_runs += len(planned)
        if digest is not None and wanted:
            for run in planned:
                digest.add(run)
        if download is not None:
            for run in planned:
                _check_download(pipeline, planner, run, found, download, sink)
    sink.raise_if_any()
    return ValidationSummary(
        rows=tally.rows,
        items=tally.items,
        steps=len(pipeline.steps),
        runs=tally.runs,
        selected_items=tally.selected_items,
        selected_runs=tally.selected_runs,
        warnings=_emptiness(pipeline, tally),
    )


def _emptiness(pipeline: Pipeline, tally: Tally) -> tuple[Problem, ...]:
    """Warnings for a batch with nothing in it: a source with a header and no rows, or a `where` keeping none."""
    spec = pipeline.matrix
    pfile = display_path(pipeline.path)
    if tally.rows == 0:
        if spec.rows is not None:
            return (Problem("matrix.rows is empty: nothing to run", pfile, spec.lines.get("rows"), "matrix.rows"),)
        return (Problem(f"{source_name(spec)} has a header but no data rows: nothing to run", pfile, None, "matrix"),)
    if tally.items == 0 and spec.where is not None:
        message = f"where keeps none of the {tally.rows} row{'s' if tally.rows != 1 else ''}: nothing to run"
        return (Problem(message, pfile, spec.lines.get("where"), "matrix.where"),)
    return ()


def _check_download(
    pipeline: Pipeline,
    planner: _Planner,
    run: PlannedRun,
    found: _Found,
    download: templates.CompiledTemplate,
    sink: _Collector,
) -> None:
    step = pipeline.step(run.step_id)
    output = _dummy_output(step)
    steps_ns = Namespace(
        "upstream step",
        {a: templates.placeholder_step(ident, planner.labels[a]) for a, ident in run.needs.items()},
    )
    context = {
        "row": found.row_ns,
        "row_number": run.item.row_number,
        "attempt": 1,
        "axes": found.axes_ns,
        "steps": steps_ns,
        "step": Namespace("step field", id=step.id, app=step.app),
        "output": Namespace(
            "output field", id=output.id, label=output.label, index=0, ext=".png", type=output.type, value=output.value
        ),
    }
    line = pipeline.download.line if pipeline.download is not None else None
    file = display_path(pipeline.path)
    try:
        path = templates.render(download, context)
    except TemplateError as e:
        problem = Problem(f"step {step.id!r}: {e.problems[0].message}", file, line, "download.path")
        sink.add(problem, row=found.label, template=True)
        return
    parts = path.replace("\\", "/").split("/")
    if not path.strip():
        message = "renders an empty path"
    elif path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":") or ".." in parts or "\x00" in path:
        message = f"renders {path[:80]!r}, which leaves the pipeline folder"
    else:
        return
    sink.add(Problem(f"step {step.id!r}: {message}", file, line, "download.path"), row=found.label, template=True)
