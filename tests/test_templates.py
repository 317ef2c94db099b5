"""Tests for lamina_batch.templates: sandbox, StrictUndefined messages, caps, slug, fast path, download paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina_batch import templates
from lamina_batch.errors import TemplateError
from lamina_batch.models import (
    DownloadSpec,
    MatrixItem,
    MatrixSpec,
    Pipeline,
    PlannedRun,
    RunOutput,
    RunSettings,
    Step,
)


def _render(source: str, **context: object) -> str:
    return templates.render(templates.compile_template(source), context)


def test_slug_filter() -> None:
    """slug lowercases, drops accents and joins words with '-' (`1:1` -> `1-1`)."""
    assert templates.slug("1:1") == "1-1"
    assert templates.slug("  Crème Brûlée / Large ") == "creme-brulee-large"
    assert _render("{{ x | slug }}", x="16:9") == "16-9"


def test_missing_column_names_the_column_and_suggests() -> None:
    """A missing row column says which, suggests the closest and lists the columns."""
    row = templates.row_context({"sku": "A1", "name": "Mug"})
    with pytest.raises(TemplateError) as info:
        _render("{{ row.nme }}", row=row)
    text = str(info.value)
    assert "no column 'nme'" in text
    assert "did you mean 'name'?" in text
    assert "columns: sku, name" in text


def test_column_named_like_a_dict_method_wins() -> None:
    """A column called `items` or `keys` means the column, not the dict method."""
    row = templates.row_context({"items": "3", "keys": "k"})
    assert _render("{{ row.items }}/{{ row['keys'] }}", row=row) == "3/k"


def test_fast_and_jinja_paths_agree() -> None:
    """Simple lookup templates (fast path) render exactly as full Jinja templates do."""
    row = templates.row_context({"name": "Mug", "n": "2"})
    simple = templates.compile_template("A {{ row.name }} x{{ row['n'] }}!")
    assert simple.parts is not None
    full = templates.compile_template("A {{ row.name | string }} x{{ row['n'] }}!")
    assert full.parts is None
    assert templates.render(simple, {"row": row}) == templates.render(full, {"row": row}) == "A Mug x2!"


def test_fast_path_is_strict_about_undefined() -> None:
    """The fast path raises for unknown names as StrictUndefined would."""
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        _render("{{ nope }}")


def test_syntax_error_is_template_error() -> None:
    """A template that does not parse raises TemplateError naming the syntax problem."""
    with pytest.raises(TemplateError, match="template syntax error"):
        templates.compile_template("{{ row.name }")


def test_template_size_cap() -> None:
    """Templates above the size cap are refused before parsing."""
    with pytest.raises(TemplateError, match="limit is"):
        templates.compile_template("x" * (templates.MAX_TEMPLATE_CHARS + 1))


def test_rendered_size_cap() -> None:
    """A render that grows past the output cap stops with TemplateError."""
    with pytest.raises(TemplateError, match="longer than"):
        _render("{% for i in range(20000) %}0123456789{% endfor %}")


def test_repetition_and_power_are_capped() -> None:
    """`'a' * huge` and `2 ** huge` are refused instead of allocating."""
    with pytest.raises(TemplateError, match="not allowed"):
        _render("{{ 'a' * 1000000000 }}")
    with pytest.raises(TemplateError, match="not allowed"):
        _render("{{ 2 ** 100000000 }}")


def test_sandbox_blocks_internals() -> None:
    """Dunder access is refused by the sandbox, and lists cannot be mutated."""
    with pytest.raises(TemplateError):
        _render("{{ ''.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        _render("{% set x = [1] %}{{ x.append(2) }}")


def test_autoescape_is_off() -> None:
    """Values are not HTML-escaped: inputs are sent to an API, not put in a page."""
    assert _render("{{ v }}", v="<b>&</b>") == "<b>&</b>"


def test_expression_fast_path_matches_jinja() -> None:
    """`where`-style expressions evaluate the same on the fast path and through Jinja."""
    row = templates.row_context({"status": "active", "qty": "3"})
    fast = templates.compile_expression("row.status == 'active' and not row.qty == '0'")
    slow = templates.compile_expression("row.status | lower == 'active' and not row.qty == '0'")
    assert fast.tree is not None
    assert slow.tree is None
    ctx = {"row": row, "row_number": 1}
    assert templates.evaluate(fast, ctx) is True
    assert templates.evaluate(slow, ctx) is True
    with pytest.raises(TemplateError, match="no column 'stat'"):
        templates.evaluate(templates.compile_expression("row.stat == 'x'"), ctx)


def test_referenced_finds_attribute_and_subscript_uses() -> None:
    """Static analysis lists `steps.X` and `steps['Y']` uses of a name."""
    used = templates.referenced("{{ steps.hero.output }} {{ steps['b'].outputs[0].value }} {{ row.x }}", "steps")
    assert used == {"hero", "b"}


def test_plan_time_placeholder_outputs_allow_any_index() -> None:
    """At plan time steps.X.outputs[i] yields a placeholder derived from the upstream identity."""
    ns = templates.Namespace("upstream step", hero=templates.placeholder_step("abc", None))
    assert _render("{{ steps.hero.output }}", steps=ns) == "<lamina-batch:upstream:abc>"
    assert _render("{{ steps.hero.outputs[2].value }}", steps=ns) == "<lamina-batch:upstream:abc:2>"


def _pipeline(tmp_path: Path, path: str) -> tuple[Pipeline, PlannedRun]:
    step = Step(id="hero", app="app_7Hk2", inputs={})
    pipeline = Pipeline(
        path=tmp_path / "p.yaml",
        name="p",
        api="runs",
        matrix=MatrixSpec(rows=({"sku": "A1"},)),
        steps=(step,),
        run=RunSettings(),
        manifest=tmp_path / "p.lamina.sqlite",
        download=DownloadSpec(path=path, base_dir=tmp_path),
    )
    item = MatrixItem(row_number=4, row={"sku": "A 1"}, axes={"aspect": "16:9"}, key="A 1", item_id="x")
    run = PlannedRun(identity="i", step_id="hero", app_id="app_7Hk2", item=item, inputs={}, output_labels=None)
    return pipeline, run


def test_render_download_path_context(tmp_path: Path) -> None:
    """download.path sees row, row_number, axes, steps, step and output (label, index, ext, type)."""
    pipeline, run = _pipeline(
        tmp_path,
        "out/{{ row.sku | slug }}/{{ row_number }}-{{ step.id }}-{{ step.app }}-{{ axes.aspect | slug }}"
        "-{{ output.label | slug }}-{{ output.index }}-{{ output.type }}-{{ steps.up.output }}{{ output.ext }}",
    )
    out = RunOutput(id="o1", label="Hero Image", type="image", value="https://x/y.png", status="completed")
    up = RunOutput(id="u", label="U", type="text", value="up", status="completed")
    path = templates.render_download_path(pipeline, run, out, 1, ".png", {"up": [up]})
    assert path == "out/a-1/4-hero-app_7Hk2-16-9-hero-image-1-image-up.png"


def test_render_download_path_error_names_row(tmp_path: Path) -> None:
    """A download path that fails to render names download.path, the row and the step."""
    pipeline, run = _pipeline(tmp_path, "{{ row.missing }}")
    out = RunOutput(id="o1", label="Hero Image", type="image", value="u", status="completed")
    with pytest.raises(TemplateError) as info:
        templates.render_download_path(pipeline, run, out, 0, ".png", {})
    assert "download.path (row 4, step 'hero')" in str(info.value)
    assert "no column 'missing'" in str(info.value)


def test_render_download_path_takes_the_attempt(tmp_path: Path) -> None:
    """`{{ attempt }}` in download.path lets a redo write beside the earlier attempt's file."""
    pipeline, run = _pipeline(tmp_path, "out/{{ row.sku | slug }}-{{ attempt }}{{ output.ext }}")
    out = RunOutput(id="o1", label="Hero Image", type="image", value="u", status="completed")
    assert templates.render_download_path(pipeline, run, out, 0, ".png", {}) == "out/a-1-1.png"
    assert templates.render_download_path(pipeline, run, out, 0, ".png", {}, attempt=2) == "out/a-1-2.png"
