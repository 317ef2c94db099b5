"""The results workbook (`report --format xlsx`): the input rows and columns as they came, each step's status,
output link, downloaded file, credits, run id and error, a frozen and filtered header, and a per-step summary
sheet. Written with XlsxWriter (the `excel` extra), streaming rows in its constant-memory mode.
"""

from __future__ import annotations

import os
import posixpath
import struct
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina_batch.atomic import atomic_path
from lamina_batch.errors import ConfigError, Problem
from lamina_batch.models import DownloadRecord, RunRecord, RunState
from lamina_batch.reports.common import (
    STATE_LABELS,
    STATE_ORDER,
    ReportInput,
    error_text,
    is_web_url,
    iter_items,
    latest_per_step,
    output_text,
    verdict_of,
)
from lamina_batch.rows import column_letter

if TYPE_CHECKING:
    from xlsxwriter.workbook import Workbook
    from xlsxwriter.worksheet import Worksheet

__all__ = ["EXTRA_HINT", "STEP_COLUMNS", "image_size", "require_writer", "run_credits", "write_xlsx"]

EXTRA_HINT = 'install the extra: pip install "lamina-batch[excel]"'
STEP_COLUMNS = ("status", "output", "file", "run_id", "credits", "verdict", "error")  # as the CSV report
MULTI_SEPARATOR = " | "
RESULTS_SHEET = "Results"
SUMMARY_SHEET = "Summary"
# Excel keeps at most 65,530 hyperlinks per worksheet; past that a link is a HYPERLINK() formula (no such limit,
# but its strings hold at most 255 characters: a longer link is plain text).
MAX_LINKS = 65_530
MAX_FORMULA_STRING = 255
# Excel's limits for a URL in a hyperlink and for the text of one cell.
MAX_URL = 2_079
MAX_CELL = 32_767
THUMB_PX = 64  # the longer side of a thumbnail, in pixels
_THUMB_ROW_PT = THUMB_PX * 0.75 + 4  # row height (points) that holds a thumbnail
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


def run_credits(rec: RunRecord) -> float | None:
    """The credits a run cost where known, as every report counts them (`RunRecord.credits`: earlier attempts
    plus the current one where it created a remote run, its actual cost else its estimate); None: unknown."""
    return rec.credits


def require_writer() -> None:
    """ConfigError naming the `excel` extra when XlsxWriter is not installed (checked before a batch starts)."""
    try:
        import xlsxwriter  # noqa: F401
    except ImportError:
        raise ConfigError(
            Problem("the xlsx report needs the excel extra", path="--format xlsx", hint=EXTRA_HINT)
        ) from None


class _Sheet:
    """The results sheet being written: formats, the next row, and how many links it holds so far."""

    def __init__(self, book: Workbook, sheet: Worksheet, data: ReportInput, out: Path, max_links: int) -> None:
        self.book = book
        self.max_links = max_links
        self.sheet = sheet
        self.data = data
        # downloads are recorded relative to files_dir and never leave it: one relpath serves every row
        self.files_prefix = os.path.relpath(data.files_dir.resolve(), out.parent.resolve()).replace(os.sep, "/")
        self.links = 0
        self.row = 0
        self.link_format = book.add_format({"font_color": "blue", "underline": 1})
        self.bold = book.add_format({"bold": True})

    def text(self, col: int, value: str) -> None:
        # write_string: a cell is text whatever it looks like (no formula from '=...', no number from '00123')
        if value:
            self.sheet.write_string(self.row, col, value[:MAX_CELL])

    def link(self, col: int, url: str, text: str) -> None:
        """A real hyperlink while Excel takes more, then a HYPERLINK() formula showing `text` (its value cached,
        the quotes in both doubled); plain text for a link too long for either."""
        if self.links < self.max_links and len(url) <= MAX_URL:
            self.links += 1
            self.sheet.write_url(self.row, col, url, self.link_format, text[:MAX_CELL])
            return
        target = url.removeprefix("external:").replace("\\", "/")
        if len(target) > MAX_FORMULA_STRING or len(text) > MAX_FORMULA_STRING:
            self.text(col, text)
            return
        quoted = target.replace('"', '""'), text.replace('"', '""')
        formula = f'=HYPERLINK("{quoted[0]}","{quoted[1]}")'
        self.sheet.write_formula(self.row, col, formula, self.link_format, text)

    def file_link(self, col: int, downloads: Sequence[DownloadRecord]) -> None:
        """The downloaded files' paths (relative to the output folder), linked relative to the workbook."""
        if not downloads:
            return
        shown = MULTI_SEPARATOR.join(d.path for d in downloads)
        relative = posixpath.normpath(f"{self.files_prefix}/{downloads[0].path}")
        self.link(col, "external:" + relative, shown)

    def thumbnail(self, col: int, downloads: Sequence[DownloadRecord]) -> bool:
        """A small image of the first downloaded picture, in the cell; False when there is none to show."""
        for d in downloads:
            path = self.data.files_dir / d.path
            if not d.path.lower().endswith(_IMAGE_SUFFIXES) or not path.is_file():
                continue
            size = image_size(path)
            if size is None:
                continue
            scale = THUMB_PX / max(size[0], size[1], 1)
            options: dict[str, Any] = {"x_scale": scale, "y_scale": scale, "object_position": 1}
            self.sheet.insert_image(self.row, col, str(path), options)
            return True
        return False


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF, BMP or JPEG from its header; None for anything else or a broken file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(26)
            if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
                w, h = struct.unpack(">II", head[16:24])
                return int(w), int(h)
            if head[:6] in (b"GIF87a", b"GIF89a"):
                w, h = struct.unpack("<HH", head[6:10])
                return int(w), int(h)
            if head.startswith(b"BM") and len(head) >= 26:
                w, h = struct.unpack("<ii", head[18:26])
                return abs(int(w)), abs(int(h))
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(path)
    except (OSError, struct.error):
        return None
    return None


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    data = path.read_bytes()
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: height, then width
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None


def _step_cells(sheet: _Sheet, col: int, rec: RunRecord | None) -> None:
    if rec is None:
        return
    sheet.text(col, STATE_LABELS.get(rec.state, rec.state.value))
    values = [output_text(o.value) for o in rec.outputs if o.value is not None]
    shown = MULTI_SEPARATOR.join(values)
    first_url = next((v for v in values if is_web_url(v)), None)
    if first_url is not None:
        sheet.link(col + 1, first_url, shown)
    else:
        sheet.text(col + 1, shown)
    sheet.file_link(col + 2, rec.downloads)
    sheet.text(col + 3, rec.remote_id or "")
    credits = run_credits(rec)
    if credits is not None:
        sheet.sheet.write_number(sheet.row, col + 4, credits)
    verdict = verdict_of(sheet.data, rec)
    sheet.text(col + 5, verdict.verdict if verdict is not None else "")
    sheet.text(col + 6, error_text(rec))


def write_xlsx(data: ReportInput, out: Path, *, max_links: int = MAX_LINKS) -> None:
    """Write the results workbook to `out` (atomically), with a thumbnail column per step when
    `data.thumbnails`; at most `max_links` real hyperlinks (Excel's own limit), HYPERLINK() formulas after
    them. ConfigError naming the extra without XlsxWriter."""
    require_writer()
    import xlsxwriter

    with atomic_path(Path(out), suffix=".tmp.xlsx") as tmp:
        book = xlsxwriter.Workbook(
            str(tmp),
            {
                "constant_memory": True,
                "strings_to_numbers": False,
                "strings_to_formulas": False,
                "strings_to_urls": False,
            },
        )
        try:
            _fill(book, data, Path(out), thumbnails=data.thumbnails, max_links=max_links)
        finally:
            book.close()


def _fill(book: Workbook, data: ReportInput, out: Path, *, thumbnails: bool, max_links: int) -> None:
    results = book.add_worksheet(RESULTS_SHEET)
    summary = book.add_worksheet(SUMMARY_SHEET)
    sheet = _Sheet(book, results, data, out, max_links)
    steps = list(data.step_ids)
    width = len(STEP_COLUMNS) + (1 if thumbnails else 0)
    counts: dict[str, Counter[RunState]] = {s: Counter() for s in steps}
    credits: dict[str, float] = dict.fromkeys(steps, 0.0)
    credited: set[str] = set()
    row_columns: list[str] | None = None
    axes_columns: list[str] = []
    columns = 0
    for runs in iter_items(data.records):
        first = runs[0]
        if row_columns is None:
            # The header comes from the first row; rows of one matrix share their columns.
            row_columns, axes_columns = list(first.row), list(first.axes)
            columns = _write_header(sheet, row_columns, axes_columns, steps, thumbnails=thumbnails)
        sheet.row += 1
        by_step = latest_per_step(runs)
        if thumbnails and any(r.downloads for r in by_step.values()):
            results.set_row(sheet.row, _THUMB_ROW_PT)
        for col, name in enumerate(row_columns):
            sheet.text(col, first.row.get(name, ""))
        base = len(row_columns)
        for col, name in enumerate(axes_columns):
            sheet.text(base + col, first.axes.get(name, ""))
        base += len(axes_columns)
        for i, step in enumerate(steps):
            rec = by_step.get(step)
            col = base + i * width
            _step_cells(sheet, col, rec)
            if rec is None:
                continue
            counts[step][rec.state] += 1
            cost = run_credits(rec)
            if cost is not None:
                credits[step] += cost
                credited.add(step)
            if thumbnails:
                sheet.thumbnail(col + len(STEP_COLUMNS), rec.downloads)
    if row_columns is None:
        columns = _write_header(sheet, [], [], steps, thumbnails=thumbnails)
    results.freeze_panes(1, 0)
    results.autofilter(0, 0, sheet.row, max(columns - 1, 0))
    _write_summary(book, summary, steps, counts, {s: credits[s] for s in credited})


def _write_header(
    sheet: _Sheet, row_columns: Sequence[str], axes_columns: Sequence[str], steps: Sequence[str], *, thumbnails: bool
) -> int:
    names = [*row_columns, *axes_columns]
    for step in steps:
        names += [f"{step}.{f}" for f in STEP_COLUMNS]
        if thumbnails:
            names.append(f"{step}.thumbnail")
    for col, name in enumerate(names):
        sheet.sheet.write_string(0, col, name, sheet.bold)
    if thumbnails:
        base = len(row_columns) + len(axes_columns)
        for i in range(len(steps)):
            col = base + i * (len(STEP_COLUMNS) + 1) + len(STEP_COLUMNS)
            sheet.sheet.set_column(col, col, THUMB_PX / 7 + 1)
    return len(names)


def _write_summary(
    book: Workbook,
    sheet: Worksheet,
    steps: Sequence[str],
    counts: dict[str, Counter[RunState]],
    credits: dict[str, float],
) -> None:
    """Per step: runs, then one column per state (in the reports' order), then the credits where known."""
    bold = book.add_format({"bold": True})
    names = ["step", "runs", *(STATE_LABELS[s] for s in STATE_ORDER), "credits"]
    for col, name in enumerate(names):
        sheet.write_string(0, col, name, bold)
    for row, step in enumerate(steps, start=1):
        c = counts[step]
        sheet.write_string(row, 0, step)
        sheet.write_number(row, 1, sum(c.values()))
        for col, state in enumerate(STATE_ORDER, start=2):
            sheet.write_number(row, col, c.get(state, 0))
        if step in credits:
            sheet.write_number(row, len(names) - 1, credits[step])
    total = len(steps) + 1
    sheet.write_string(total, 0, "total", bold)
    for col in range(1, len(names)):
        if col == len(names) - 1 and not credits:
            continue
        letter = column_letter(col)
        value: float
        if col == 1:
            value = sum(sum(c.values()) for c in counts.values())
        elif col == len(names) - 1:
            value = sum(credits.values())
        else:
            value = sum(c.get(STATE_ORDER[col - 2], 0) for c in counts.values())
        # a formula (with its value cached) so the total follows an edit in the sheet
        sheet.write_formula(total, col, f"=SUM({letter}2:{letter}{total})", bold, value)
    sheet.freeze_panes(1, 1)
