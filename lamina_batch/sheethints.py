"""What `init` can tell from a sheet's first rows: which column names each row, continuation rows (a product's
variant and image rows under it), which column holds image URLs, which columns describe a product, and
which column a parameter names. Guesses for a scaffold the user reviews, never rules a batch runs by."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lamina_batch.errors import MatrixError, Problem
from lamina_batch.matrix import display_path
from lamina_batch.models import AppParameter
from lamina_batch.params import normalise

SAMPLE_ROWS = 500
DELIMITERS = (",", ";", "\t")
_KEY_HINTS = ("sku", "handle", "id", "key", "code", "slug", "ean", "upc", "gtin", "barcode", "mpn", "ref")
_IMAGE_HINTS = ("image", "img", "photo", "picture", "src", "thumbnail")
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif")
_TITLE_NAMES = ("title", "name", "producttitle", "productname", "itemname", "itemtitle")


@dataclass(frozen=True)
class SheetSample:
    """A sheet's header and first rows, cells as text. `complete`: every data row was read."""

    columns: tuple[str, ...]
    rows: tuple[Mapping[str, str], ...]
    delimiter: str = ","
    complete: bool = True


def read_sample(path: Path, *, limit: int = SAMPLE_ROWS) -> SheetSample:
    """The header and first `limit` rows of a CSV (UTF-8, BOM tolerated, `,` `;` or tab told from the header).

    The one place `init` reads a sheet; a workbook (.xlsx .xlsm .xls .ods) is read by `workbook.py`'s rules,
    its first sheet, its header the first non-empty row."""
    file = display_path(path)
    if path.suffix.lower() in (".xlsx", ".xlsm", ".xls", ".ods"):
        return _workbook_sample(path, limit)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            text = f.read(1 << 16)
            delimiter = sniff_delimiter(text.split("\n", 1)[0])
            f.seek(0)
            return _sample(csv.reader(f, delimiter=delimiter), delimiter, limit)
    except FileNotFoundError:
        raise MatrixError(Problem("CSV file not found", file=file, path="--csv")) from None
    except OSError as e:
        raise MatrixError(Problem(f"cannot read the CSV file: {e.strerror}", file=file, path="--csv")) from None
    except UnicodeDecodeError:
        raise MatrixError(
            Problem("not valid UTF-8", file=file, hint="save the file as UTF-8 (CSV UTF-8 in Excel)")
        ) from None
    except csv.Error as e:
        raise MatrixError(Problem(f"unreadable CSV: {e}", file=file)) from None


def _workbook_sample(path: Path, limit: int) -> SheetSample:
    """The first sheet's header and first `limit` rows, cells as the conversion rules make them; MatrixError
    (naming the extra when it is missing) when the workbook cannot be read."""
    from lamina_batch.models import MatrixSpec
    from lamina_batch.workbook import open_sheet

    problems: list[Problem] = []
    stream = open_sheet(MatrixSpec(xlsx=path.resolve()), problems.append)
    if stream is None:
        first = problems[0] if problems else Problem("unreadable workbook", file=display_path(path))
        raise MatrixError(dataclasses.replace(first, path="--csv" if first.path == "matrix.xlsx" else first.path))
    rows: list[dict[str, str]] = []
    try:
        for row in stream:
            if len(rows) == limit:
                return SheetSample(stream.columns, tuple(rows), complete=False)
            rows.append(row.values)
    finally:
        stream.close()
    return SheetSample(stream.columns, tuple(rows))


def _sample(reader: Iterable[list[str]], delimiter: str, limit: int) -> SheetSample:
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for record in reader:
        if not record:
            continue
        if header is None:
            header = [h.strip() for h in record]
            continue
        if len(rows) == limit:
            return SheetSample(tuple(header), tuple(rows), delimiter, complete=False)
        if len(record) == len(header):  # ragged rows are `validate`'s to report
            rows.append(dict(zip(header, record, strict=True)))
    return SheetSample(tuple(header or ()), tuple(rows), delimiter)


def sniff_delimiter(header_line: str) -> str:
    """`,` unless `;` or a tab separates more fields of the header line."""
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and " " not in value.strip()


def _blank(value: str | None) -> bool:
    return value is None or not value.strip()


def column_for(param: AppParameter, columns: Sequence[str]) -> str | None:
    """The first column named like the parameter's key, name or id (case and punctuation ignored)."""
    names = {normalise(s) for s in (param.key, param.name, param.id) if s} - {""}
    return next((c for c in columns if normalise(c) in names), None)


@dataclass(frozen=True)
class ImageColumn:
    """A column of image URLs; `listed`: cells hold several, comma-separated (WooCommerce's `Images`)."""

    name: str
    listed: bool


def image_column(sample: SheetSample, exclude: Iterable[str] = ()) -> ImageColumn | None:
    """The likeliest column of image URLs: most of its filled cells start with an http(s) URL; image-ish
    names and image file extensions break ties."""
    best: tuple[float, str, bool] | None = None
    skip = set(exclude)
    for column in sample.columns:
        if column in skip:
            continue
        filled = [r[column].strip() for r in sample.rows if not _blank(r.get(column))]
        firsts = [v.split(",")[0].strip() for v in filled]
        urls = [v for v in firsts if is_http_url(v)]
        if not filled or len(urls) < 0.8 * len(filled):
            continue
        named = any(h in normalise(column) for h in _IMAGE_HINTS)
        pictured = sum(urlsplit(u).path.lower().endswith(_IMAGE_EXTENSIONS) for u in urls) / len(urls)
        score = 2 * named + pictured + len(filled) / len(sample.rows)
        listed = any("," in v and is_http_url(v.split(",")[1].strip()) for v in filled)
        if best is None or score > best[0]:
            best = (score, column, listed)
    return None if best is None else ImageColumn(best[1], best[2])


def title_column(columns: Sequence[str]) -> str | None:
    """The column most likely holding a product's name."""
    exact = [c for c in columns if normalise(c) in _TITLE_NAMES]
    if exact:
        return exact[0]
    return next((c for c in columns if "title" in normalise(c)), None)


def description_column(columns: Sequence[str]) -> str | None:
    """The column most likely holding a product's description (a short one first)."""
    found = [c for c in columns if any(w in normalise(c) for w in ("description", "body", "details"))]
    short = [c for c in found if "short" in normalise(c)]
    return next(iter(short or found), None)


@dataclass(frozen=True)
class Continuation:
    """Rows that continue the row above (Shopify's variant and image rows): `group` repeats the first row's
    value, `anchor` is set on a group's first row only, `carried` are the columns only first rows fill."""

    group: str
    anchor: str
    rows: int  # continuation rows seen
    first_rows: tuple[int, ...]  # indexes (into the sample) of each group's first row
    carried: tuple[str, ...]


def continuation(sample: SheetSample) -> Continuation | None:
    """Continuation rows, when a filled column repeats its value on the next rows and those rows leave most
    of their other cells empty."""
    rows = sample.rows
    for column in sample.columns:
        values = [r[column].strip() for r in rows]
        if any(not v for v in values):
            continue
        repeats = _contiguous_repeats(values)
        if not repeats:
            continue
        others = [c for c in sample.columns if c != column]
        firsts = tuple(i for i in range(len(rows)) if i not in repeats)
        sparse = [i for i in repeats if _empty_share(rows[i], others) >= 0.5]
        if len(sparse) < 0.8 * len(repeats):
            continue
        only_first = [
            c
            for c in others
            if all(_blank(rows[i][c]) for i in repeats) and any(not _blank(rows[i][c]) for i in firsts)
        ]
        anchors = [c for c in only_first if all(not _blank(rows[i][c]) for i in firsts)]
        if not anchors:
            continue
        anchor = title_column(anchors) or anchors[0]
        return Continuation(column, anchor, len(repeats), firsts, tuple(only_first))
    return None


def _contiguous_repeats(values: list[str]) -> set[int] | None:
    """Indexes of values equal to the one before, if every value forms one contiguous block; else None."""
    seen: set[str] = set()
    repeats: set[int] = set()
    for i, v in enumerate(values):
        if i and v == values[i - 1]:
            repeats.add(i)
        elif v in seen:
            return None
        seen.add(v)
    return repeats


def _empty_share(row: Mapping[str, str], columns: list[str]) -> float:
    return sum(_blank(row[c]) for c in columns) / len(columns) if columns else 0.0


def key_column(sample: SheetSample, rows: Sequence[int] | None = None) -> str | None:
    """A column that is filled and unique over the given rows (default: all), a key-like name (sku, id,
    handle...) first; with fewer than two rows, only a key-like name is proposed."""
    picked = [sample.rows[i] for i in rows] if rows is not None else list(sample.rows)
    if not picked:
        return None
    candidates = []
    for index, column in enumerate(sample.columns):
        values = [r[column].strip() for r in picked]
        if any(not v for v in values) or len(set(values)) != len(values):
            continue
        hinted = any(normalise(column) == h or normalise(column).endswith(h) for h in _KEY_HINTS)
        plain = all(len(v) <= 64 and not is_http_url(v) for v in values)
        if hinted or (plain and len(picked) >= 2):
            candidates.append((not hinted, index, column))
    return min(candidates)[2] if candidates else None
