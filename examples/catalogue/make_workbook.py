"""Makes products.xlsx, the workbook twin of products.csv, as a catalogue team would keep it: a title row above
the header, the SKU column stored as text, an article number with leading zeros, a launch date, a price, an
in-stock flag, a formula, and a second sheet of notes. Run it from anywhere (needs xlsxwriter, which the test
extra installs):

    python examples/catalogue/make_workbook.py
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import xlsxwriter

HERE = Path(__file__).parent


def main() -> None:
    with (HERE / "products.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    book = xlsxwriter.Workbook(str(HERE / "products.xlsx"))
    sheet = book.add_worksheet("Products")
    bold = book.add_format({"bold": True})
    date = book.add_format({"num_format": "dd/mm/yyyy"})
    money = book.add_format({"num_format": "#,##0.00 [$€-x-euro2]"})
    sheet.write_string(0, 0, "Spring catalogue (export of the product sheet)", bold)
    columns = [*rows[0].keys(), "article", "launch", "price", "in_stock", "price_incl_vat"]
    sheet.write_row(1, 0, columns, bold)  # the header is row 2: `header_row: 2` in pipeline-workbook.yaml
    for i, row in enumerate(rows):
        r = i + 2
        for c, value in enumerate(row.values()):
            sheet.write_string(r, c, value)  # text stays text: SKUs are not numbers
        base = len(row)
        sheet.write_string(r, base, f"{i * 37 + 120:06d}")  # leading zeros a person typed as text
        sheet.write_datetime(r, base + 1, dt.datetime(2025, 3, 1) + dt.timedelta(days=7 * (i % 6)), date)
        price = 12.5 + 3 * i
        sheet.write_number(r, base + 2, price, money)
        sheet.write_boolean(r, base + 3, i % 4 != 3)
        cell = xlsxwriter.utility.xl_rowcol_to_cell(r, base + 2)
        sheet.write_formula(r, base + 4, f"=ROUND({cell}*1.2,2)", money, round(price * 1.2, 2))
    sheet.freeze_panes(2, 1)
    book.add_worksheet("Notes").write_string(0, 0, "Prices in euro; launch dates are Mondays.")
    book.close()


if __name__ == "__main__":
    main()
