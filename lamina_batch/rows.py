"""Where rows come from: a CSV file (read with bounded lines and records, strict quotes, its delimiter checked
against its header), inline `rows:` or a workbook (`workbook.py`), streamed as `SourceRow`s that know their place
in the source for messages, with `fill_down` applied. Nothing here keeps a row after it was handed on.
"""

from __future__ import annotations

import codecs
import csv
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

from lamina_batch.errors import MatrixError, Problem
from lamina_batch.models import MatrixSpec
from lamina_batch.sandbox import did_you_mean

MAX_LINE_BYTES = 1024 * 1024  # one physical line of a CSV
MAX_RECORD_BYTES = 8 * 1024 * 1024  # one record, quoted line breaks included
FIELD_LIMIT = csv.field_size_limit()  # the csv module's own cap on one field (131072 characters)

Report = Callable[[Problem], None]

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_RECORD_BYTES",
    "Origin",
    "RowStream",
    "SourceRow",
    "column_letter",
    "display_path",
    "open_rows",
    "read_table",
]


def display_path(path: Path) -> str:
    """A path as messages show it: relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def column_letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: a spreadsheet column's name."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


@dataclass(frozen=True)
class Origin:
    """The source of a stream of rows, as messages name it: a CSV file (problems at `file:line`), the pipeline's
    inline rows (`pipeline.yaml:line: matrix.rows[i]`) or a workbook sheet (`book.xlsx:Sheet1!C4`)."""

    kind: Literal["csv", "rows", "sheet"]
    file: str
    sheet: str | None = None
    letters: Mapping[str, str] = field(default_factory=dict)  # column name -> column letter, for sheets

    def problem(
        self,
        message: str,
        line: int | None,
        *,
        number: int | None = None,
        column: str | None = None,
        path: str | None = None,
        hint: str | None = None,
    ) -> Problem:
        """A problem at `line` (CSV line, pipeline line of an inline row, or sheet row) and maybe `column`."""
        if self.kind == "sheet":
            letter = self.letters.get(column) if column is not None else None
            cell = f"{letter}{line}" if letter is not None else f"{line}:{line}"
            return Problem(message, file=f"{self.file}:{self.sheet}!{cell}", path=path, hint=hint)
        if self.kind == "rows" and path is None and number is not None:
            path = f"matrix.rows[{number - 1}]"
        return Problem(message, file=self.file, line=line, path=path, hint=hint)


class SourceRow(NamedTuple):
    """One data row: its 1-based number among the data rows, its cells as strings, and where it is. (A
    NamedTuple: as immutable as a frozen dataclass, and one is made per row, so it must be cheap.)"""

    number: int
    values: dict[str, str]
    line: int | None  # the CSV line its record starts on, the sheet row, or the inline row's pipeline line
    origin: Origin

    def problem(
        self, message: str, *, column: str | None = None, path: str | None = None, hint: str | None = None
    ) -> Problem:
        return self.origin.problem(message, self.line, number=self.number, column=column, path=path, hint=hint)


class RowStream:
    """An opened source: its `columns` (the header; for inline rows every key in order of first use) and its
    rows, read once, lazily. `rows_read` counts the data rows read so far, skipped unusable ones included."""

    def __init__(
        self,
        origin: Origin,
        columns: Sequence[str],
        rows: Iterator[SourceRow],
        counter: list[int] | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.origin = origin
        self.columns = tuple(columns)
        self._rows = rows
        self._counter = counter if counter is not None else [0]
        self._closer = closer

    @property
    def rows_read(self) -> int:
        return self._counter[0]

    def __iter__(self) -> Iterator[SourceRow]:
        return self._rows

    def close(self) -> None:
        """Release the file (also done when the rows run out; a stream dropped half-read is closed by GC)."""
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()
        if self._closer is not None:
            self._closer()

    def with_rows(self, rows: Iterator[SourceRow]) -> RowStream:
        """The same source, its rows passed through a transformation."""
        return RowStream(self.origin, self.columns, rows, self._counter, self.close)


# --------------------------------------------------------------------------- opening a source


def open_rows(spec: MatrixSpec, pipeline_file: str, report: Report) -> RowStream | None:
    """Open the matrix's source and read its header; None after reporting why the source is unusable (missing
    file, empty, bad header, a fill_down column it does not have). Row-level problems are reported while
    iterating, and the row is skipped."""
    if spec.xlsx is not None:
        from lamina_batch import workbook

        stream = workbook.open_sheet(spec, report)
    elif spec.csv is not None:
        stream = _open_csv(spec, report)
    elif spec.url is not None:
        report(
            Problem(
                f"{spec.url} has not been fetched",
                file=pipeline_file,
                line=spec.lines.get("csv", spec.lines.get("xlsx")),
                path="matrix.csv" if "csv" in spec.lines else "matrix.xlsx",
                hint="fetch it once with lamina_batch.sources.localize() before reading rows",
            )
        )
        return None
    else:
        stream = _inline(spec, pipeline_file)
    if stream is None or not spec.fill_down:
        return stream
    return _with_fill_down(stream, spec, pipeline_file, report)


def source_name(spec: MatrixSpec) -> str:
    """How messages name the matrix's source file: the URL it came from, else the path."""
    if spec.url is not None:
        return spec.url.split("?", 1)[0]
    path = spec.csv or spec.xlsx
    return display_path(path) if path is not None else "matrix.rows"


def _with_fill_down(stream: RowStream, spec: MatrixSpec, pipeline_file: str, report: Report) -> RowStream | None:
    unknown = [c for c in spec.fill_down if c not in stream.columns]
    if not unknown:
        return stream.with_rows(_filled(iter(stream), spec.fill_down))
    stream.close()  # before reporting: in a streaming pass report() raises
    for column in unknown:
        report(
            Problem(
                f"fill_down: no column {column!r}",
                file=pipeline_file,
                line=spec.lines.get("fill_down"),
                path="matrix.fill_down",
                hint=did_you_mean(column, stream.columns) or f"columns: {', '.join(stream.columns[:30])}",
            )
        )
    return None


def _filled(rows: Iterator[SourceRow], columns: Sequence[str]) -> Iterator[SourceRow]:
    """An empty cell (blank or only spaces) in a fill_down column takes the nearest non-empty value above it."""
    above: dict[str, str] = {}
    for row in rows:
        values = row.values
        for column in columns:
            value = values.get(column, "")
            if value.strip():
                above[column] = value
            elif column in above:
                values[column] = above[column]
        yield row


def _inline(spec: MatrixSpec, pipeline_file: str) -> RowStream:
    origin = Origin("rows", pipeline_file)
    columns: dict[str, None] = {}
    for row in spec.rows or ():
        columns.update(dict.fromkeys(row))

    counter = [0]

    def rows() -> Iterator[SourceRow]:
        for i, row in enumerate(spec.rows or (), 1):
            counter[0] = i
            line = spec.row_lines[i - 1] if i <= len(spec.row_lines) else None
            yield SourceRow(i, dict(row), line or None, origin)

    return RowStream(origin, list(columns), rows(), counter)


# --------------------------------------------------------------------------- CSV


class _Unreadable(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(problem.message)


_BINARY_SIGNATURES = {
    b"PK\x03\x04": "a zip file: an .xlsx or .ods workbook? use matrix.xlsx",
    b"\xd0\xcf\x11\xe0": "a legacy Office file: an .xls workbook? use matrix.xlsx",
    b"\xff\xfe": "UTF-16 text: save it as CSV UTF-8",
    b"\xfe\xff": "UTF-16 text: save it as CSV UTF-8",
}


class _Lines:
    """The file's lines, decoded one at a time (so a bad byte is reported with its line), with every line and
    every record capped while it is read: /dev/zero, a binary file or a file with CR-only line endings fails
    at its first line instead of being read whole. b'\\n' never occurs inside a multi-byte UTF-8 sequence, so
    splitting bytes on it is safe."""

    def __init__(self, f: BinaryIO, file: str) -> None:
        self.f = f
        self.file = file
        self.number = 0
        self.record_start = 1
        self.record_bytes = 0

    def fail(self, message: str, line: int, hint: str | None = None) -> _Unreadable:
        return _Unreadable(Problem(message, file=self.file, line=line, hint=hint))

    def __iter__(self) -> Iterator[str]:
        while raw := self.f.readline(MAX_LINE_BYTES + 1):
            self.number += 1
            if self.number == 1:
                raw = self._first(raw)
            if b"\x00" in raw:
                raise self.fail("contains a NUL byte: this is not a text CSV file", self.number, "save it as CSV UTF-8")
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise self.fail(f"line is longer than {MAX_LINE_BYTES // 1024 // 1024} MiB", self.number)
            self.record_bytes += len(raw)
            if self.record_bytes > MAX_RECORD_BYTES:
                raise self.fail(
                    f"a record starting here is longer than {MAX_RECORD_BYTES // 1024 // 1024} MiB",
                    self.record_start,
                    "is a quote left open?",
                )
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = e.object[e.start : e.start + 1]
                raise self.fail(
                    f"not valid UTF-8 (byte 0x{bad.hex()} at column {e.start + 1})",
                    self.number,
                    "save the file as UTF-8 (CSV UTF-8 in Excel)",
                ) from None

    def _first(self, raw: bytes) -> bytes:
        for signature, what in _BINARY_SIGNATURES.items():
            if raw.startswith(signature):
                kind, fix = what.split(": ", 1)
                raise self.fail(f"this is {kind}, not a UTF-8 CSV file", 1, fix.split("? ", 1)[-1])
        if raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        cr = raw.find(b"\r")
        if cr != -1 and cr + 1 < len(raw) and raw[cr + 1 : cr + 2] != b"\n":
            raise self.fail(
                "the file uses CR-only line endings (classic Mac OS)", 1, "save it with LF or CRLF line endings"
            )
        return raw

    def next_record(self) -> None:
        """The csv reader finished a record: the next one starts on the next line."""
        self.record_start = self.number + 1
        self.record_bytes = 0


_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _delimiter_problem(header_text: str, delimiter: str, file: str) -> Problem | None:
    """A header that another delimiter splits better: the file is likely `;`- or tab-separated."""
    counts = {d: header_text.count(d) for d in _DELIMITER_NAMES if d != delimiter}
    best = max(counts, key=lambda d: counts[d])
    if counts[best] == 0 or counts[best] <= header_text.count(delimiter):
        return None
    name = _DELIMITER_NAMES[best]
    shown = '"\\t"' if best == "\t" else f'"{best}"'
    return Problem(
        f"the header looks {name}-separated, not {_DELIMITER_NAMES.get(delimiter, repr(delimiter))}-separated",
        file=file,
        line=1,
        hint=f"set matrix.delimiter: {shown}",
    )


def _open_csv(spec: MatrixSpec, report: Report) -> RowStream | None:
    assert spec.csv is not None
    file = source_name(spec)
    try:
        f = spec.csv.open("rb")
    except FileNotFoundError:
        hint = "the path is relative to the pipeline file"
        report(Problem("CSV file not found", file=file, path="matrix.csv", hint=hint))
        return None
    except OSError as e:
        report(Problem(f"cannot read the CSV file: {e.strerror}", file=file, path="matrix.csv"))
        return None
    lines = _Lines(f, file)
    reader = csv.reader(lines, delimiter=spec.delimiter or ",", strict=True)
    origin = Origin("csv", file)
    try:
        header = _read_header(reader, lines, spec, file, report)
    except BaseException:
        f.close()
        raise
    if header is None:
        f.close()
        return None
    counter = [0]
    rows = _csv_records(f, reader, lines, header, origin, report, counter)
    return RowStream(origin, header, rows, counter, f.close)


def _read_header(
    reader: Iterator[list[str]], lines: _Lines, spec: MatrixSpec, file: str, report: Report
) -> list[str] | None:
    try:
        for record in reader:
            start = lines.record_start
            lines.next_record()
            if not record:
                continue  # blank lines before the header
            header = [h.strip() for h in record]
            problem = None
            if spec.delimiter is None:
                problem = _delimiter_problem(",".join(record), ",", file)
            elif len(record) == 1:
                problem = _delimiter_problem(record[0], spec.delimiter, file)
            if problem is not None:
                report(problem)
                return None
            return header if _header_ok(header, file, start, report) else None
    except _Unreadable as e:
        report(e.problem)
        return None
    except csv.Error as e:
        report(_csv_problem(e, lines, file))
        return None
    report(Problem("CSV file is empty; the first line must be a header row", file=file, path="matrix.csv"))
    return None


def _csv_problem(e: csv.Error, lines: _Lines, file: str) -> Problem:
    message = str(e)
    start = lines.record_start
    if "unexpected end of data" in message:
        return Problem(
            "unterminated quoted field starting here",
            file=file,
            line=start,
            hint='a field that opens with " must close with "; write a quote inside a field as ""',
        )
    if "field larger than field limit" in message:
        text = f"a field starting here is longer than {FIELD_LIMIT} characters"
        return Problem(text, file=file, line=start, hint="is a quote left open?" if lines.number > start else None)
    if "expected after" in message:
        return Problem(
            "text after the closing quote of a quoted field",
            file=file,
            line=lines.number,
            hint='quote the whole field, and write a quote inside it as ""',
        )
    return Problem(f"unreadable CSV: {message}", file=file, line=lines.number)


def _header_ok(header: list[str], file: str, line: int, report: Report) -> bool:
    ok = True
    seen: dict[str, int] = {}
    for i, name in enumerate(header, 1):
        if not name:
            report(Problem(f"column {i} has a blank header", file=file, line=line, path="header"))
            ok = False
        elif name in seen:
            report(
                Problem(
                    f"duplicate column {name!r} (columns {seen[name]} and {i})", file=file, line=line, path="header"
                )
            )
            ok = False
        else:
            seen[name] = i
    return ok


def _csv_records(
    f: BinaryIO,
    reader: Iterator[list[str]],
    lines: _Lines,
    header: list[str],
    origin: Origin,
    report: Report,
    counter: list[int],
) -> Iterator[SourceRow]:
    width = len(header)
    number = 0
    with f:  # closed when the rows run out; RowStream.close() closes it for a stream left half-read
        try:
            for record in reader:
                start = lines.record_start
                lines.next_record()
                if not record:
                    continue  # blank line
                number += 1
                counter[0] = number
                if len(record) != width:
                    report(
                        origin.problem(
                            f"has {len(record)} fields but the header has {width}",
                            start,
                            path=f"row {number}",
                            hint="quote fields that contain commas or line breaks",
                        )
                    )
                    continue
                yield SourceRow(number, dict(zip(header, record, strict=True)), start, origin)
        except _Unreadable as e:
            report(e.problem)
        except csv.Error as e:
            report(_csv_problem(e, lines, origin.file))


# --------------------------------------------------------------------------- a peek for `init`


def read_table(
    path: Path, *, limit: int = 1000, sheet: str | int | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the first `limit` data rows of a CSV or workbook (by its suffix), read with the same rules
    and checks as the matrix (for `init --csv`, which maps columns to parameters by name and by content).
    Raises MatrixError naming what is wrong."""
    from lamina_batch.workbook import is_workbook

    problems: list[Problem] = []
    spec = MatrixSpec(xlsx=path, sheet=sheet) if is_workbook(path) else MatrixSpec(csv=path)
    stream = open_rows(spec, str(path), problems.append)
    if stream is None:
        raise MatrixError(problems or [Problem("unreadable", file=str(path))])
    rows: list[dict[str, str]] = []
    try:
        for row in stream if limit > 0 else ():
            rows.append(row.values)
            if len(rows) >= limit:
                break
    finally:
        stream.close()
    if problems:
        raise MatrixError(problems)
    return list(stream.columns), rows
