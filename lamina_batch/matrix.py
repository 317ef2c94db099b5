"""The matrix: streaming rows (CSV or inline) with `key`, `where` and `axes`, plan-time rendering, run identity
(DESIGN.md §2), shards, run-time `render_inputs`, and `validate_pipeline` that renders everything for every row.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import jinja2

from lamina_batch import templates
from lamina_batch.errors import ConfigError, MatrixError, Problem, TemplateError
from lamina_batch.models import ItemPlan, MatrixItem, Pipeline, PlannedRun, RunOutput, Step
from lamina_batch.templates import Namespace

MAX_PROBLEMS = 50
IDENTITY_HEX = 32

__all__ = [
    "MAX_PROBLEMS",
    "InputDigest",
    "ValidationSummary",
    "expand_runs",
    "item_identity",
    "iter_items",
    "parse_shard",
    "render_inputs",
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
    """What `validate` found: data rows read, matrix items after `where` x axes, steps, runs planned."""

    rows: int
    items: int
    steps: int
    runs: int


def display_path(path: Path) -> str:
    """A path as messages show it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


# --------------------------------------------------------------------------- problem collection


class _Collector:
    """Either raises at the first problem (streaming for `run`/`plan`) or gathers every problem, grouping the
    same message across rows (`row 3: ... (and 99 more rows)`) and capping the list for `validate`."""

    def __init__(self, *, collect: bool) -> None:
        self.collect = collect
        self.groups: dict[tuple[str | None, int | None, str | None, str, str | None], list[Any]] = {}
        self.dropped = 0
        self.matrix_kind = False

    def add(self, problem: Problem, *, row: int | None = None, template: bool = False) -> None:
        if not template:
            self.matrix_kind = True
        shown = Problem(f"row {row}: {problem.message}", problem.file, problem.line, problem.path, problem.hint)
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


# --------------------------------------------------------------------------- rows


class _Undecodable(Exception):
    def __init__(self, line: int, error: UnicodeDecodeError) -> None:
        self.line = line
        self.error = error
        super().__init__(line)


def _decoded_lines(f: BinaryIO) -> Iterator[str]:
    """UTF-8 lines, decoded one at a time so a bad byte is reported with its line (b'\\n' never occurs
    inside a multi-byte UTF-8 sequence, so splitting bytes on it is safe)."""
    for number, raw in enumerate(f, 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Undecodable(number, e) from None


@dataclass(frozen=True)
class _Row:
    number: int
    line: int | None
    path: str | None  # where to point in messages for inline rows
    values: dict[str, str]


def _csv_rows(path: Path, sink: _Collector, counter: list[int]) -> Iterator[_Row]:
    file = display_path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        sink.add(
            Problem(
                "CSV file not found", file=file, path="matrix.csv", hint="the path is relative to the pipeline file"
            )
        )
        return
    except OSError as e:
        sink.add(Problem(f"cannot read the CSV file: {e.strerror}", file=file, path="matrix.csv"))
        return
    with f:
        reader = csv.reader(_decoded_lines(f))
        header: list[str] | None = None
        number = 0
        last_line = 0
        try:
            for record in reader:
                start = last_line + 1
                last_line = reader.line_num
                if not record:
                    continue  # blank line
                if header is None:
                    header = [h.strip() for h in record]
                    if not _header_ok(header, file, start, sink):
                        return
                    continue
                number += 1
                counter[0] = number
                if len(record) != len(header):
                    sink.add(
                        Problem(
                            f"has {len(record)} fields but the header has {len(header)}",
                            file=file,
                            line=start,
                            path=f"row {number}",
                            hint="quote fields that contain commas or line breaks",
                        )
                    )
                    continue
                yield _Row(number, start, None, dict(zip(header, record, strict=True)))
        except _Undecodable as e:
            bad = e.error.object[e.error.start : e.error.start + 1]
            sink.add(
                Problem(
                    f"not valid UTF-8 (byte 0x{bad.hex()} at column {e.error.start + 1})",
                    file=file,
                    line=e.line,
                    hint="save the file as UTF-8 (CSV UTF-8 in Excel)",
                )
            )
            return
        except csv.Error as e:
            sink.add(Problem(f"unreadable CSV: {e}", file=file, line=reader.line_num))
            return
        if header is None:
            sink.add(Problem("CSV file is empty; the first line must be a header row", file=file, path="matrix.csv"))


def read_csv_header(path: Path) -> list[str]:
    """The header row of a CSV (for `init --csv`), with the same checks and messages as the matrix reader."""
    sink = _Collector(collect=False)
    header: list[str] = []
    for row in _csv_rows(path, sink, [0]):
        header = list(row.values)
        break
    else:
        with path.open("rb") as f:
            first = next(csv.reader(_decoded_lines(f)), [])
        header = [h.strip() for h in first]
    return header


def _header_ok(header: list[str], file: str, line: int, sink: _Collector) -> bool:
    ok = True
    seen: dict[str, int] = {}
    for i, name in enumerate(header, 1):
        if not name:
            sink.add(Problem(f"column {i} has a blank header", file=file, line=line, path="header"))
            ok = False
        elif name in seen:
            sink.add(
                Problem(
                    f"duplicate column {name!r} (columns {seen[name]} and {i})", file=file, line=line, path="header"
                )
            )
            ok = False
        else:
            seen[name] = i
    return ok


def _inline_rows(pipeline: Pipeline, counter: list[int]) -> Iterator[_Row]:
    for i, row in enumerate(pipeline.matrix.rows or (), 1):
        counter[0] = i
        yield _Row(i, None, f"matrix.rows[{i - 1}]", dict(row))


def _source_rows(pipeline: Pipeline, sink: _Collector, counter: list[int]) -> Iterator[_Row]:
    if pipeline.matrix.csv is not None:
        return _csv_rows(pipeline.matrix.csv, sink, counter)
    return _inline_rows(pipeline, counter)


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


def _items(
    pipeline: Pipeline, sink: _Collector, counter: list[int]
) -> Iterator[tuple[MatrixItem, Namespace, Namespace]]:
    """Items with their template namespaces (built once per row/axes, shared by every step)."""
    spec = pipeline.matrix
    pfile = display_path(pipeline.path)
    where = templates.compile_expression(spec.where) if spec.where else None
    axis_names = [name for name, _ in spec.axes]
    combos = [dict(zip(axis_names, values, strict=True)) for values in itertools.product(*(v for _, v in spec.axes))]
    axes_ns = [templates.axes_context(c) for c in combos]
    axes_json = [_CANONICAL.encode(c) for c in combos]
    key_col = spec.key
    seen_keys: dict[str, int] = {}
    row_occurrences: dict[bytes, int] = {}
    csv_file = display_path(spec.csv) if spec.csv else pfile
    for row in _source_rows(pipeline, sink, counter):
        file = pfile if row.path else csv_file
        key: str | None = None
        if key_col is not None:
            if key_col not in row.values:
                hint = templates.did_you_mean(key_col, row.values) or f"columns: {', '.join(row.values)}"
                if row.path is None:  # the CSV header lacks it: say so once, not per row
                    sink.add(Problem(f"no column {key_col!r} for matrix.key", file=file, path="header", hint=hint))
                    return
                sink.add(
                    Problem(f"no column {key_col!r} for matrix.key", file=pfile, path=row.path, hint=hint),
                    row=row.number,
                )
                continue
            key = row.values[key_col]
            if not key.strip():
                sink.add(
                    Problem(f"empty key column {key_col!r}", file=file, line=row.line, path=row.path),
                    row=row.number,
                )
                continue
            first = seen_keys.get(key)
            if first is not None:
                sink.add(
                    Problem(
                        f"duplicate key {key!r} in rows {first} and {row.number}",
                        file=file,
                        line=row.line,
                        path=f"column {key_col!r}",
                        hint="matrix.key values must be unique",
                    )
                )
                continue
            seen_keys[key] = row.number
        row_ns = templates.row_context(row.values)
        if where is not None:
            try:
                keep = templates.evaluate(where, {"row": row_ns, "row_number": row.number})
            except TemplateError as e:
                sink.add(
                    Problem(f"matrix.where: {e.problems[0].message}", file=pfile, path=None),
                    row=row.number,
                    template=True,
                )
                continue
            if isinstance(keep, jinja2.Undefined) or not keep:
                continue
        row_digest = b""
        if key is None:
            row_digest = _digest(row.values)[:16]
        occurrence = 0
        if key is None:
            occurrence = row_occurrences.get(row_digest, 0)
            row_occurrences[row_digest] = occurrence + 1
        for combo, ans, ajson in zip(combos, axes_ns, axes_json, strict=True):
            item = MatrixItem(
                row_number=row.number,
                row=row.values,
                axes=combo,
                key=key,
                item_id=_item_identity(row.values, ajson, key, occurrence),
            )
            yield item, row_ns, ans


def iter_items(pipeline: Pipeline) -> Iterator[MatrixItem]:
    """Stream matrix items (row x axes combination) with `where` applied; raises MatrixError at the first
    unusable row (run `validate_pipeline` first to see every problem)."""
    for item, _, _ in _items(pipeline, _Collector(collect=False), [0]):
        yield item


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
        self.occurrences: dict[bytes, int] = {}

    def plan(
        self, item: MatrixItem, row_ns: Namespace, axes_ns: Namespace, report: Report | None
    ) -> tuple[PlannedRun, ...]:
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
            context = {"row": row_ns, "row_number": item.row_number, "axes": axes_ns, "steps": steps_ns}
            inputs: dict[str, Any] = {}
            for name, value, compiled in compiled_inputs:
                if compiled is None:
                    inputs[name] = value
                    continue
                try:
                    inputs[name] = templates.render(compiled, context)
                except TemplateError as e:
                    if report is None:
                        raise _located(self.pipeline, step, name, item.row_number, e) from None
                    report(step.id, name, e.problems[0].message)
                    inputs[name] = f"<invalid:{name}>"
            base = _run_base(prefix, inputs, axes_json)
            if key_tail is None:
                d = hashlib.sha256(base.encode()).digest()[:16]
                occurrence = self.occurrences.get(d, 0)
                self.occurrences[d] = occurrence + 1
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


def _located(pipeline: Pipeline, step: Step, name: str, row_number: int, e: TemplateError) -> TemplateError:
    return TemplateError(_input_problem(pipeline, step, name, e.problems[0].message, row_number))


def _input_problem(pipeline: Pipeline, step: Step, name: str, message: str, row_number: int | None) -> Problem:
    prefix = f"row {row_number}: " if row_number is not None else ""
    return Problem(
        f"{prefix}{message}",
        file=display_path(pipeline.path),
        line=step.line,
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


def expand_runs(pipeline: Pipeline, *, shard: tuple[int, int] | None = None) -> Iterator[ItemPlan]:
    """Stream every matrix item with its planned runs (steps in topological order). With shard=(i, n), only
    items of shard i; identities are the same as unsharded (every item is still rendered, for occurrence
    counting). Raises MatrixError/TemplateError at the first problem."""
    if shard is not None and not 1 <= shard[0] <= shard[1]:
        raise ConfigError(Problem(f"invalid shard {shard[0]}/{shard[1]}", path="--shard"))
    planner = _Planner(pipeline)
    for item, row_ns, axes_ns in _items(pipeline, _Collector(collect=False), [0]):
        runs = planner.plan(item, row_ns, axes_ns, None)
        if shard is None or shard_of(item.item_id, shard[1]) == shard[0]:
            yield ItemPlan(item=item, runs=runs)


def render_inputs(pipeline: Pipeline, run: PlannedRun, upstream: Mapping[str, Sequence[RunOutput]]) -> dict[str, Any]:
    """The inputs to send for `run`, rendered again with the real outputs of its upstream runs
    (`upstream`: step id -> that step's outputs for this item). Raises TemplateError."""
    step = pipeline.step(run.step_id)
    if not step.needs:
        return dict(run.inputs)
    context = {
        "row": templates.row_context(run.item.row),
        "row_number": run.item.row_number,
        "axes": templates.axes_context(run.item.axes),
        "steps": templates.steps_context(upstream),
    }
    inputs: dict[str, Any] = {}
    for name, value in step.inputs.items():
        if not templates.is_template(value):
            inputs[name] = value
            continue
        try:
            inputs[name] = templates.render(templates.compile_template(value), context)
        except TemplateError as e:
            raise _located(pipeline, step, name, run.item.row_number, e) from None
    return inputs


# --------------------------------------------------------------------------- validate


def _dummy_output(step: Step) -> RunOutput:
    label = step.outputs[0] if step.outputs else "output"
    return RunOutput(
        id="output-0", label=label, type="image", value="https://example.invalid/output.png", status="completed"
    )


def validate_pipeline(
    pipeline: Pipeline, *, digest: InputDigest | None = None, shard: tuple[int, int] | None = None
) -> ValidationSummary:
    """Read every row and render every template (inputs, where, download.path) for every run, without a
    request. Raises MatrixError or TemplateError listing every problem (grouped across rows, capped).
    `digest` collects the rendered inputs of the runs (of `shard` only, when given) for the preflight."""
    sink = _Collector(collect=True)
    try:
        planner = _Planner(pipeline)
        download = templates.compile_template(pipeline.download.path) if pipeline.download else None
    except TemplateError as e:  # load_pipeline checks syntax; a hand-built Pipeline may not have been
        raise TemplateError([Problem(p.message, file=display_path(pipeline.path)) for p in e.problems]) from None
    counter = [0]
    items = runs = 0
    current_row = [0]

    def report(step_id: str, name: str, message: str) -> None:
        step = pipeline.step(step_id)
        sink.add(_input_problem(pipeline, step, name, message, None), row=current_row[0], template=True)

    for item, row_ns, axes_ns in _items(pipeline, sink, counter):
        items += 1
        current_row[0] = item.row_number
        planned = planner.plan(item, row_ns, axes_ns, report)
        runs += len(planned)
        if digest is not None and (shard is None or shard_of(item.item_id, shard[1]) == shard[0]):
            for run in planned:
                digest.add(run)
        if download is not None:
            for run in planned:
                _check_download(pipeline, planner, run, row_ns, axes_ns, download, sink)
    sink.raise_if_any()
    return ValidationSummary(rows=counter[0], items=items, steps=len(pipeline.steps), runs=runs)


def _check_download(
    pipeline: Pipeline,
    planner: _Planner,
    run: PlannedRun,
    row_ns: Namespace,
    axes_ns: Namespace,
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
        "row": row_ns,
        "row_number": run.item.row_number,
        "axes": axes_ns,
        "steps": steps_ns,
        "step": Namespace("step field", id=step.id, app=step.app),
        "output": Namespace(
            "output field", id=output.id, label=output.label, index=0, ext=".png", type=output.type, value=output.value
        ),
    }
    where = Problem("", file=display_path(pipeline.path), path="download.path")
    try:
        path = templates.render(download, context)
    except TemplateError as e:
        sink.add(
            Problem(f"step {step.id!r}: {e.problems[0].message}", where.file, None, where.path),
            row=run.item.row_number,
            template=True,
        )
        return
    parts = path.replace("\\", "/").split("/")
    if not path.strip():
        message = "renders an empty path"
    elif path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":") or ".." in parts or "\x00" in path:
        message = f"renders {path[:80]!r}, which leaves the pipeline folder"
    else:
        return
    sink.add(
        Problem(f"step {step.id!r}: {message}", where.file, None, where.path), row=run.item.row_number, template=True
    )
