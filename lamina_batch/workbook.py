"""Workbooks as a matrix source (.xlsx .xlsm .xls .ods through python-calamine, the optional `excel` extra): the
sheet and header row chosen, every cell turned into the text a person sees in it, problems named by sheet and cell.

Cell rules (DESIGN §1, §8): text as it is (leading zeros kept), whole numbers without `.0`, other numbers to 15
significant digits (what a spreadsheet shows), dates as ISO dates (`2024-01-02`, a time of day appended when
there is one), booleans `TRUE`/`FALSE`, formulas as their cached values, empty as "". Number formats (currency,
percent, custom) are not applied. Fully empty rows are skipped like blank CSV lines; columns with no header must
stay empty; a header cell inside a merged range takes the range's value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lamina_batch.errors import Problem
from lamina_batch.models import MatrixSpec
from lamina_batch.rows import Origin, Report, RowStream, SourceRow, column_letter, source_name
from lamina_batch.sandbox import did_you_mean

SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods")
EXTRA_HINT = 'install the extra: pip install "lamina-batch[excel]"'

__all__ = ["EXTRA_HINT", "SUFFIXES", "cell_text", "is_workbook", "open_sheet"]


def is_workbook(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def cell_text(value: Any) -> str:
    """A cell's value as the text a person sees in the sheet (without its number format)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return format(value, ".15g")
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0):
            return value.date().isoformat()
        return value.replace(microsecond=0).isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.replace(microsecond=0).isoformat()
    if isinstance(value, dt.timedelta):
        seconds = int(value.total_seconds())
        sign = "-" if seconds < 0 else ""
        hours, rest = divmod(abs(seconds), 3600)
        return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return str(value)


def _load(path: Path, file: str, report: Report) -> Any:
    try:
        import python_calamine
    except ImportError:
        report(Problem("reading a workbook needs the excel extra", file=file, path="matrix.xlsx", hint=EXTRA_HINT))
        return None
    if not path.is_file():
        hint = "the path is relative to the pipeline file"
        report(Problem("workbook not found", file=file, path="matrix.xlsx", hint=hint))
        return None
    try:
        return python_calamine.CalamineWorkbook.from_path(str(path))
    except python_calamine.PasswordError:
        report(Problem("the workbook is password-protected", file=file, hint="save a copy without a password"))
    except (OSError, python_calamine.CalamineError, ValueError) as e:
        report(Problem(f"cannot read the workbook: {e}", file=file, hint="is it really .xlsx, .xlsm, .xls or .ods?"))
    return None


def _pick_sheet(book: Any, spec: MatrixSpec, file: str, report: Report) -> str | None:
    names: list[str] = list(book.sheet_names)
    listing = ", ".join(repr(n) for n in names)
    if not names:
        report(Problem("the workbook has no sheets", file=file))
        return None
    if spec.sheet is None:
        return names[0]
    if isinstance(spec.sheet, int):
        if spec.sheet <= len(names):
            return names[spec.sheet - 1]
        message = f"there is no sheet {spec.sheet}: the workbook has {len(names)}"
        report(Problem(message, file=file, path="matrix.sheet", hint=f"sheets: {listing}"))
        return None
    if spec.sheet in names:
        return spec.sheet
    hint = did_you_mean(spec.sheet, names)
    hint = f"{hint + '; ' if hint else ''}sheets: {listing}"
    report(Problem(f"no sheet {spec.sheet!r}", file=file, path="matrix.sheet", hint=hint))
    return None


def open_sheet(spec: MatrixSpec, report: Report) -> RowStream | None:
    """Open the spec's workbook and sheet and read its header row; None after reporting why not."""
    assert spec.xlsx is not None
    file = source_name(spec)
    book = _load(spec.xlsx, file, report)
    if book is None:
        return None
    try:
        stream = _open(book, spec, file, report)
    except BaseException:
        book.close()
        raise
    if stream is None:
        book.close()
    return stream


def _open(book: Any, spec: MatrixSpec, file: str, report: Report) -> RowStream | None:
    name = _pick_sheet(book, spec, file, report)
    if name is None:
        return None
    sheet = book.get_sheet_by_name(name)
    start = sheet.start
    col0 = start[1] if start else 0
    # iter_rows() yields every row from the sheet's first (row 1), cells from its first used column on
    rows = enumerate(sheet.iter_rows() if start else iter(()), 1)
    header_at, cells, above = _find_header(rows, spec.header_row)
    columns = _header(cells, above, header_at, col0, getattr(sheet, "merged_cell_ranges", None)) if cells else []
    if not any(columns):
        at = f" (header_row {spec.header_row})" if spec.header_row else ""
        report(Problem(f"sheet {name!r} has no header row{at}", file=file, path="matrix.xlsx"))
        return None
    letters = {name: column_letter(col0 + i) for i, name in enumerate(columns) if name}
    origin = Origin("sheet", file, name, letters)
    if not _header_ok(columns, origin, header_at, col0, report):
        return None
    counter = [0]
    named = [(i, c) for i, c in enumerate(columns) if c]
    data = _sheet_rows(rows, named, col0, origin, report, counter)
    return RowStream(origin, [c for _, c in named], data, counter, book.close)


_ABOVE_KEPT = 100  # rows above the header kept to resolve vertically merged header cells


def _find_header(
    rows: Iterator[tuple[int, Sequence[Any]]], header_row: int | None
) -> tuple[int, Sequence[Any] | None, dict[int, Sequence[Any]]]:
    """(sheet row, cells) of the header: `header_row`, else the first non-empty row; and the rows above it."""
    above: dict[int, Sequence[Any]] = {}
    for number, cells in rows:
        filled = any(cell_text(c).strip() for c in cells)
        if header_row is None and filled:
            return number, cells, above
        if header_row is not None and number == header_row:
            return number, cells if filled or above else None, above
        if header_row is not None and header_row - number <= _ABOVE_KEPT:
            above[number] = cells
    return 0, None, above


def _header(cells: Sequence[Any], above: dict[int, Sequence[Any]], header_at: int, col0: int, ranges: Any) -> list[str]:
    """Column names by position ("" where there is none). A header cell inside a merged range takes the range's
    value (written in its top-left cell, maybe on a row above); across several columns the first column gets
    the name and the others `Name 2`, `Name 3`."""
    names = [cell_text(c).strip() for c in cells]
    for (r0, c0), (r1, c1) in ranges or ():
        if not r0 + 1 <= header_at <= r1 + 1:
            continue
        top = cells if r0 + 1 == header_at else above.get(r0 + 1, ())
        first = c0 - col0
        value = cell_text(top[first]).strip() if 0 <= first < len(top) else ""
        for k in range(c1 - c0 + 1):
            i = first + k
            if value and 0 <= i < len(names):
                names[i] = value if k == 0 else f"{value} {k + 1}"
    return names


def _header_ok(columns: list[str], origin: Origin, header_at: int, col0: int, report: Report) -> bool:
    seen: dict[str, str] = {}
    ok = True
    for i, name in enumerate(columns):
        letter = column_letter(col0 + i)
        if not name:
            continue
        if name in seen:
            report(
                Problem(
                    f"duplicate column {name!r} (columns {seen[name]} and {letter})",
                    file=f"{origin.file}:{origin.sheet}!{letter}{header_at}",
                )
            )
            ok = False
        else:
            seen[name] = letter
    return ok


def _sheet_rows(
    rows: Iterator[tuple[int, Sequence[Any]]],
    named: list[tuple[int, str]],
    col0: int,
    origin: Origin,
    report: Report,
    counter: list[int],
) -> Iterator[SourceRow]:
    named_at = {i for i, _ in named}
    number = 0
    for sheet_row, cells in rows:
        texts = [cell_text(c) for c in cells]
        if not any(t.strip() for t in texts):
            continue  # a fully empty row, like a blank line in a CSV
        number += 1
        counter[0] = number
        stray = next((i for i, t in enumerate(texts) if t.strip() and i not in named_at), None)
        if stray is not None:
            cell = f"{column_letter(col0 + stray)}{sheet_row}"
            report(
                Problem(
                    f"a value in a column with no header: {texts[stray][:40]!r}",
                    file=f"{origin.file}:{origin.sheet}!{cell}",
                    hint="give the column a header or clear the cell (or set matrix.header_row)",
                )
            )
            continue
        values = {name: texts[i] if i < len(texts) else "" for i, name in named}
        yield SourceRow(number, values, sheet_row, origin)
