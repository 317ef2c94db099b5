"""Loading a pipeline file: safe YAML (no duplicate keys, anchors or aliases, size cap) with line numbers,
JSON Schema validation with did-you-mean, the cross-field checks a schema cannot express, durations and rates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from lamina_batch import schemafast, templates
from lamina_batch.errors import Problem, SpecError, TemplateError
from lamina_batch.models import (
    DownloadSpec,
    FailureLimit,
    MatrixSpec,
    Pipeline,
    Rate,
    ReportSpec,
    ReviewSpec,
    RunSettings,
    Step,
    WebhookSettings,
)

if TYPE_CHECKING:
    import jsonschema

MAX_SPEC_BYTES = 1024 * 1024

__all__ = [
    "MAX_SPEC_BYTES",
    "load_pipeline",
    "load_schema",
    "parse_duration",
    "parse_failure_limit",
    "parse_pipeline_text",
    "parse_rate",
]

JsonPath = tuple[str | int, ...]


# --------------------------------------------------------------------------- durations, rates, limits

_DURATION_UNIT = r"(ms|min|s|m|h)"
_DURATION = re.compile(rf"^\s*(\d+(?:\.\d+)?)\s*{_DURATION_UNIT}?\s*$")
_DURATION_COMPOUND = re.compile(rf"^\s*(?:\d+(?:\.\d+)?\s*{_DURATION_UNIT}\s*)+$")
_DURATION_PART = re.compile(rf"(\d+(?:\.\d+)?)\s*{_DURATION_UNIT}")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION_FORMS = "use 90, 90s, 15m or 2h, or a compound like 1h30m"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_RATE_UNITS |= {"h": 3600.0, "hour": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from 90, "90", "90s", "15m", "2h" or a compound such as "1h30m"; ValueError with the accepted
    forms otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} ({_DURATION_FORMS})")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value)
        m = _DURATION.match(text)
        if m:
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        elif _DURATION_COMPOUND.match(text):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"invalid duration {value!r} ({_DURATION_FORMS})")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"invalid duration {value!r}: must be more than 0")
    return seconds


def parse_rate(value: object) -> Rate:
    """A Rate from "N/s", "N/min" or "N/h"; ValueError otherwise."""
    m = _RATE.match(str(value)) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"invalid rate {value!r} (use N/s, N/min or N/h, e.g. 90/min)")
    count = float(m.group(1))
    if count <= 0:
        raise ValueError(f"invalid rate {value!r}: must be more than 0")
    return Rate(int(count) if count.is_integer() else count, _RATE_UNITS[m.group(2)])


def parse_failure_limit(value: object) -> FailureLimit:
    """`max_failures`: "20%" (a share of finished runs) or an integer count ("5" or 5)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid max_failures {value!r} (use a share like 20% or a count like 5)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid max_failures {value!r}: must be 0 or more")
        return FailureLimit(fraction=None, count=value)
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if m:
        pct = float(m.group(1))
        if pct > 100:
            raise ValueError(f"invalid max_failures {value!r}: a share must be 0% to 100%")
        return FailureLimit(fraction=pct / 100.0)
    if re.fullmatch(r"\d+", text):
        return FailureLimit(fraction=None, count=int(text))
    raise ValueError(f"invalid max_failures {value!r} (use a share like 20% or a count like 5)")


_RUN_PARSERS: dict[str, Callable[[object], object]] = {
    "rate_limit": parse_rate,
    "poll_interval": parse_duration,
    "timeout": parse_duration,
    "max_failures": parse_failure_limit,
}


def _parse_message(key: str, value: object) -> str:
    """The parser's own words for a run setting the schema's pattern refused."""
    try:
        _RUN_PARSERS[key](value)
    except ValueError as e:
        return str(e)
    return f"invalid value {value!r}"


# --------------------------------------------------------------------------- YAML with line numbers


class _YamlRefused(yaml.MarkedYAMLError):
    """A construct we refuse on purpose (alias, anchor, duplicate key, unsupported tag)."""

    def __init__(self, problem: str, problem_mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=problem_mark)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases and duplicate keys, keeps mapping keys as written
    (`on:` stays "on", not True), constructs timestamps as strings, and records node lines by JSON path."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # types-PyYAML leaves the parser untyped
        if isinstance(event, yaml.AliasEvent):
            raise _YamlRefused(
                problem=f"YAML aliases are not allowed (*{event.anchor}); write the value out",
                problem_mark=event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _YamlRefused(
                problem=f"YAML anchors are not allowed (&{anchor}); write the value out",
                problem_mark=event.start_mark,
            )
        node: yaml.Node | None = super().compose_node(parent, index)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise _YamlRefused(problem="expected a mapping", problem_mark=node.start_mark)
        result: dict[Any, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _YamlRefused(problem="mapping keys must be plain text", problem_mark=key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _YamlRefused(problem="YAML merge keys (<<) are not allowed", problem_mark=key_node.start_mark)
            key = str(key_node.value)
            if key in result:
                raise _YamlRefused(
                    problem=f"duplicate key {key!r} (first at line {first_line[key]})",
                    problem_mark=key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
            result[key] = self.construct_object(value_node, deep=True)
        return result


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise _YamlRefused(problem=f"unsupported YAML type {node.tag}", problem_mark=node.start_mark)


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    # a date in a CSV-like value means the text the user wrote, not a datetime
    return str(node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)
for _tag in ("binary", "set", "omap", "pairs"):
    _LineLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
_LineLoader.add_constructor(None, _refuse_tag)  # any tag not registered above, e.g. !custom


def _node_lines(node: yaml.Node) -> dict[JsonPath, int]:
    """JSON path -> 1-based line: for mapping members the line of the key, for list items the item's line."""
    lines: dict[JsonPath, int] = {}
    stack: list[tuple[JsonPath, yaml.Node]] = [((), node)]
    while stack:
        path, n = stack.pop()
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                lines[(*path, str(k.value))] = k.start_mark.line + 1
                stack.append(((*path, str(k.value)), v))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                stack.append(((*path, i), v))
    return lines


# `Prompt: {{ row.Title }}` unquoted: YAML reads `{` as the start of a mapping, so the error it gives is about
# mapping keys or block ends, never about the template the user meant.
_UNQUOTED_TEMPLATE = re.compile(r"^(\s*(?:-\s+)?[^\s#'\"{][^:#]*?:\s+)(\{[{%].*?)\s*$")


def _unquoted_template(text: str, line: int | None) -> tuple[str, str] | None:
    """(message, hint) when the error's line holds a mapping value that starts with `{{` or `{%` unquoted."""
    if line is None:
        return None
    lines = text.splitlines()
    if not 0 < line <= len(lines):
        return None
    m = _UNQUOTED_TEMPLATE.match(lines[line - 1])
    if m is None:
        return None
    key, value = m.group(1).strip(), m.group(2)
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "a Jinja template must be quoted in YAML: quote the template", f"write {key} {quoted}"


def _load_yaml(text: str, file: str) -> tuple[Any, dict[JsonPath, int]]:
    loader: _LineLoader | None = None
    try:
        loader = _LineLoader(text)  # the reader already refuses control characters here
        node = loader.get_single_node()
        if node is None:
            raise SpecError(Problem("the file is empty; a pipeline needs version, matrix and steps", file=file))
        data = loader.construct_document(node)
        return data, _node_lines(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        unquoted = _unquoted_template(text, line)
        if unquoted is not None:
            raise SpecError(Problem(unquoted[0], file=file, line=line, hint=unquoted[1])) from None
        message = " ".join(str(x) for x in (e.context, e.problem) if x) or "invalid YAML"
        if not isinstance(e, _YamlRefused):
            message = f"YAML syntax error: {message}"
        raise SpecError(Problem(message, file=file, line=line)) from None
    except yaml.YAMLError as e:  # ReaderError (control characters) has no mark
        raise SpecError(Problem(f"YAML error: {e}", file=file)) from None
    except RecursionError:
        raise SpecError(Problem("YAML nested too deeply", file=file)) from None
    finally:
        if loader is not None:
            loader.dispose()


# --------------------------------------------------------------------------- schema


@cache
def load_schema() -> dict[str, Any]:
    """The pipeline JSON Schema shipped in the package."""
    text = (resources.files("lamina_batch.schemas") / "pipeline.schema.json").read_text(encoding="utf-8")
    return cast("dict[str, Any]", json.loads(text))


@cache
def _fast_schema() -> dict[str, Any] | None:
    """The schema when schemafast implements all of it (it does for the shipped one), else None."""
    schema = load_schema()
    return schema if schemafast.supports(schema) else None


@cache
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema  # ~70 ms to import: only for a document the fast check did not accept

    return jsonschema.Draft202012Validator(load_schema())


def format_path(path: Sequence[str | int]) -> str:
    """`("steps", 1, "inputs")` -> `steps[1].inputs`; keys that are not identifiers are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _line_for(lines: Mapping[JsonPath, int], path: Sequence[str | int]) -> int | None:
    p = tuple(path)
    while p not in lines and p:
        p = p[:-1]
    return lines.get(p)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_JSON_TYPES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _schema_problems(data: Any, lines: Mapping[JsonPath, int], file: str) -> list[Problem]:
    fast = _fast_schema()
    if fast is not None and schemafast.is_valid(fast, data):
        return []
    problems: list[Problem] = []
    errors = sorted(_validator().iter_errors(data), key=lambda e: _line_for(lines, e.absolute_path) or 0)
    for err in errors:
        path = tuple(err.absolute_path)
        where = format_path(path) or None
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = list(err.schema.get("properties", {}))
            for key in [k for k in err.instance if k not in allowed]:
                problems.append(
                    Problem(
                        f"unknown key {key!r}",
                        file=file,
                        line=_line_for(lines, (*path, key)),
                        path=where,
                        hint=templates.did_you_mean(key, allowed) or f"allowed: {', '.join(allowed)}",
                    )
                )
            continue
        message, hint = _schema_message(err, path)
        problems.append(Problem(message, file=file, line=_line_for(lines, path), path=where, hint=hint))
    return problems


def _schema_message(err: jsonschema.ValidationError, path: JsonPath) -> tuple[str, str | None]:
    """(message, hint) in the user's words for one schema error."""
    kind = err.validator
    value: Any = err.validator_value  # typed Any | Unset; set for every validator that reaches here
    if kind == "required":
        missing = [k for k in value if isinstance(err.instance, dict) and k not in err.instance]
        return ", ".join(f"missing required key {k!r}" for k in missing) or err.message, None
    if kind == "type":
        expected = value if isinstance(value, list) else [value]
        names = " or ".join(_JSON_TYPES.get(str(t), str(t)) for t in expected)
        return f"expected {names}, got {_type_name(err.instance)} {_short(err.instance)}", None
    if kind == "const" and path == ("version",):
        return f"unsupported spec version {_short(err.instance)}; this lamina-batch reads version 1", None
    if kind == "enum":
        options = ", ".join(repr(v) for v in value)
        hint = None
        if isinstance(err.instance, str):
            hint = templates.did_you_mean(err.instance, [str(v) for v in value])
        return f"{_short(err.instance)} is not one of {options}", hint
    if kind == "oneOf" and path == ("matrix",):
        given = [k for k in _SOURCES if isinstance(err.instance, dict) and k in err.instance]
        if len(given) > 1:
            return f"set only one of {' or '.join(repr(k) for k in given)}, not both", None
        return "one of 'csv' or 'rows' is required (or 'xlsx' for a workbook)", None
    if kind == "pattern" and len(path) == 3 and path[0] == "steps" and path[2] == "id":
        return f"invalid step id {_short(err.instance)}: use lowercase letters, digits, '_' or '-'", None
    if kind == "pattern" and path[:1] == ("run",) and path[-1] in _RUN_PARSERS:
        return _parse_message(str(path[-1]), err.instance), None
    if kind in ("pattern", "maxLength") and path == ("matrix", "delimiter"):
        return f"invalid delimiter {_short(err.instance)}: one character, such as ',' ';' '|' or a tab", None
    if kind == "pattern" and path[:1] == ("run",):
        hint = "use http(s)://HOST/PATH" if path[-1] == "url" else "use HOST:PORT, e.g. 127.0.0.1:8787"
        return f"invalid value {_short(err.instance)}", hint
    if kind == "propertyNames":
        return f"invalid axis name {_short(err.instance)}: use letters, digits and '_' (not first)", None
    if (kind == "minItems" and value == 1) or kind == "minLength":
        return "must not be empty", None
    if kind == "uniqueItems":
        return "has duplicate entries", None
    if kind == "minimum":
        return f"must be at least {value}, got {_short(err.instance)}", None
    return (err.message if len(err.message) <= 200 else err.message[:197] + "..."), None


# --------------------------------------------------------------------------- cross-field checks


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _topological(steps: list[dict[str, Any]]) -> tuple[list[int], list[str] | None]:
    """Stable Kahn order of step indexes, and one cycle (as ids) if there is one."""
    ids = [s.get("id") for s in steps]
    index = {sid: i for i, sid in enumerate(ids) if isinstance(sid, str)}
    deps = [[index[n] for n in _as_list(s.get("needs")) if isinstance(n, str) and n in index] for s in steps]
    done: list[int] = []
    placed: set[int] = set()
    progress = True
    while progress and len(done) < len(steps):
        progress = False
        for i in range(len(steps)):
            if i not in placed and all(d in placed for d in deps[i]):
                placed.add(i)
                done.append(i)
                progress = True
                break
    if len(done) == len(steps):
        return done, None
    # walk needs from a remaining step until an index repeats: that loop is a cycle
    start = next(i for i in range(len(steps)) if i not in placed)
    seen: list[int] = []
    cur = start
    while cur not in seen:
        seen.append(cur)
        cur = next(d for d in deps[cur] if d not in placed)
    cycle = [*seen[seen.index(cur) :], cur]
    return done, [str(ids[i]) for i in cycle]


def _ancestors(steps: list[dict[str, Any]]) -> dict[str, set[str]]:
    needs = {
        s["id"]: {n for n in _as_list(s.get("needs")) if isinstance(n, str)}
        for s in steps
        if isinstance(s.get("id"), str)
    }
    result: dict[str, set[str]] = {}
    for sid in needs:
        seen: set[str] = set()
        todo = list(needs[sid])
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(needs.get(n, ()))
        result[sid] = seen
    return result


def _template_problems(
    source: str,
    *,
    file: str,
    line: int | None,
    where: str,
    step_ids: Sequence[str],
    allowed_steps: set[str] | None,
    axes: Sequence[str] | None,
    expression: bool = False,
) -> list[Problem]:
    """Syntax, plus `steps.X` naming a step in `allowed_steps` and `axes.N` naming an axis."""
    text = "{{ " + source + " }}" if expression else source
    try:
        templates.compile_expression(source) if expression else templates.compile_template(source)
        used_steps = templates.referenced(text, "steps")
        used_axes = templates.referenced(text, "axes")
    except TemplateError as e:
        return [Problem(e.problems[0].message, file=file, line=line, path=where)]
    problems: list[Problem] = []
    for sid in sorted(used_steps):
        if allowed_steps is None:
            continue
        if sid not in step_ids:
            problems.append(
                Problem(
                    f"steps.{sid}: there is no step {sid!r}",
                    file=file,
                    line=line,
                    path=where,
                    hint=templates.did_you_mean(sid, step_ids),
                )
            )
        elif sid not in allowed_steps:
            problems.append(
                Problem(
                    f"uses steps.{sid} but {sid!r} is not in this step's needs",
                    file=file,
                    line=line,
                    path=where,
                    hint=f"add needs: [{sid}]",
                )
            )
    if axes is not None:
        for name in sorted(used_axes):
            if name not in axes:
                hint = templates.did_you_mean(name, axes) or (
                    f"axes: {', '.join(axes)}" if axes else "matrix.axes defines none"
                )
                problems.append(Problem(f"no axis {name!r}", file=file, line=line, path=where, hint=hint))
    return problems


def _cross_problems(data: dict[str, Any], lines: Mapping[JsonPath, int], file: str) -> list[Problem]:
    steps = [s if isinstance(s, dict) else {} for s in _as_list(data.get("steps"))]
    ids = [s["id"] for s in steps if isinstance(s.get("id"), str)]
    raw_axes = _as_dict(data.get("matrix")).get("axes")
    axis_names = list(raw_axes) if isinstance(raw_axes, dict) else []
    problems = _step_problems(steps, ids, lines, file)
    ancestors = _ancestors(steps)
    for i, s in enumerate(steps):
        sid = s.get("id")
        allowed = ancestors.get(sid, set()) if isinstance(sid, str) else set()
        for name, value in _as_dict(s.get("inputs")).items():
            if isinstance(value, str) and templates.is_template(value):
                at: JsonPath = ("steps", i, "inputs", name)
                problems += _template_problems(
                    value,
                    file=file,
                    line=_line_for(lines, at),
                    where=format_path(at),
                    step_ids=ids,
                    allowed_steps=allowed,
                    axes=axis_names,
                )
    problems += _matrix_problems(_as_dict(data.get("matrix")), ids, lines, file)
    path = _as_dict(data.get("download")).get("path")
    if isinstance(path, str):
        problems += _template_problems(
            path,
            file=file,
            line=_line_for(lines, ("download", "path")),
            where="download.path",
            step_ids=ids,
            allowed_steps=set(ids),
            axes=axis_names,
        )
    for name, value in _as_dict(_as_dict(data.get("review")).get("vary")).items():
        if isinstance(value, str) and templates.is_template(value):
            at = ("review", "vary", str(name))
            problems += _template_problems(
                value,
                file=file,
                line=_line_for(lines, at),
                where=format_path(at),
                step_ids=ids,
                allowed_steps=set(ids),
                axes=axis_names,
            )
    run = _as_dict(data.get("run"))
    for key in _RUN_PARSERS:
        if key in run and isinstance(run[key], str | int | float):
            try:
                _RUN_PARSERS[key](run[key])
            except ValueError as e:
                problems.append(Problem(str(e), file=file, line=_line_for(lines, ("run", key)), path=f"run.{key}"))
    return problems + _placeholder_problems(data, lines, file)


def _step_problems(
    steps: list[dict[str, Any]], ids: list[str], lines: Mapping[JsonPath, int], file: str
) -> list[Problem]:
    """Duplicate step ids, unknown needs and cycles."""
    problems: list[Problem] = []
    first_at: dict[str, int] = {}
    for i, s in enumerate(steps):
        sid = s.get("id")
        if not isinstance(sid, str):
            continue
        if sid in first_at:
            problems.append(
                Problem(
                    f"duplicate step id {sid!r} (first at line {_line_for(lines, ('steps', first_at[sid]))})",
                    file=file,
                    line=_line_for(lines, ("steps", i, "id")),
                    path=f"steps[{i}].id",
                )
            )
        else:
            first_at[sid] = i
        for j, need in enumerate(_as_list(s.get("needs"))):
            if isinstance(need, str) and need not in ids:
                problems.append(
                    Problem(
                        f"needs unknown step {need!r}",
                        file=file,
                        line=_line_for(lines, ("steps", i, "needs", j)),
                        path=f"steps[{i}].needs",
                        hint=templates.did_you_mean(need, ids) or f"steps: {', '.join(ids)}",
                    )
                )
    _, cycle = _topological(steps)
    if cycle:
        at = ids.index(cycle[0]) if cycle[0] in ids else 0
        problems.append(
            Problem(
                f"needs form a cycle: {' -> '.join(cycle)}",
                file=file,
                line=_line_for(lines, ("steps", at, "needs")),
                path=f"steps[{at}].needs",
            )
        )
    return problems


_SOURCES = ("csv", "xlsx", "rows")
WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods")


def _matrix_problems(matrix: dict[str, Any], ids: list[str], lines: Mapping[JsonPath, int], file: str) -> list[Problem]:
    """`where`, the source's URL or suffix, and keys that belong to another kind of source."""
    problems: list[Problem] = []

    def add(key: str, message: str, hint: str | None = None) -> None:
        problems.append(
            Problem(message, file=file, line=_line_for(lines, ("matrix", key)), path=f"matrix.{key}", hint=hint)
        )

    where = matrix.get("where")
    if isinstance(where, str) and where.strip():
        found = _template_problems(
            where,
            file=file,
            line=_line_for(lines, ("matrix", "where")),
            where="matrix.where",
            step_ids=ids,
            allowed_steps=None,
            axes=None,
            expression=True,
        )
        if not found and templates.uses_name("{{ " + where + " }}", "steps"):
            add("where", "where cannot use steps (it filters rows before anything runs)")
        problems += found
    for key in ("csv", "xlsx"):
        value = matrix.get(key)
        if not isinstance(value, str) or not value:
            continue
        if "://" in value and not value.startswith("https://") and not _loopback_http(value):
            add(key, f"only https:// URLs are fetched, not {value.split('://', 1)[0]}://")
        elif key == "xlsx" and "://" not in value and Path(value).suffix.lower() not in WORKBOOK_SUFFIXES:
            hint = "use matrix.csv for a CSV file" if Path(value).suffix.lower() in (".csv", ".tsv", ".txt") else None
            add(key, f"a workbook must be .xlsx, .xlsm, .xls or .ods, not {value!r}", hint)
    if "xlsx" not in matrix:
        for key in ("sheet", "header_row"):
            if key in matrix:
                add(key, f"matrix.{key} applies to a workbook (matrix.xlsx) only")
    if "csv" not in matrix and "delimiter" in matrix:
        add("delimiter", "matrix.delimiter applies to matrix.csv only")
    return problems


_PLACEHOLDER = re.compile(r"^\s*TODO\b")


def _placeholder_problems(data: Any, lines: Mapping[JsonPath, int], file: str) -> list[Problem]:
    """`TODO: ...` values are what `init` writes where it could not choose: a pipeline keeping one is unfinished."""
    problems: list[Problem] = []
    stack: list[tuple[JsonPath, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack += [((*path, str(k)), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [((*path, i), v) for i, v in enumerate(value)]
        elif isinstance(value, str) and _PLACEHOLDER.match(value):
            problems.append(
                Problem(
                    f"placeholder {_short(value)} left to fill in",
                    file=file,
                    line=_line_for(lines, path),
                    path=format_path(path) or None,
                    hint="replace it with a value or a template",
                )
            )
    return problems


# --------------------------------------------------------------------------- building the Pipeline


def _stringify(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _source(base: Path, value: str | None) -> tuple[Path | None, str | None]:
    """(local path, https URL) of a csv/xlsx source; a URL has no local path until it is fetched."""
    if value is None:
        return None, None
    if value.startswith(("https://", "http://")):  # plain http passed the check only for loopback
        return None, value
    return base / value, None


def _build_matrix(m: dict[str, Any], base: Path, lines: Mapping[JsonPath, int]) -> MatrixSpec:
    rows = None
    if "rows" in m:
        rows = tuple({str(k): _stringify(v) for k, v in r.items()} for r in m["rows"])
    csv, csv_url = _source(base, m.get("csv"))
    xlsx, xlsx_url = _source(base, m.get("xlsx"))
    return MatrixSpec(
        csv=csv,
        rows=rows,
        key=m.get("key"),
        where=m.get("where"),
        axes=tuple((name, tuple(_stringify(v) for v in values)) for name, values in m.get("axes", {}).items()),
        xlsx=xlsx,
        sheet=m.get("sheet"),
        header_row=m.get("header_row"),
        delimiter=m.get("delimiter"),
        fill_down=tuple(m.get("fill_down", ())),
        url=csv_url or xlsx_url,
        lines={str(k): line for k in m if (line := _line_for(lines, ("matrix", k))) is not None},
        row_lines=tuple(_line_for(lines, ("matrix", "rows", i)) or 0 for i in range(len(rows or ()))),
    )


def _build_steps(data: dict[str, Any], lines: Mapping[JsonPath, int]) -> tuple[Step, ...]:
    raw_steps: list[dict[str, Any]] = data["steps"]
    order, _ = _topological(raw_steps)
    return tuple(
        Step(
            id=raw_steps[i]["id"],
            app=raw_steps[i]["app"],
            inputs=dict(raw_steps[i].get("inputs", {})),
            outputs=tuple(raw_steps[i]["outputs"]) if "outputs" in raw_steps[i] else None,
            needs=tuple(raw_steps[i].get("needs", ())),
            concurrency=raw_steps[i].get("concurrency"),
            line=_line_for(lines, ("steps", i)),
            input_lines={
                name: line
                for name in raw_steps[i].get("inputs", {})
                if (line := _line_for(lines, ("steps", i, "inputs", name))) is not None
            },
        )
        for i in order
    )


def _build_run(r: dict[str, Any]) -> RunSettings:
    defaults = RunSettings()
    webhook = None
    if "webhook" in r:
        webhook = WebhookSettings(url=r["webhook"]["url"], listen=r["webhook"].get("listen", "127.0.0.1:8787"))
    return RunSettings(
        concurrency=r.get("concurrency", defaults.concurrency),
        rate_limit=parse_rate(r["rate_limit"]) if "rate_limit" in r else defaults.rate_limit,
        rate_limit_explicit="rate_limit" in r,
        poll_interval=parse_duration(r["poll_interval"]) if "poll_interval" in r else defaults.poll_interval,
        timeout=parse_duration(r["timeout"]) if "timeout" in r else defaults.timeout,
        retries=r.get("retries", defaults.retries),
        max_failures=parse_failure_limit(r["max_failures"]) if "max_failures" in r else defaults.max_failures,
        max_starts=r.get("max_starts"),
        webhook=webhook,
        max_credits=float(r["max_credits"]) if "max_credits" in r else None,
    )


def _build(data: dict[str, Any], path: Path, lines: Mapping[JsonPath, int]) -> Pipeline:
    base = path.resolve().parent
    stem = path.stem
    download = None
    if "download" in data:
        download = DownloadSpec(
            path=data["download"]["path"], base_dir=base, line=_line_for(lines, ("download", "path"))
        )
    review = _as_dict(data.get("review"))
    columns = _as_dict(data.get("report")).get("columns")
    return Pipeline(
        path=path.resolve(),
        name=data.get("name", stem),
        api=data.get("api", "runs"),
        matrix=_build_matrix(data["matrix"], base, lines),
        steps=_build_steps(data, lines),
        run=_build_run(data.get("run", {})),
        manifest=base / data.get("manifest", f"{stem}.lamina.sqlite"),
        download=download,
        review=ReviewSpec(vary=dict(review.get("vary", {})), line=_line_for(lines, ("review",)) if review else None),
        report=ReportSpec(
            columns=tuple(columns) if columns is not None else None,
            line=_line_for(lines, ("report", "columns")) if columns is not None else None,
        ),
    )


def parse_pipeline_text(text: str, path: Path | str, *, display: str | None = None) -> Pipeline:
    """Parse pipeline YAML text as if read from `path` (relative paths resolve beside it)."""
    path = Path(path)
    file = display if display is not None else str(path)
    data, lines = _load_yaml(text, file)
    if not isinstance(data, dict):
        raise SpecError(Problem(f"the top level must be a mapping, got {_type_name(data)}", file=file, line=1))
    problems = _schema_problems(data, lines, file)
    problems += _cross_problems(data, lines, file)
    if problems:
        # a schema pattern and a cross-field check may say the same thing about one value: say it once
        raise SpecError(sorted(dict.fromkeys(problems), key=lambda p: p.line or 0))
    return _build(data, path, lines)


def _loopback_http(url: str) -> bool:
    from lamina_batch.sources import is_loopback_http  # httpx and friends, only for a URL that is not https

    return is_loopback_http(url)


def load_pipeline(path: Path | str) -> Pipeline:
    """Read, check and build a pipeline; raises SpecError listing every problem found."""
    path = Path(path)
    file = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(Problem("pipeline file not found", file=file)) from None
    except IsADirectoryError:
        raise SpecError(Problem("is a directory, not a pipeline file", file=file)) from None
    except OSError as e:
        raise SpecError(Problem(f"cannot read the pipeline file: {e.strerror}", file=file)) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(
            Problem(f"file is larger than {MAX_SPEC_BYTES // 1024} KiB; is this really a pipeline?", file=file)
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError(Problem("not valid UTF-8; save the file as UTF-8", file=file, line=line)) from None
    return parse_pipeline_text(text, path, display=file)


def iter_template_sources(pipeline: Pipeline) -> Iterator[tuple[str, str, str]]:
    """(step id, input name, template) for every templated input, in step order."""
    for step in pipeline.steps:
        for name, value in step.inputs.items():
            if templates.is_template(value):
                yield step.id, name, value
