"""Tests for lamina_batch.rows: bounded, strict CSV reading with messages at file:line, delimiters, fill_down."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lamina_batch.errors import ConfigError, MatrixError
from lamina_batch.matrix import iter_items, validate_pipeline
from lamina_batch.models import Pipeline
from lamina_batch.rows import MAX_LINE_BYTES, MAX_RECORD_BYTES, column_letter, read_table
from lamina_batch.spec import parse_pipeline_text


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages show paths relative to the working directory: work in the test's folder."""
    monkeypatch.chdir(tmp_path)


def _pipeline(tmp_path: Path, csv_bytes: bytes, *, matrix: str = "", prompt: str = "{{ row.name }}") -> Pipeline:
    (tmp_path / "p.csv").write_bytes(csv_bytes)
    text = (
        f"version: 1\nmatrix:\n  csv: p.csv\n{matrix}steps:\n  - id: s\n    app: a\n"
        f"    inputs:\n      P: {json.dumps(prompt)}\n"
    )
    return parse_pipeline_text(text, tmp_path / "p.yaml")


def _problems(pipeline: Pipeline) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_pipeline(pipeline)
    with pytest.raises(ConfigError) as streamed:  # run/plan stream the rows: they stop at the same problem
        list(iter_items(pipeline))
    assert str(streamed.value).splitlines()[0] in str(info.value).splitlines()
    return str(info.value).splitlines()


def _thousand_rows(open_at: int) -> bytes:
    rows = [f"K{i},Item {i}" for i in range(1, 1001)]
    rows[open_at - 1] = f'K{open_at},"Item {open_at}'
    return ("sku,name\n" + "\n".join(rows) + "\n").encode()


@pytest.mark.parametrize("open_at", [5, 500, 998])
def test_an_unterminated_quote_is_named_where_it_starts(tmp_path: Path, open_at: int) -> None:
    """`K4,"Item 4` with no closing quote: exit 2 at the line where the quote opened, never 'valid: N rows'."""
    lines = _problems(_pipeline(tmp_path, _thousand_rows(open_at)))
    assert lines[0].startswith(f"p.csv:{open_at + 1}: unterminated quoted field starting here")


def test_a_quote_left_open_past_the_field_limit_says_so(tmp_path: Path) -> None:
    """An open quote that swallows more than the csv field limit is reported at its start, not at the limit."""
    body = "".join(f"K{i},{'x' * 200}\n" for i in range(1000))
    lines = _problems(_pipeline(tmp_path, b'sku,name\nK0,"open\n' + body.encode()))
    assert lines[0].startswith("p.csv:2: a field starting here is longer than")
    assert "is a quote left open?" in lines[0]


def test_text_after_a_closing_quote_is_an_error(tmp_path: Path) -> None:
    """`"abc"def` is malformed: refused at its line instead of silently read as `abcdef`."""
    lines = _problems(_pipeline(tmp_path, b'sku,name\nA1,Mug\nA2,"Bowl"x\n'))
    assert lines[0].startswith("p.csv:3: text after the closing quote of a quoted field")


def test_quoted_inches_read_as_a_person_writes_them(tmp_path: Path) -> None:
    """Shopify's quoted inches (9"" x 12"") are one field; a quote inside an unquoted field stays as it is."""
    p = _pipeline(tmp_path, b'sku,name\nA1,"Print 9"" x 12"""\nA2,5" tall\n')
    assert [i.row["name"] for i in iter_items(p)] == ['Print 9" x 12"', '5" tall']


def test_dev_zero_fails_at_line_one(tmp_path: Path) -> None:
    """matrix.csv pointing at /dev/zero reads one capped line and stops: no growing without bound."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")
    text = "version: 1\nmatrix: {csv: /dev/zero}\nsteps: [{id: s, app: a}]\n"
    lines = _problems(parse_pipeline_text(text, tmp_path / "p.yaml"))
    assert lines[0].startswith("/dev/zero:1: contains a NUL byte")


def test_a_line_longer_than_the_cap_is_named(tmp_path: Path) -> None:
    """A line with no newline is read only up to the cap, then refused naming its line number."""
    data = b"sku,name\nA1,Mug\nA2," + b"x" * (MAX_LINE_BYTES + 10)
    lines = _problems(_pipeline(tmp_path, data))
    assert lines[0].startswith("p.csv:3: line is longer than 1 MiB")


def test_a_record_longer_than_the_cap_is_named(tmp_path: Path) -> None:
    """Many quoted multi-line fields, each under the field limit, still stop at the record cap."""
    field = '"' + "a" * 60_000 + '\n"'
    row = ",".join([field] * (MAX_RECORD_BYTES // 60_000 + 2))
    header = ",".join(f"c{i}" for i in range(MAX_RECORD_BYTES // 60_000 + 2))
    lines = _problems(_pipeline(tmp_path, (header + "\nx\n" + row + "\n").encode(), prompt="x"))
    assert any(line.startswith("p.csv:3: a record starting here is longer than 8 MiB") for line in lines)


def test_cr_only_line_endings_fail_at_line_one(tmp_path: Path) -> None:
    """A classic-Mac file (CR only) is refused at line 1, before the whole file is read as one line."""
    data = b"sku,name\r" + b"".join(b"A%d,Mug\r" % i for i in range(200_000))
    lines = _problems(_pipeline(tmp_path, data))
    assert (
        lines[0]
        == "p.csv:1: the file uses CR-only line endings (classic Mac OS) (save it with LF or CRLF line endings)"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00binary", "p.csv:1: this is a zip file, not a UTF-8 CSV file (use matrix.xlsx)"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "p.csv:1: this is a legacy Office file, not a UTF-8 CSV file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "p.csv:1: not valid UTF-8 (byte 0x89 at column 1)"),
        (b"sku,name\nA1,\xff\xfe\x00\x00", "p.csv:2: contains a NUL byte: this is not a text CSV file"),
        ("sku,name\n".encode("utf-16"), "p.csv:1: this is UTF-16 text, not a UTF-8 CSV file (save it as CSV UTF-8)"),
    ],
)
def test_binary_files_fail_at_their_first_bad_line(tmp_path: Path, data: bytes, message: str) -> None:
    """A workbook, an image or UTF-16 picked by mistake is one line naming what it is and where."""
    assert _problems(_pipeline(tmp_path, data))[0].startswith(message)


@pytest.mark.parametrize(
    ("data", "looks", "hint"),
    [
        (b"sku;name;price\nA1;Mug;1,50\n", "semicolon", 'matrix.delimiter: ";"'),
        (b"\xef\xbb\xbfsku\tname\tprice\nA1\tMug\t2\n", "tab", 'matrix.delimiter: "\\t"'),
        (b"sku|name|price\nA1|Mug|2\n", "pipe", 'matrix.delimiter: "|"'),
    ],
)
def test_another_delimiter_is_detected_from_the_header(tmp_path: Path, data: bytes, looks: str, hint: str) -> None:
    """A `;`-, tab- or `|`-separated file read as CSV says which delimiter it looks like and how to set it."""
    (line,) = _problems(_pipeline(tmp_path, data))
    assert line.startswith(f"p.csv:1: the header looks {looks}-separated, not comma-separated")
    assert hint in line


def test_matrix_delimiter_reads_a_bom_semicolon_file(tmp_path: Path) -> None:
    """With `delimiter: ";"` a UTF-8 BOM + `;` file (a European Excel export) reads as it should."""
    data = '\ufeffsku;name;price\nA1;Mug;1,50\nA2;"Bowl; large";2\n'.encode()
    p = _pipeline(tmp_path, data, matrix='  delimiter: ";"\n  key: sku\n')
    assert [i.row for i in iter_items(p)] == [
        {"sku": "A1", "name": "Mug", "price": "1,50"},
        {"sku": "A2", "name": "Bowl; large", "price": "2"},
    ]


def test_a_set_delimiter_that_does_not_split_the_header_says_which_would(tmp_path: Path) -> None:
    """`delimiter: ";"` on a comma file: the one-column header is recognised as comma-separated."""
    (line,) = _problems(_pipeline(tmp_path, b"sku,name\nA1,Mug\n", matrix='  delimiter: ";"\n'))
    assert "looks comma-separated, not semicolon-separated" in line


def test_a_header_without_rows_is_a_warning(tmp_path: Path) -> None:
    """A CSV with a header and no data rows validates with a warning (run refuses it; validate shows it)."""
    summary = validate_pipeline(_pipeline(tmp_path, b"sku,name\n\n"))
    assert (summary.rows, summary.items) == (0, 0)
    (warning,) = summary.warnings
    assert str(warning) == "p.yaml: matrix: p.csv has a header but no data rows: nothing to run"


def test_a_where_keeping_nothing_is_a_warning_naming_its_line(tmp_path: Path) -> None:
    """`where` that drops every row is a warning at the line of `where:`."""
    p = _pipeline(tmp_path, b"sku,name\nA1,Mug\nA2,Bowl\n", matrix="  where: \"row.name == 'Jug'\"\n")
    summary = validate_pipeline(p)
    (warning,) = summary.warnings
    assert (warning.line, warning.path) == (4, "matrix.where")
    assert warning.message == "where keeps none of the 2 rows: nothing to run"
    assert (
        validate_pipeline(
            _pipeline(tmp_path, b"sku,name\nA1,Jug\n", matrix="  where: \"row.name == 'Jug'\"\n")
        ).warnings
        == ()
    )


def test_fill_down_carries_values_to_empty_cells(tmp_path: Path) -> None:
    """fill_down fills blank (or whitespace) cells of the listed columns from the nearest value above."""
    data = b"Handle,Title,Vendor,Size\nshirt,Shirt,Acme,S\nshirt,,,M\nshirt, ,,L\nmug,Mug,,\nmug,,Pots,\n"
    p = _pipeline(tmp_path, data, matrix="  fill_down: [Title, Vendor]\n")
    rows = [(i.row["Title"], i.row["Vendor"], i.row["Size"]) for i in iter_items(p)]
    assert rows == [
        ("Shirt", "Acme", "S"),
        ("Shirt", "Acme", "M"),
        ("Shirt", "Acme", "L"),
        ("Mug", "Acme", ""),
        ("Mug", "Pots", ""),
    ]


def test_fill_down_of_an_unknown_column_suggests_one(tmp_path: Path) -> None:
    """A fill_down name that is not a column is exit 2 at the pipeline line, with did-you-mean."""
    (line,) = _problems(_pipeline(tmp_path, b"Handle,Title\nh,T\n", matrix="  fill_down: [Titel]\n"))
    assert line == "p.yaml:4: matrix.fill_down: fill_down: no column 'Titel' (did you mean 'Title'?)"


def test_read_table_gives_header_and_rows(tmp_path: Path) -> None:
    """read_table (for init) reads the header and the first rows with the matrix's own rules."""
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbfsku,Image Src\nA1,https://x/a.png\nA2,\nA3,https://x/c.png\n")
    assert read_table(tmp_path / "t.csv", limit=2) == (
        ["sku", "Image Src"],
        [{"sku": "A1", "Image Src": "https://x/a.png"}, {"sku": "A2", "Image Src": ""}],
    )
    assert read_table(tmp_path / "t.csv", limit=0) == (["sku", "Image Src"], [])
    (tmp_path / "bad.csv").write_bytes(b"a;b;c\n1;2;3\n")
    with pytest.raises(MatrixError, match="semicolon-separated"):
        read_table(tmp_path / "bad.csv")


def test_column_letters() -> None:
    """Column indexes become spreadsheet letters."""
    assert [column_letter(i) for i in (0, 25, 26, 51, 52, 701, 702)] == ["A", "Z", "AA", "AZ", "BA", "ZZ", "AAA"]


def test_a_half_read_stream_releases_its_file(tmp_path: Path) -> None:
    """Stopping after the first item closes the CSV (no descriptor leaks over many plans)."""
    p = _pipeline(tmp_path, b"sku,name\n" + b"".join(b"A%d,Mug\n" % i for i in range(100)))
    before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else None
    for _ in range(50):
        it = iter_items(p)
        next(it)
        it.close()
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) <= before + 1
