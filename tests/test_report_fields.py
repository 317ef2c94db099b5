"""Tests for lamina_batch.reports.fields: a card's title, shown columns and the rest, and which columns a
pipeline's templates use."""

from __future__ import annotations

from pathlib import Path

from lamina_batch.reports.fields import MAX_SHOWN, row_view, template_columns
from lamina_batch.spec import parse_pipeline_text

ROW = {"Handle": "tee-1", "Title": "Tee", "Vendor": "Acme", "Body (HTML)": "<p>soft</p>", "Price": "25", "Empty": ""}


def test_title_is_the_key_else_the_first_used_column_else_the_row_number() -> None:
    """Key value first; without a key, the first template column with a value; else `row N`."""
    assert row_view(ROW, row_number=3, key="tee-1", key_column="Handle").title == "tee-1"
    by_column = row_view(ROW, row_number=3, key=None, template_columns=("Empty", "Title", "Vendor"))
    assert (by_column.title, by_column.title_column) == ("Tee", "Title")
    assert row_view(ROW, row_number=3, key=None).title == "row 3"


def test_shown_are_the_template_columns_and_the_rest_is_everything_else() -> None:
    """Template columns are shown (the title's own column is not repeated); every other column is the rest."""
    view = row_view(ROW, row_number=1, key="tee-1", key_column="Handle", template_columns=("Title", "Price", "Handle"))
    assert view.shown == (("Title", "Tee"), ("Price", "25"))
    assert [k for k, _ in view.rest] == ["Vendor", "Body (HTML)", "Empty"]


def test_report_columns_pick_what_is_shown_in_their_order() -> None:
    """`report.columns` wins over the template columns, in its own order; names not in the row are ignored."""
    view = row_view(ROW, row_number=1, key=None, columns=("Price", "Vendor", "Nope"), template_columns=("Title",))
    assert view.title == "Tee"
    assert view.shown == (("Price", "25"), ("Vendor", "Acme"))
    assert ("Title", "Tee") not in view.rest  # it is the title


def test_without_any_named_column_the_first_few_are_shown_and_too_many_spill_over() -> None:
    """No template or report columns: the first four; more than MAX_SHOWN listed: the extra go to the rest."""
    assert len(row_view(ROW, row_number=1, key=None).shown) == 4
    wide = {f"c{i}": str(i) for i in range(20)}
    view = row_view(wide, row_number=1, key="k", columns=tuple(wide))
    assert len(view.shown) == MAX_SHOWN
    assert len(view.rest) == 20 - MAX_SHOWN


def test_template_columns_in_order_of_first_use(tmp_path: Path) -> None:
    """Inputs in step order (attribute and subscript lookups), then the download path; `where` is not counted."""
    text = """
version: 1
name: t
matrix:
  rows: [{Handle: a, Title: b, Vendor: c, "Image Src": d, status: e}]
  where: "row.status == 'e'"
steps:
  - id: hero
    app: app_1
    inputs:
      Prompt: "{{ row.Title }} by {{ row['Vendor'] }} {{ row.Title }}"
      Seed: 4
      Image: "{{ row['Image Src'] }}"
  - id: banner
    app: app_2
    needs: [hero]
    inputs:
      Product Image: "{{ steps.hero.output }}"
      Headline: "{{ row.Vendor | upper }}"
download:
  path: "out/{{ row.Handle }}/{{ step.id }}{{ output.ext }}"
"""
    pipeline = parse_pipeline_text(text, tmp_path / "p.yaml", display="p.yaml")
    assert template_columns(pipeline) == ("Title", "Vendor", "Image Src", "Handle")
