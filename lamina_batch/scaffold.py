"""`lamina-batch init APP_ID [--csv FILE]`: a starter pipeline YAML from an app's parameters, mapping CSV
columns to parameters by name and leaving commented hints (options, defaults) for the rest."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from lamina_batch.models import AppInfo, AppParameter, Dialect

PLACEHOLDER_URL = "https://example.com/replace-me.png"


def step_id_for(name: str) -> str:
    """A valid step id (`^[a-z][a-z0-9_-]*$`) from an app name: "Product Hero" -> "product_hero"."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug or not slug[0].isalpha():
        slug = f"step_{slug}".rstrip("_")
    return slug[:40].rstrip("_") or "step"


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


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


def _example_value(param: AppParameter) -> str:
    if param.options:
        return param.options[0]
    if param.type == "url":
        return PLACEHOLDER_URL
    return f"example {param.name.lower()}"


def _row_column(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "value"
    if not base[0].isalpha() or hasattr(dict, base):
        base = f"col_{base}"
    column, n = base, 2
    while column in taken:
        column, n = f"{base}_{n}", n + 1
    taken.add(column)
    return column


def init_pipeline_yaml(
    app: AppInfo,
    *,
    csv_path: Path | None,
    csv_columns: list[str] | None,
    dialect: Dialect = "runs",
    pipeline_dir: Path | None = None,
) -> str:
    """The text of a spec-version-1 pipeline for `app`.

    With `csv_path`, `matrix.csv` points at it (relative to `pipeline_dir` when given, else as passed) and
    parameters whose names match a column (ignoring case, spaces, `_` and `-`) take `{{ row.<column> }}`.
    Without it, a one-row inline `rows:` example carries a column for each parameter that must be set."""
    columns = {_norm(c): c for c in csv_columns or []}
    lines = [
        f"# lamina-batch pipeline for {_comment(app.name)} ({app.app_id})",
    ]
    if app.description:
        lines.append(f"# {_comment(app.description)}")
    lines += [
        "# Check it with `lamina-batch validate pipeline.yaml --check-apps`, then `lamina-batch run pipeline.yaml`.",
        "version: 1",
        _yaml_pair("name", step_id_for(app.name)),
    ]
    if dialect != "runs":
        lines.append(_yaml_pair("api", dialect))

    inputs: list[str] = []
    example_row: dict[str, str] = {}
    taken: set[str] = set()
    for param in app.parameters:
        inputs.append(f"    # {_describe(param)}")
        column = columns.get(_norm(param.name))
        if column is not None:
            inputs.append("    " + _template_pair(param.name, f"{{{{ {row_ref(column)} }}}}"))
        elif param.has_default:
            value = param.default if param.default is not None else ""
            if isinstance(value, (dict, list)):
                value = ""
            inputs.append("    # " + _yaml_pair(param.name, value) + "    (uncomment to override the default)")
        elif csv_path is None and not param.options:
            name = _row_column(param.name, taken)
            example_row[name] = _example_value(param)
            inputs.append("    " + _template_pair(param.name, f"{{{{ {row_ref(name)} }}}}"))
        else:
            inputs.append(
                "    " + _yaml_pair(param.name, _example_value(param)) + "    # TODO: set a value or a CSV column"
            )

    lines.append("")
    lines.append("matrix:")
    if csv_path is not None:
        shown = csv_path
        if pipeline_dir is not None and csv_path.is_absolute():
            shown = Path(os.path.relpath(csv_path, pipeline_dir))
        lines.append("  " + _yaml_pair("csv", shown.as_posix()))
        lines.append("  # key: <column>            # optional: a column naming each row (unique values)")
    else:
        if not example_row:
            example_row["id"] = "1"
        lines.append("  rows:                      # one example row; use `csv: products.csv` for a spreadsheet")
        lines.append("    - " + "\n      ".join(_yaml_pair(k, v) for k, v in example_row.items()))

    lines.append("")
    lines.append("steps:")
    lines.append("  - " + _yaml_pair("id", step_id_for(app.name)))
    lines.append("    " + _yaml_pair("app", app.app_id))
    if any(not line.lstrip().startswith("#") for line in inputs):
        lines.append("    inputs:")
        lines += ["  " + line for line in inputs]
    else:
        lines.append("    inputs: {}")
        lines += ["  " + line for line in inputs]
    if app.outputs:
        labels = ", ".join(o.label for o in app.outputs)
        if dialect == "runs":
            lines.append(f"    # outputs: [{_comment(labels)}]    # optional: only these outputs")
        else:
            lines.append(f"    # outputs: {_comment(labels)}")

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
