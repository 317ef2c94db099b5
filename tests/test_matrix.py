"""Tests for lamina_batch.matrix: rows, key, where, axes, run identity, shards, render_inputs, validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina_batch.errors import ConfigError, MatrixError, TemplateError
from lamina_batch.matrix import (
    MAX_PROBLEMS,
    expand_runs,
    iter_items,
    parse_shard,
    render_inputs,
    shard_of,
    validate_pipeline,
)
from lamina_batch.models import Pipeline, PlannedRun, RunOutput
from lamina_batch.spec import parse_pipeline_text

TWO_STEPS = """\
version: 1
matrix:
  csv: p.csv
  {key}
  {where}
steps:
  - id: hero
    app: app_7Hk2
    inputs:
      Prompt: "Photo of {{{{ row.name }}}} in {{{{ row.colour }}}}"
      Seed: 7
  - id: banner
    app: app_9Qx1
    needs: [hero]
    inputs:
      Product Image: "{{{{ steps.hero.output }}}}"
      Headline: "{{{{ row.name }}}}"
"""


def _pipeline(tmp_path: Path, csv_text: str, *, key: str | None = "sku", where: str | None = None) -> Pipeline:
    (tmp_path / "p.csv").write_text(csv_text, encoding="utf-8", newline="")
    text = TWO_STEPS.format(key=f"key: {key}" if key else "", where=f"where: {json.dumps(where)}" if where else "")
    return parse_pipeline_text(text, tmp_path / "p.yaml")


def _inline(tmp_path: Path, body: str) -> Pipeline:
    return parse_pipeline_text("version: 1\n" + body, tmp_path / "p.yaml")


def _identities(pipeline: Pipeline) -> dict[tuple[str, str], str]:
    """(row name, step id) -> identity."""
    return {(plan.item.row["name"], run.step_id): run.identity for plan in expand_runs(pipeline) for run in plan.runs}


def _csv(rows: list[tuple[str, str, str]]) -> str:
    return "sku,name,colour\n" + "".join(f"{s},{n},{c}\n" for s, n, c in rows)


ROWS = [("A1", "Mug", "red"), ("A2", "Bowl", "blue"), ("A3", "Plate", "green")]


def test_csv_bom_quotes_and_embedded_newlines(tmp_path: Path) -> None:
    """UTF-8 with BOM, quoted commas and line breaks inside fields are read as one row each."""
    text = '\ufeffsku,name,colour\nA1,"Mug, large","dark\nred"\n\nA2,Bowl,blue\n'
    items = list(iter_items(_pipeline(tmp_path, text)))
    assert [i.row for i in items] == [
        {"sku": "A1", "name": "Mug, large", "colour": "dark\nred"},
        {"sku": "A2", "name": "Bowl", "colour": "blue"},
    ]
    assert [i.row_number for i in items] == [1, 2]
    assert [i.key for i in items] == ["A1", "A2"]


def test_where_filters_and_keeps_row_numbers(tmp_path: Path) -> None:
    """`where` skips rows; row_number stays the data row of the CSV."""
    p = _pipeline(tmp_path, _csv(ROWS), where="row.colour != 'blue' and row_number > 0")
    assert [i.row_number for i in iter_items(p)] == [1, 3]


def test_inline_rows_and_axes_cross_product(tmp_path: Path) -> None:
    """Inline rows are stringified and every row runs once per axes combination."""
    p = _inline(
        tmp_path,
        """\
matrix:
  rows: [{n: 1, ok: true}, {n: 2.5, ok: null}]
  axes: {aspect: ["1:1", "16:9"], style: [photo, flat]}
steps: [{id: s, app: a, inputs: {P: "{{ row.n }}-{{ row.ok }}-{{ axes.aspect }}-{{ axes.style }}", L: 3}}]
""",
    )
    plans = list(expand_runs(p))
    got = [plan.runs[0].inputs["P"] for plan in plans]
    assert got == [
        "1-true-1:1-photo",
        "1-true-1:1-flat",
        "1-true-16:9-photo",
        "1-true-16:9-flat",
        "2.5--1:1-photo",
        "2.5--1:1-flat",
        "2.5--16:9-photo",
        "2.5--16:9-flat",
    ]
    assert all(plan.runs[0].inputs["L"] == 3 for plan in plans)  # literals pass through unrendered
    assert len({plan.item.item_id for plan in plans}) == 8


def test_axes_values_that_render_identically_stay_distinct(tmp_path: Path) -> None:
    """Two axes values unused by the inputs still make two runs (the combination is in the identity)."""
    p = _inline(
        tmp_path,
        "matrix: {rows: [{a: x}], axes: {v: ['1', '2']}}\nsteps: [{id: s, app: a, inputs: {P: '{{ row.a }}'}}]\n",
    )
    assert len({plan.runs[0].identity for plan in expand_runs(p)}) == 2


def test_downstream_sees_upstream_placeholder_and_needs(tmp_path: Path) -> None:
    """At plan time steps.hero.output is a placeholder naming hero's identity; `needs` maps it too."""
    (plan, *_) = list(expand_runs(_pipeline(tmp_path, _csv(ROWS))))
    hero, banner = plan.runs
    assert banner.inputs["Product Image"] == f"<lamina-batch:upstream:{hero.identity}>"
    assert banner.needs == {"hero": hero.identity}
    assert hero.needs == {}
    assert hero.inputs == {"Prompt": "Photo of Mug in red", "Seed": 7}


def test_reordering_and_inserting_rows_keeps_identities(tmp_path: Path) -> None:
    """Reordering rows or inserting one changes no existing identity (with a key)."""
    before = _identities(_pipeline(tmp_path, _csv(ROWS)))
    after = _identities(_pipeline(tmp_path, _csv([ROWS[2], ("B9", "Jug", "teal"), ROWS[0], ROWS[1]])))
    assert {k: after[k] for k in before} == before
    assert len(after) == len(before) + 2


def test_editing_a_row_reruns_only_it_and_its_downstream(tmp_path: Path) -> None:
    """A changed row changes its own runs (hero and the banner that uses it), nothing else."""
    before = _identities(_pipeline(tmp_path, _csv(ROWS)))
    after = _identities(_pipeline(tmp_path, _csv([ROWS[0], ("A2", "Bowl", "navy"), ROWS[2]])))
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {("Bowl", "hero"), ("Bowl", "banner")}


def test_editing_a_shared_template_changes_every_run(tmp_path: Path) -> None:
    """Changing a template every row uses gives every run a new identity."""
    p = _pipeline(tmp_path, _csv(ROWS))
    before = set(_identities(p).values())
    text = TWO_STEPS.format(key="key: sku", where="").replace("Photo of", "Studio photo of")
    after = set(_identities(parse_pipeline_text(text, tmp_path / "p.yaml")).values())
    assert before.isdisjoint(after)


def test_identical_rows_without_key_stay_two_runs(tmp_path: Path) -> None:
    """Without a key, two identical rows are two runs (occurrence number), stable under insertion."""
    rows = [("", "Mug", "red"), ("", "Mug", "red")]
    p = _pipeline(tmp_path, _csv(rows), key=None)
    ids = [run.identity for plan in expand_runs(p) for run in plan.runs]
    assert len(set(ids)) == 4
    more = _pipeline(tmp_path, _csv([("", "Jug", "teal"), *rows]), key=None)
    assert set(ids) <= {run.identity for plan in expand_runs(more) for run in plan.runs}


def test_shards_partition_items_with_stable_identities(tmp_path: Path) -> None:
    """Shards split items (all runs of an item together); their union is the unsharded plan."""
    rows = [(f"S{i}", f"N{i}", "red") for i in range(40)]
    p = _pipeline(tmp_path, _csv(rows))
    full = {run.identity for plan in expand_runs(p) for run in plan.runs}
    parts = [{run.identity for plan in expand_runs(p, shard=(i, 3)) for run in plan.runs} for i in (1, 2, 3)]
    assert set().union(*parts) == full
    assert sum(len(x) for x in parts) == len(full)
    assert all(parts)
    for plan in expand_runs(p, shard=(2, 3)):
        assert shard_of(plan.item.item_id, 3) == 2
        assert len(plan.runs) == 2


def test_parse_shard() -> None:
    """--shard I/N parses with 1 <= I <= N, else ConfigError."""
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x", "1/2/3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_render_inputs_uses_real_upstream_outputs(tmp_path: Path) -> None:
    """render_inputs fills steps.X.output / .outputs with the upstream run's real outputs."""
    text = TWO_STEPS.format(key="key: sku", where="").replace(
        'Headline: "{{ row.name }}"', 'Headline: "{{ row.name }} {{ steps.hero.outputs[1].label }}"'
    )
    (tmp_path / "p.csv").write_text(_csv(ROWS), encoding="utf-8")
    p = parse_pipeline_text(text, tmp_path / "p.yaml")
    plan = next(iter(expand_runs(p)))
    hero, banner = plan.runs
    outs = [
        RunOutput(id="o1", label="Hero Image", type="image", value="https://cdn/x.png", status="completed"),
        RunOutput(id="o2", label="Alt", type="image", value="https://cdn/y.png", status="completed"),
    ]
    assert render_inputs(p, banner, {"hero": outs}) == {
        "Product Image": "https://cdn/x.png",
        "Headline": "Mug Alt",
    }
    assert render_inputs(p, hero, {}) == dict(hero.inputs)
    with pytest.raises(TemplateError, match="no upstream step 'hero'"):
        render_inputs(p, banner, {})


def test_validate_summary(tmp_path: Path) -> None:
    """validate_pipeline counts rows read, items after where, steps and runs."""
    p = _pipeline(tmp_path, _csv(ROWS), where="row.colour != 'blue'")
    summary = validate_pipeline(p)
    assert (summary.rows, summary.items, summary.steps, summary.runs) == (3, 2, 2, 4)


def test_missing_column_error_names_row_step_input_and_columns(tmp_path: Path) -> None:
    """A missing column names the row, the step, the input and the available columns."""
    p = _pipeline(tmp_path, "sku,name\nA1,Mug\n")
    with pytest.raises(TemplateError) as info:
        validate_pipeline(p)
    (problem,) = info.value.problems
    assert problem.path == "steps.hero.inputs['Prompt']"
    assert problem.message.startswith("row 1: no column 'colour'")
    assert "columns: sku, name" in problem.message
    with pytest.raises(TemplateError, match="row 1: no column 'colour'"):
        list(expand_runs(p))


def test_duplicate_keys_are_all_listed(tmp_path: Path) -> None:
    """Every duplicated key value is listed with its row numbers."""
    rows = [("A1", "a", "r"), ("A2", "b", "r"), ("A1", "c", "r"), ("A2", "d", "r"), ("A1", "e", "r")]
    with pytest.raises(MatrixError) as info:
        validate_pipeline(_pipeline(tmp_path, _csv(rows)))
    text = str(info.value)
    assert "duplicate key 'A1' in rows 1 and 3" in text
    assert "duplicate key 'A2' in rows 2 and 4" in text
    assert "duplicate key 'A1' in rows 1 and 5" in text


def test_problem_list_is_capped_and_grouped(tmp_path: Path) -> None:
    """Distinct problems are cut to MAX_PROBLEMS plus '... and N more'; one message over many rows is grouped."""
    rows = [(f"S{i}", "n", "r") for i in range(200)]
    ragged = "sku,name,colour\n" + "".join(f"{s},{n}\n" for s, n, _ in rows)
    with pytest.raises(MatrixError) as info:
        validate_pipeline(_pipeline(tmp_path, ragged))
    problems = info.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0].line == 2
    assert problems[-1].message == f"... and {200 - MAX_PROBLEMS} more problems"
    with pytest.raises(TemplateError) as tinfo:
        validate_pipeline(_pipeline(tmp_path, _csv(rows), where="row.size == 'L'"))
    (grouped,) = tinfo.value.problems
    assert (grouped.path, grouped.line) == ("matrix.where", 5)  # where errors carry the line of `where:`
    assert grouped.message.startswith("row 1: no column 'size'")
    assert grouped.message.endswith("(and 199 more rows)")


def test_items_stream_lazily(tmp_path: Path) -> None:
    """Items are yielded as the CSV is read: a bad row late in the file is reached only when iterated to."""
    rows = "".join(f"S{i},N{i},red\n" for i in range(1000))
    p = _pipeline(tmp_path, "sku,name,colour\n" + rows + "BAD\n")
    it = iter_items(p)
    first = [next(it) for _ in range(1000)]
    assert first[-1].row_number == 1000
    with pytest.raises(MatrixError, match="row 1001"):
        next(it)


# --------------------------------------------------------------------------- properties

NAMES = st.text(alphabet="abcdefgh ", min_size=1, max_size=6)
ROW = st.tuples(NAMES, st.sampled_from(["red", "blue"]))


def _write_rows(tmp_path: Path, rows: list[tuple[int, tuple[str, str]]], keyed: bool) -> Pipeline:
    """Rows as (stable number, (name, colour)); keyed rows get sku K<number>, unkeyed an empty sku."""
    body = "".join(f"{f'K{i}' if keyed else ''},{name},{colour}\n" for i, (name, colour) in rows)
    return _pipeline(tmp_path, "sku,name,colour\n" + body, key="sku" if keyed else None)


def _multiset(p: Pipeline) -> list[str]:
    return sorted(run.identity for plan in expand_runs(p) for run in plan.runs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=8), data=st.data(), keyed=st.booleans())
def test_identity_stable_under_reorder_and_insert(
    tmp_path: Path, rows: list[tuple[str, str]], data: st.DataObject, keyed: bool
) -> None:
    """Permuting rows keeps the set of identities; inserting a row only adds identities."""
    numbered = list(enumerate(rows))
    base = _multiset(_write_rows(tmp_path, numbered, keyed))
    shuffled = data.draw(st.permutations(numbered))
    assert _multiset(_write_rows(tmp_path, shuffled, keyed)) == base
    extra = data.draw(ROW)
    at = data.draw(st.integers(min_value=0, max_value=len(numbered)))
    inserted = [*shuffled[:at], (len(rows), extra), *shuffled[at:]]
    after = _multiset(_write_rows(tmp_path, inserted, keyed))
    assert set(base) <= set(after)
    assert len(after) == len(base) + 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=6), data=st.data())
def test_identity_changes_when_a_rendered_input_changes(
    tmp_path: Path, rows: list[tuple[str, str]], data: st.DataObject
) -> None:
    """Changing one row's rendered input changes exactly that row's hero and banner identities."""
    numbered = list(enumerate(rows))
    before = list(expand_runs(_write_rows(tmp_path, numbered, True)))
    i = data.draw(st.integers(min_value=0, max_value=len(rows) - 1))
    name, colour = rows[i]
    edited = [*numbered]
    edited[i] = (i, (name + "x", colour))
    after = list(expand_runs(_write_rows(tmp_path, edited, True)))
    for j, (b, a) in enumerate(zip(before, after, strict=True)):
        for rb, ra in zip(b.runs, a.runs, strict=True):
            assert (rb.identity != ra.identity) == (j == i), (j, rb.step_id)


def test_planned_runs_are_plain_values(tmp_path: Path) -> None:
    """Planned inputs are JSON-serialisable values (the manifest stores them as JSON)."""
    for plan in expand_runs(_pipeline(tmp_path, _csv(ROWS))):
        for run in plan.runs:
            assert isinstance(run, PlannedRun)
            json.dumps(dict(run.inputs))
            assert len(run.identity) == 32
            int(run.identity, 16)
