"""Which row values a gallery card or review tile shows: a title, the columns that matter (the spec's
`report.columns`, else the columns the templates use), and the rest behind a toggle, so wide sheets stay readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes

from lamina_batch.models import Pipeline
from lamina_batch.templates import ENV, is_template

__all__ = ["MAX_SHOWN", "RowView", "row_view", "template_columns"]

# More shown fields than this and a card outgrows the screen; the others go behind the toggle.
MAX_SHOWN = 8
# Without any column named by a template or the spec, this many of the first columns are shown.
FALLBACK_SHOWN = 4


@dataclass(frozen=True)
class RowView:
    """A row as a card presents it: `title` (+ the column it came from, if any), shown and hidden fields."""

    title: str
    title_column: str | None
    shown: tuple[tuple[str, str], ...]
    rest: tuple[tuple[str, str], ...]


def row_view(
    row: Mapping[str, str],
    *,
    row_number: int,
    key: str | None,
    key_column: str | None = None,
    columns: Sequence[str] | None = None,
    template_columns: Sequence[str] = (),
) -> RowView:
    """Title: the row's key value, else the first template column's value, else `row N`. Shown: `columns`
    when given (as listed), else the template columns (minus the title's own column), else the first few."""
    title_column: str | None = None
    if key:
        title, title_column = key, key_column
    else:
        first = next((c for c in template_columns if row.get(c)), None)
        title, title_column = (row[first], first) if first is not None else (f"row {row_number}", None)
    if columns is not None:
        names = [c for c in columns if c in row]
    else:
        names = [c for c in template_columns if c in row and c != title_column]
        if not names and not template_columns:
            names = [c for c in row if c != title_column][:FALLBACK_SHOWN]
    names = list(dict.fromkeys(names))
    shown_names = set(names[:MAX_SHOWN])
    shown = tuple((c, row[c]) for c in names[:MAX_SHOWN])
    rest = tuple((c, v) for c, v in row.items() if c not in shown_names and c != title_column)
    return RowView(title, title_column, shown, rest)


def _row_lookups(tree: nodes.Node) -> Iterable[str]:
    """`row.X` and `row['X']` in the order they appear (a depth-first walk follows the source order)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name == "row":
                yield node.attr
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.node, nodes.Name)
            and node.node.name == "row"
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            yield node.arg.value


def _columns_in(source: Any) -> list[str]:
    if not isinstance(source, str) or not is_template(source):
        return []
    try:
        return list(_row_lookups(ENV.parse(source)))
    except jinja2.TemplateSyntaxError:
        return []  # validation reports it; a report only wants the names it can find


def template_columns(pipeline: Pipeline) -> tuple[str, ...]:
    """The row columns the pipeline's templates use, in order of first use: every step's inputs in step
    order, then the download path (`where` only filters rows, so it is not counted)."""
    found: list[str] = []
    for step in pipeline.steps:
        for value in step.inputs.values():
            found += _columns_in(value)
    if pipeline.download is not None:
        found += _columns_in(pipeline.download.path)
    return tuple(dict.fromkeys(found))
