"""Tests for lamina_batch.workbook: cells as a person sees them, sheets and header rows, errors by sheet and cell,
and a workbook row planning exactly like the same row in a CSV."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import xlsxwriter

from lamina_batch.errors import ConfigError
from lamina_batch.matrix import expand_runs, iter_items, validate_pipeline
from lamina_batch.models import Pipeline
from lamina_batch.rows import read_table
from lamina_batch.spec import parse_pipeline_text
from lamina_batch.workbook import cell_text

CATALOGUES = Path(__file__).parent / "fixtures" / "catalogues"

# The rows of the fixture workbook as the conversion rules read them: what a CSV written by those rules holds.
EXPECTED = [
    {
        "sku": "00123",
        "name": "Mug",
        "price": "12.5",
        "released": "2024-01-02",
        "in_stock": "TRUE",
        "total": "25",
        "sum": "0.3",
        "share": "0.25",
        "at": "2024-01-02 10:30:00",
        "barcode": "3212483",
        "Price": "1",
        "Price 2": "2",
        "notes": "line one\nline two",
    },
    {
        "sku": "A2",
        "name": "Bowl",
        "price": "8",
        "released": "",
        "in_stock": "FALSE",
        "total": "ab",
        "sum": "-0.1",
        "share": "",
        "at": "09:15:00",
        "barcode": "1234567890123",
        "Price": "",
        "Price 2": "",
        "notes": "",
    },
]


def write_products(path: Path) -> Path:
    """A workbook as people keep them: a title row, a merged header, dates, leading zeros, formulas with cached
    values, a percent format, an empty row in the middle, trailing formatted-but-empty cells, a second sheet."""
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet("Products")
    date = book.add_format({"num_format": "dd/mm/yyyy"})
    stamp = book.add_format({"num_format": "yyyy-mm-dd hh:mm"})
    clock = book.add_format({"num_format": "hh:mm"})
    pct = book.add_format({"num_format": "0%"})
    bold = book.add_format({"bold": True})
    sheet.write("A1", "Catalogue export", bold)
    names = ["sku", "name", "price", "released", "in_stock", "total", "sum", "share", "at", "barcode"]
    sheet.write_row("A3", names)
    sheet.merge_range("K3:L3", "Price")  # one header over two columns: K is "Price", L "Price 2"
    sheet.merge_range("M2:M3", "notes")  # merged vertically: its value sits on the row above the header
    sheet.write_string("A4", "00123")
    sheet.write("B4", "Mug")
    sheet.write_number("C4", 12.5)
    sheet.write_datetime("D4", dt.datetime(2024, 1, 2), date)
    sheet.write_boolean("E4", True)
    sheet.write_formula("F4", "=C4*2", None, 25)
    sheet.write_formula("G4", "=0.1+0.2", None, 0.30000000000000004)
    sheet.write_number("H4", 0.25, pct)
    sheet.write_datetime("I4", dt.datetime(2024, 1, 2, 10, 30), stamp)
    sheet.write_number("J4", 3212483)
    sheet.write_number("K4", 1)
    sheet.write_number("L4", 2)
    sheet.write_string("M4", "line one\nline two")
    # row 5 is empty: skipped like a blank CSV line, not counted as a data row
    sheet.write_string("A6", "A2")
    sheet.write("B6", "Bowl")
    sheet.write_number("C6", 8.0)
    sheet.write_boolean("E6", False)
    sheet.write_formula("F6", '="a"&"b"', None, "ab")
    sheet.write_number("G6", -0.1)
    sheet.write_datetime("I6", dt.datetime(1899, 12, 31, 9, 15), clock)
    sheet.write_number("J6", 1234567890123)
    sheet.write_blank("P40", None, bold)  # formatting far away: no data, no column
    book.add_worksheet("Notes").write("A1", "not the products")
    book.close()
    return path


def _pipeline(tmp_path: Path, matrix: str, prompt: str = "{{ row.name }} {{ row.released }}") -> Pipeline:
    text = (
        f"version: 1\nmatrix:\n{matrix}steps:\n  - id: hero\n    app: a\n"
        f"    inputs:\n      Prompt: {json.dumps(prompt)}\n"
    )
    return parse_pipeline_text(text, tmp_path / "p.yaml")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages show paths relative to the working directory: work in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("", ""),
        ("007", "007"),
        (42.0, "42"),
        (-0.0, "0"),
        (12.5, "12.5"),
        (0.30000000000000004, "0.3"),
        (1e20, "100000000000000000000"),
        (3212483, "3212483"),
        (True, "TRUE"),
        (False, "FALSE"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.datetime(2024, 1, 2), "2024-01-02"),
        (dt.datetime(2024, 1, 2, 10, 30, 5, 123), "2024-01-02 10:30:05"),
        (dt.time(9, 15), "09:15:00"),
        (dt.timedelta(hours=26, minutes=3), "26:03:00"),
    ],
)
def test_cell_text_rules(value: Any, text: str) -> None:
    """Each kind of cell becomes the text a person sees (without number formats)."""
    assert cell_text(value) == text


def test_xlsx_rows_as_a_person_sees_them(tmp_path: Path) -> None:
    """Title row skipped with header_row, merged header named, empty rows and far formatting ignored."""
    write_products(tmp_path / "products.xlsx")
    p = _pipeline(tmp_path, "  xlsx: products.xlsx\n  header_row: 3\n")
    items = list(iter_items(p))
    assert [i.row for i in items] == EXPECTED
    assert [i.row_number for i in items] == [1, 2]


def test_default_header_is_the_first_non_empty_row(tmp_path: Path) -> None:
    """Without header_row, the first non-empty row is the header (here the title row: one column)."""
    write_products(tmp_path / "products.xlsx")
    assert read_table(tmp_path / "products.xlsx", limit=0)[0] == ["Catalogue export"]


def test_sheet_by_name_and_index(tmp_path: Path) -> None:
    """`sheet` picks by name or 1-based index; the default is the first sheet."""
    write_products(tmp_path / "products.xlsx")
    for sheet in ("Notes", 2):
        p = _pipeline(tmp_path, f"  xlsx: products.xlsx\n  sheet: {sheet}\n", prompt="x")
        assert validate_pipeline(p).rows == 0


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (
            "  xlsx: products.xlsx\n  sheet: Prodcts\n",
            "products.xlsx: matrix.sheet: no sheet 'Prodcts' (did you mean 'Products'?; sheets: 'Products', 'Notes')",
        ),
        (
            "  xlsx: products.xlsx\n  sheet: 3\n",
            "products.xlsx: matrix.sheet: there is no sheet 3: the workbook has 2 (sheets: 'Products', 'Notes')",
        ),
        ("  xlsx: products.xlsx\n  header_row: 30\n", "products.xlsx: matrix.xlsx: sheet 'Products' has no header row"),
        ("  xlsx: missing.xlsx\n", "missing.xlsx: matrix.xlsx: workbook not found"),
        (
            "  xlsx: products.xlsx\n  header_row: 3\n  key: SKU\n",
            "p.yaml:5: matrix.key: no column 'SKU' for matrix.key",
        ),
    ],
)
def test_sheet_errors_are_one_line(tmp_path: Path, matrix: str, message: str) -> None:
    """A wrong sheet lists the sheets; a missing header row, file or column says so."""
    write_products(tmp_path / "products.xlsx")
    with pytest.raises(ConfigError) as info:
        validate_pipeline(_pipeline(tmp_path, matrix))
    assert str(info.value).splitlines()[0].startswith(message)


def _book(path: Path, rows: list[list[Any]]) -> Path:
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet("Sheet1")
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            if v is not None:
                sheet.write(r, c, v)
    book.close()
    return path


def test_errors_name_the_sheet_and_cell(tmp_path: Path) -> None:
    """Duplicate keys, empty keys, values without a header and template errors name `book.xlsx:Sheet1!C4`."""
    rows = [
        ["sku", "name", None, "size"],
        ["A1", "Mug", None, "S"],
        ["A1", "Cup", None, "M"],
        [None, "Jug"],
        ["A4", "x", "stray"],
    ]
    _book(tmp_path / "products.xlsx", rows)
    p = _pipeline(tmp_path, "  xlsx: products.xlsx\n  key: sku\n", prompt="{{ row.colour }}")
    with pytest.raises(ConfigError) as info:
        validate_pipeline(p)
    text = str(info.value)
    assert "products.xlsx:Sheet1!A3: column 'sku': duplicate key 'A1' in rows 1 and 2" in text
    assert "products.xlsx:Sheet1!A4: row 3: empty key column 'sku'" in text
    assert "products.xlsx:Sheet1!C5: a value in a column with no header: 'stray'" in text
    assert "row 1 (products.xlsx:Sheet1!2:2): no column 'colour'" in text


def test_a_duplicate_header_names_both_columns(tmp_path: Path) -> None:
    """Two columns with one name: the header cell of the second is named."""
    _book(tmp_path / "products.xlsx", [["sku", "name", "sku"], ["A1", "Mug", "x"]])
    with pytest.raises(ConfigError, match=r"products\.xlsx:Sheet1!C1: duplicate column 'sku' \(columns A and C\)"):
        validate_pipeline(_pipeline(tmp_path, "  xlsx: products.xlsx\n"))


def _write_csv_by_the_rules(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("keyed", [True, False])
def test_a_workbook_row_plans_like_the_same_row_in_a_csv(tmp_path: Path, keyed: bool) -> None:
    """Inputs and identities from the workbook equal those from a CSV written by the conversion rules."""
    write_products(tmp_path / "products.xlsx")
    _write_csv_by_the_rules(tmp_path / "products.csv", EXPECTED)
    key = "  key: sku\n" if keyed else ""
    prompt = "{{ row.name }} {{ row.released }} {{ row.price }} {{ row['Price 2'] }} {{ row.notes }} {{ row.at }}"
    from_book = _pipeline(tmp_path, f"  xlsx: products.xlsx\n  header_row: 3\n{key}", prompt)
    from_csv = _pipeline(tmp_path, f"  csv: products.csv\n{key}", prompt)

    def plan(p: Pipeline) -> list[tuple[str, str, dict[str, Any]]]:
        return [(ip.item.item_id, r.identity, dict(r.inputs)) for ip in expand_runs(p) for r in ip.runs]

    assert plan(from_book) == plan(from_csv)
    assert plan(from_book)[0][2] == {"Prompt": "Mug 2024-01-02 12.5 2 line one\nline two 2024-01-02 10:30:00"}


@pytest.mark.parametrize("name", ["products.xls", "products.ods"])
def test_legacy_xls_and_ods_read_by_the_same_rules(tmp_path: Path, name: str) -> None:
    """The committed .xls and .ods read like the xlsx: ints without .0, dates ISO, booleans TRUE/FALSE."""
    shutil.copy(CATALOGUES / name, tmp_path / name)
    p = _pipeline(tmp_path, f"  xlsx: {name}\n  key: sku\n")
    assert [i.row for i in iter_items(p)] == [
        {
            "sku": "00123",
            "name": "Mug",
            "price": "12.5",
            "released": "2024-01-02",
            "in_stock": "TRUE",
            "barcode": "3212483",
        },
        {
            "sku": "A2",
            "name": "Bowl",
            "price": "8",
            "released": "2023-12-31",
            "in_stock": "FALSE",
            "barcode": "4000000",
        },
    ]


def test_xlsm_is_read_too(tmp_path: Path) -> None:
    """A macro-enabled workbook (.xlsm) is an xlsx underneath and reads the same."""
    write_products(tmp_path / "products.xlsm")
    assert [i.row for i in iter_items(_pipeline(tmp_path, "  xlsx: products.xlsm\n  header_row: 3\n"))] == EXPECTED


def test_fill_down_applies_to_workbooks(tmp_path: Path) -> None:
    """fill_down carries a product's title to its variant rows in a sheet too."""
    _book(tmp_path / "p.xlsx", [["Handle", "Title", "Size"], ["shirt", "Shirt", "S"], ["shirt", None, "M"]])
    p = _pipeline(tmp_path, "  xlsx: p.xlsx\n  fill_down: [Title]\n", prompt="{{ row.Title }} {{ row.Size }}")
    assert [r.inputs["Prompt"] for ip in expand_runs(p) for r in ip.runs] == ["Shirt S", "Shirt M"]


def test_a_csv_given_as_xlsx_is_refused_at_load(tmp_path: Path) -> None:
    """`xlsx: products.csv` is caught when the pipeline loads, pointing at matrix.csv."""
    with pytest.raises(ConfigError, match=r"a workbook must be \.xlsx, \.xlsm, \.xls or \.ods.*use matrix\.csv"):
        _pipeline(tmp_path, "  xlsx: products.csv\n")


def test_without_the_extra_the_error_names_it(tmp_path: Path) -> None:
    """With python-calamine missing, reading a workbook is exit 2 naming `lamina-batch[excel]`."""
    write_products(tmp_path / "products.xlsx")
    (tmp_path / "p.yaml").write_text("version: 1\nmatrix: {xlsx: products.xlsx}\nsteps: [{id: s, app: a}]\n")
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'python_calamine':\n"
        "            raise ImportError('blocked for this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from lamina_batch.cli import main\n"
        "sys.exit(main(['validate', 'p.yaml']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert (
        'reading a workbook needs the excel extra (install the extra: pip install "lamina-batch[excel]")' in proc.stderr
    )
    assert "Traceback" not in proc.stderr
