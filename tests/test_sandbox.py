"""Tests for lamina_batch.sandbox: hostile templates stop fast with one clear line, ordinary ones render as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina_batch import sandbox, templates
from lamina_batch.errors import SpecError, TemplateError
from lamina_batch.spec import parse_pipeline_text


def _render(source: str, **context: object) -> str:
    return templates.render(templates.compile_template(source), context)


def _refused(source: str, match: str, **context: object) -> str:
    """Render `source`, expect a TemplateError matching `match`, return its one line."""
    with pytest.raises(TemplateError, match=match) as info:
        _render(source, **context)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_nested_range_loops_stop_at_the_step_cap() -> None:
    """Nested `range(100000)` loops (10^10 iterations) stop at the loop-iteration cap instead of spinning."""
    text = _refused(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "template does too much"
    )
    assert f"more than {sandbox.MAX_STEPS} loop iterations" in text


def test_exponential_macros_stop_at_the_call_or_output_cap() -> None:
    """A macro calling itself twice per level (2^40 calls) stops at the budget, with or without output."""
    _refused(
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "template does too much",
    )
    _refused(
        "{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}{{ " + "d(" * 24 + "'x'" + ")" * 24 + " }}",
        "writes more than",
    )


@pytest.mark.parametrize(
    "source",
    [
        "{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ 1 }}",
        "{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}{% endfor %}{{ 1 }}",
        "{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set x %}{{ ns.x }}{{ ns.x }}{% endset %}"
        "{% set ns.x = x %}{% endfor %}{{ 1 }}",
        "{% set ns = namespace(x=[1]) %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}{% endfor %}{{ 1 }}",
        "{% set ns = namespace(x=10 ** 900) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    ],
)
def test_values_doubling_in_a_loop_stop_at_the_value_cap(source: str) -> None:
    """Strings, lists and ints that double on every iteration are refused long before they reach gigabytes."""
    _refused(source, "not allowed in a template|template does too much")


@pytest.mark.parametrize(
    "source",
    [
        "{{ '{:>3000000000}'.format('a') }}",
        "{{ '{:>{}}'.format('a', 3000000000) }}",
        "{{ '{:.999999999f}'.format(1.5) }}",
        "{{ '{x:>3000000000}'.format_map({'x': 'a'}) }}",
        "{{ '%999999999s' % 'a' }}",
        "{{ '%.999999999f' % 1.5 }}",
        "{{ '%*s' % (999999999, 'a') }}",
        "{{ '%(a)999999999s' % {'a': 'x'} }}",
        "{{ '%999999999s' | format('a') }}",
        "{{ 'a'.ljust(999999999) }}",
        "{{ 'a'.center(999999999) }}",
        "{{ 'a'.zfill(999999999) }}",
        "{{ ('\t' * 1000).expandtabs(999999) }}",
        "{{ ('x' * 100000).replace('x', 'y' * 100000) }}",
        "{{ ('x' * 100000) | replace('x', 'y' * 100000) }}",
        "{{ ('y' * 100000).join(range(100000) | map('string') | list) }}",
        "{{ ('y' * 100000).join(range(100000) | map('string')) }}",
        "{{ range(100000) | join('y' * 100000) }}",
        "{{ ('a ' * 50000) | wordwrap(1, wrapstring='y' * 100000) }}",
        "{{ range(3) | batch(999999999, 'x') | list }}",
        "{{ range(3) | slice(999999999) | list }}",
    ],
)
def test_format_widths_and_growing_operations_are_capped(source: str) -> None:
    """Format widths and size-multiplying string operations are refused before they allocate."""
    _refused(source, "not allowed in a template")


def test_lipsum_is_not_offered() -> None:
    """Jinja's `lipsum` global (megabytes of filler from one call) is not in the sandbox."""
    _refused("{{ lipsum(n=1000000) }}", "'lipsum' is undefined")


def test_2000_nested_parentheses_are_one_clear_line() -> None:
    """A template or expression nested past Python's recursion limit is a TemplateError, not a RecursionError."""
    deep = "(" * 2000 + "1" + ")" * 2000
    for compile_ in (
        lambda: templates.compile_template("{{ " + deep + " }}"),
        lambda: templates.compile_expression(deep),
    ):
        with pytest.raises(TemplateError, match="too deeply") as info:
            compile_()
        assert "\n" not in str(info.value)
    with pytest.raises(TemplateError, match="too deeply"):
        templates.referenced("{{ " + deep + " }}", "row")


def test_deep_nesting_in_a_pipeline_names_the_line(tmp_path: Path) -> None:
    """In a pipeline, the deep template is one problem naming its file, line and input."""
    deep = "(" * 2000 + "row.a" + ")" * 2000
    head = "version: 1\nmatrix: {rows: [{a: b}]}\nsteps:\n  - id: s\n    app: x\n    inputs:\n"
    text = head + f'      P: "{{{{ {deep} }}}}"\n'
    with pytest.raises(SpecError) as info:
        parse_pipeline_text(text, tmp_path / "p.yaml")
    (problem,) = info.value.problems
    assert problem.line == 7
    assert "too deeply" in problem.message


def test_ordinary_templates_render_as_before() -> None:
    """Loops (with else, filters, loop vars), macros, set blocks, formats and joins within the caps still work."""
    row = templates.row_context({"tags": "a,b,c", "name": "Mug", "price": "3.5"})
    source = (
        "{% macro tag(t) %}#{{ t | upper }}{% endmacro %}"
        "{% for t in row.tags.split(',') if t != 'b' %}{{ loop.index }}{{ tag(t) }}{% else %}none{% endfor %}"
        "{% set label %}{{ row.name }}!{% endset %} {{ label }} {{ '{:>6}'.format(row.name) }} {{ '%5.2f' % 3.14159 }}"
        " {{ ['x', 'y'] | join('-') }} {{ row.name ~ '/' ~ row.price }} {{ 'ab'.replace('a', 'A') }}"
        " {% for k, v in {'k': 'v'}.items() %}{{ k }}={{ v }}{% endfor %} {{ '%s' | format('f') }}"
    )
    assert _render(source, row=row) == "1#A2#C Mug!    Mug  3.14 x-y Mug/3.5 Ab k=v f"


def test_a_loop_of_a_hundred_thousand_is_within_the_cap() -> None:
    """The step cap leaves room for one full `range(100000)` loop (Jinja's own range limit)."""
    assert _render("{% for i in range(100000) %}{% endfor %}done") == "done"


def test_budgets_are_per_render() -> None:
    """Each render starts with a fresh budget: many renders of a busy template never add up."""
    compiled = templates.compile_template("{% for i in range(60000) %}{% endfor %}ok")
    for _ in range(3):
        assert templates.render(compiled, {}) == "ok"
