"""`lamina-batch init APP_ID [--csv FILE]`: a starter pipeline YAML from an app's parameters and a sheet's
first rows. Columns meet parameters by name (key, name or id) and by content (image URLs, descriptive
columns); what it cannot decide it leaves as `TODO: ...` values, which `validate` refuses until replaced."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lamina_batch.models import AppInfo, AppParameter, Dialect
from lamina_batch.params import normalise, preferred_spelling
from lamina_batch.sheethints import (
    Continuation,
    SheetSample,
    column_for,
    continuation,
    description_column,
    image_column,
    key_column,
    read_sample,
    title_column,
)

TODO = "TODO:"
SCHEMA_ID = "https://github.com/lamina-batch/lamina-batch/schemas/pipeline.schema.json"


def step_id_for(name: str) -> str:
    """A valid step id (`^[a-z][a-z0-9_-]*$`) from an app name: "Product Hero" -> "product_hero"."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug or not slug[0].isalpha():
        slug = f"step_{slug}".rstrip("_")
    return slug[:40].rstrip("_") or "step"


def row_ref(column: str) -> str:
    """The Jinja expression for a column: `row.sku`, or `row['Col Name']` when `.` would not work.

    Attribute syntax is avoided for names that are dict methods (`row.items` is the method, not the column)
    and for underscore names the sandbox treats as private."""
    if column.isidentifier() and not column.startswith("_") and not hasattr(dict, column):
        return f"row.{column}"
    if "'" not in column and "\\" not in column:
        return f"row['{column}']"
    escaped = column.replace("\\", "\\\\").replace('"', '\\"')
    return f'row["{escaped}"]'


def schema_reference(pipeline_dir: Path | None) -> str:
    """Where an editor finds the installed schema: relative to the pipeline's folder, else a file URI."""
    schema = resources.files("lamina_batch.schemas") / "pipeline.schema.json"
    if not isinstance(schema, Path) or not schema.is_file():
        return SCHEMA_ID  # a packaging that keeps no plain file: the schema's id at least names it
    if pipeline_dir is None:
        return schema.resolve().as_uri()
    return Path(os.path.relpath(schema.resolve(), pipeline_dir.resolve())).as_posix()


def _yaml_pair(key: str, value: Any) -> str:
    """One `key: value` line, quoted by PyYAML so any name or value round-trips."""
    text = yaml.safe_dump({key: value}, allow_unicode=True, width=10**6, sort_keys=False).rstrip("\n")
    if "\n" in text:  # multi-line values: double quotes keep them on one line (and inside a comment)
        text = yaml.safe_dump({key: value}, allow_unicode=True, width=10**6, default_style='"').rstrip("\n")
    return text


def _template_pair(key: str, template: str) -> str:
    """`key: "{{ ... }}"`: templates double-quoted as in the docs, so `row['Col Name']` reads as written."""
    key_text = _yaml_pair(key, 0)[: -len(": 0")]
    value = yaml.safe_dump(template, allow_unicode=True, width=10**6, default_style='"').rstrip("\n")
    return f"{key_text}: {value}"


def _comment(text: str) -> str:
    return " ".join(text.split())


def _describe(param: AppParameter) -> str:
    bits = [param.type]
    if not param.has_default:
        bits.append("no default: must be set")
    elif param.default not in (None, ""):
        bits.append(f"default {param.default!r}")
    else:
        bits.append("optional")
    if param.options:
        bits.append("options: " + ", ".join(param.options))
    if param.accept:
        bits.append("accepts: " + ", ".join(param.accept))
    return _comment("; ".join(bits))


def _todo(param: AppParameter, *, inline: bool = False) -> str:
    if param.options:
        return f"{TODO} one of {', '.join(param.options)}"
    if param.type == "url":
        return f"{TODO} an http(s) URL" + ("" if inline else " or a template reading a column of them")
    return f"{TODO} the {param.name.lower()}" + ("" if inline else ": text, or a template reading the columns")


def _accepts_images(param: AppParameter) -> bool:
    return param.type == "url" and (not param.accept or "image" in param.accept)


@dataclass(frozen=True)
class _Input:
    """What init writes for one parameter."""

    param: AppParameter
    value: str | None = None  # the active value: a template or a TODO literal; None: the default stays
    why: str | None = None  # a trailing comment on the value
    suggestion: str | None = None  # a template built from descriptive columns (it is also the value)
    row_column: str | None = None  # inline rows: the example row's column this input reads


def _plan_inputs(app: AppInfo, sample: SheetSample | None) -> list[_Input]:
    columns = sample.columns if sample is not None else ()
    taken: set[str] = set()
    plans: list[_Input] = []
    for param in app.parameters:
        column = column_for(param, columns)
        if column is not None:
            taken.add(column)
        plans.append(_Input(param, f"{{{{ {row_ref(column)} }}}}") if column is not None else _Input(param))
    if sample is None:
        return [_inline_input(p) for p in plans]
    title, description = title_column(columns), description_column(columns)
    out: list[_Input] = []
    for plan in plans:
        param = plan.param
        if plan.value is None and _accepts_images(param) and sample.rows:
            found = image_column(sample, exclude=taken)
            if found is not None:
                taken.add(found.name)
                first = f"{row_ref(found.name)}.split(',')[0] | trim" if found.listed else row_ref(found.name)
                why = "the first of the image URLs in" if found.listed else "the image URLs in"
                plan = _Input(param, f"{{{{ {first} }}}}", why=f"{why} {found.name!r}")
        if plan.value is None and not param.has_default:
            suggestion = _suggested_text(param, title, description) if param.type == "text" else None
            if suggestion:
                # Issue 24: what init writes passes `validate`; a TODO is left only where nothing fits.
                why = "a start built from the sheet's descriptive columns: edit it"
                plan = _Input(param, suggestion, why=why, suggestion=suggestion)
            else:
                plan = _Input(param, _todo(param))
        out.append(plan)
    return out


def _inline_input(plan: _Input) -> _Input:
    """Without a sheet: every parameter that must be set reads a column of the one example row."""
    param = plan.param
    if param.has_default:
        return plan
    column = re.sub(r"[^a-z0-9]+", "_", preferred_spelling(param).lower()).strip("_") or "value"
    if not column[0].isalpha() or hasattr(dict, column):
        column = f"col_{column}"
    return _Input(param, f"{{{{ {row_ref(column)} }}}}", row_column=column)


def _suggested_text(param: AppParameter, title: str | None, description: str | None) -> str | None:
    """A template from the descriptive columns: the title alone for a name, title and description else."""
    if title is None and description is None:
        return None
    wants_name = any(w in normalise(param.name) for w in ("name", "title"))
    parts = []
    if title is not None:
        parts.append(f"{{{{ {row_ref(title)} }}}}")
    if description is not None and not (wants_name and title is not None):
        parts.append(f"{{{{ {row_ref(description)} | striptags | truncate(200) }}}}")
    return ": ".join(parts)


def _input_lines(plans: list[_Input], by_key: bool) -> list[str]:
    lines: list[str] = []
    for plan in plans:
        param = plan.param
        name = preferred_spelling(param) if by_key else param.name
        described = _describe(param)
        lines.append(f"# {_comment(param.name)}: {described}" if by_key and name != param.name else f"# {described}")
        if plan.value is None:
            value = param.default if isinstance(param.default, str) else ""
            lines.append(f"# {_yaml_pair(name, value)}    (uncomment to override the default)")
        elif plan.value.startswith(TODO):
            lines.append(_yaml_pair(name, plan.value))
        else:
            why = f"    # {_comment(plan.why)}" if plan.why else ""
            lines.append(_template_pair(name, plan.value) + why)
    return lines


def _matrix_lines(sample: SheetSample, csv_path: Path, used: Sequence[str]) -> list[str]:
    source = "xlsx" if csv_path.suffix.lower() in (".xlsx", ".xlsm", ".xls", ".ods") else "csv"
    lines = ["matrix:", "  " + _yaml_pair(source, csv_path.as_posix())]
    if sample.delimiter != ",":
        lines.append("  " + _yaml_pair("delimiter", sample.delimiter))
    seen = "every row" if sample.complete else f"the first {len(sample.rows)} rows"
    cont = continuation(sample) if len(sample.rows) >= 2 else None
    if cont is not None:
        return lines + _continuation_lines(sample, cont, used, seen)
    key = key_column(sample)
    if key is None:
        lines.append("  # key: <column>            # optional: a column naming each row (filled and unique)")
    else:
        lines.append("  " + _yaml_pair("key", key) + f"    # names each row: filled and unique in {seen} read")
    return lines


def _continuation_lines(sample: SheetSample, cont: Continuation, used: Sequence[str], seen: str) -> list[str]:
    carried = [c for c in cont.carried if c in used or c == cont.anchor] or [cont.anchor]
    fill = yaml.safe_dump(carried, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    per_row_key = key_column(sample)
    why = (
        f"{cont.group!r} repeats on {cont.rows} of the {len(sample.rows)} rows read, and those rows leave most cells"
        f" empty: they continue the row above (a product's variants, its extra images). `where` keeps the first"
        f" row of each; for a run per row instead, delete `where`, carry the first row's cells down with"
        f" `fill_down: {fill}`"
        + (f" and key the rows by {per_row_key!r}." if per_row_key else " and delete `key` (no column is unique).")
    )
    lines = ["  # " + line for line in textwrap.wrap(why, 110)]
    key = key_column(sample, cont.first_rows)
    if key is not None:
        lines.append("  " + _yaml_pair("key", key) + f"    # filled and unique over the rows `where` keeps, in {seen}")
    where = _template_pair("where", f"{row_ref(cont.anchor)} != ''")
    lines.append(f"  {where}    # {cont.anchor!r} is set on first rows only")
    lines.append(f"  # fill_down: {fill}")
    return lines


def _inline_matrix_lines(plans: list[_Input]) -> list[str]:
    row = {p.row_column: _todo(p.param, inline=True) for p in plans if p.row_column is not None} or {"id": "1"}
    return [
        "matrix:",
        "  rows:                      # one example row; use `csv: products.csv` for a spreadsheet",
        "    - " + "\n      ".join(_yaml_pair(k, v) for k, v in row.items()),
    ]


def _head_lines(app: AppInfo, dialect: Dialect, pipeline_dir: Path | None, *, todo: bool) -> list[str]:
    lines = [f"# yaml-language-server: $schema={schema_reference(pipeline_dir)}"]
    lines.append(f"# lamina-batch pipeline for {_comment(app.name)} ({app.app_id})")
    if app.description:
        lines.append(f"# {_comment(app.description)}")
    if todo:
        lines.append(f'# Replace every "{TODO} ..." value (validate refuses them), then check it with')
    else:
        lines.append("# Read the templates below (each says where it came from), then check it with")
    lines += [
        "# `lamina-batch validate pipeline.yaml --check-apps` and run it with `lamina-batch run pipeline.yaml`.",
        "version: 1",
        _yaml_pair("name", step_id_for(app.name)),
    ]
    if dialect != "runs":
        lines.append(_yaml_pair("api", dialect))
    return [*lines, ""]


def init_pipeline_yaml(
    app: AppInfo,
    *,
    csv_path: Path | None,
    csv_columns: list[str] | None = None,
    sample: SheetSample | None = None,
    dialect: Dialect = "runs",
    pipeline_dir: Path | None = None,
) -> str:
    """The text of a spec-version-1 pipeline for `app`.

    With `csv_path`, `matrix.csv` points at it (relative to `pipeline_dir` when it is absolute) and `sample`
    (or just `csv_columns`) decides the mapping, `key`, `where` and `delimiter`. Without it, a one-row inline
    `rows:` example carries a column for each parameter that must be set. Inputs are keyed by parameter key
    when every parameter has one, else by name."""
    if csv_path is not None and sample is None:
        sample = SheetSample(tuple(csv_columns or ()), (), complete=False)
    plans = _plan_inputs(app, sample if csv_path is not None else None)
    by_key = all(p.key for p in app.parameters)
    inline = csv_path is None or sample is None
    todo = inline or any(p.value is not None and p.value.startswith(TODO) for p in plans)
    lines = _head_lines(app, dialect, pipeline_dir, todo=todo)
    if csv_path is not None and sample is not None:
        shown = csv_path
        if pipeline_dir is not None and csv_path.is_absolute():
            shown = Path(os.path.relpath(csv_path, pipeline_dir))
        used = [c for c in sample.columns if any(p.value and row_ref(c) in p.value for p in plans)]
        used += [c for c in sample.columns if any(p.suggestion and row_ref(c) in p.suggestion for p in plans)]
        lines += _matrix_lines(sample, shown, used)
    else:
        lines += _inline_matrix_lines(plans)
    lines += ["", "steps:", "  - " + _yaml_pair("id", step_id_for(app.name)), "    " + _yaml_pair("app", app.app_id)]
    inputs = _input_lines(plans, by_key)
    active = any(not line.startswith("#") for line in inputs)
    lines.append("    inputs:" if active else "    inputs: {}")
    lines += ["      " + line for line in inputs]
    if app.outputs:
        labels = _comment(", ".join(o.label for o in app.outputs))
        if dialect == "runs":
            lines.append(f"    # outputs: [{labels}]    # optional: only these outputs")
        else:
            lines.append(f"    # outputs: {labels}")
    lines += [
        "",
        "# download:",
        '#   path: "out/{{ row_number }}/{{ step.id }}-{{ output.index }}{{ output.ext }}"',
        "",
        "run:",
        "  concurrency: 8",
        "  rate_limit: 90/min",
        "  # timeout: 30m",
        "  # max_starts: 100             # a safety cap on new paid runs per invocation",
        "",
    ]
    return "\n".join(lines)


def scaffold_for(app: AppInfo, sheet: Path | None, output: Path, dialect: Dialect = "runs") -> str:
    """`init`'s whole job for the CLI: sample the sheet (if any) and write it relative to `output`'s folder."""
    folder = output.resolve().parent
    if sheet is None:
        return init_pipeline_yaml(app, csv_path=None, dialect=dialect, pipeline_dir=folder)
    sample = read_sample(sheet)
    return init_pipeline_yaml(app, csv_path=sheet.resolve(), sample=sample, dialect=dialect, pipeline_dir=folder)
