"""Tests for lamina_batch.matrix: rows, key, where, axes, run identity, shards, render_inputs, validate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina_batch.errors import ConfigError, MatrixError, TemplateError
from lamina_batch.matrix import (
    MAX_PROBLEMS,
    InputDigest,
    Selection,
    Tally,
    expand_runs,
    iter_items,
    parse_shard,
    render_inputs,
    render_vary,
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


# --------------------------------------------------------------------------- identities pinned across versions

PINNED_CSV = 'sku,name,colour\nA1,Mug,red\nA2,"Bowl, large","dark\r\nblue"\nA3,Plate,green\n'
PINNED_KEYED = """\
version: 1
matrix:
  csv: p.csv
  key: sku
  axes: {aspect: ["1:1", "16:9"]}
steps:
  - id: hero
    app: app_7Hk2
    inputs: {Prompt: "Photo of {{ row.name }} in {{ row.colour }}", Seed: 7, Aspect: "{{ axes.aspect }}"}
  - id: banner
    app: app_9Qx1
    needs: [hero]
    outputs: [Banner]
    inputs: {Product Image: "{{ steps.hero.output }}", Headline: "{{ row.name | upper }}"}
"""
PINNED_UNKEYED = """\
version: 1
matrix:
  rows: [{name: Mug, n: 1}, {name: Mug, n: 1}, {name: Jug, n: 2.5, ok: true}]
steps:
  - id: hero
    app: app_7Hk2
    inputs: {Prompt: "Photo of {{ row.name }}"}
  - id: banner
    app: app_9Qx1
    needs: [hero]
    inputs: {Product Image: "{{ steps.hero.outputs[0].value }}", N: "{{ row.n }}"}
"""


def _pins(pipeline: Pipeline) -> list[tuple[int, str, tuple[str, ...]]]:
    return [(p.item.row_number, p.item.item_id, tuple(r.identity for r in p.runs)) for p in expand_runs(pipeline)]


def test_identities_of_existing_pipelines_never_change(tmp_path: Path) -> None:
    """Identities computed by the released planner (main at c107db4) for a keyed CSV with axes and for
    unkeyed inline rows with duplicates: a change here would rerun (and pay for) every existing batch."""
    (tmp_path / "p.csv").write_text(PINNED_CSV, encoding="utf-8", newline="")
    assert _pins(parse_pipeline_text(PINNED_KEYED, tmp_path / "keyed.yaml")) == [
        (
            1,
            "5f8ac42d7e31b5029d7694806678e040",
            ("65ff70c31b6212ff0230d3dec94ac396", "a0fc0bf95f3532b9d8f218aaa919338b"),
        ),
        (
            1,
            "5f543c683a068badefdd822369b4dcf8",
            ("d1436cfb6bce50b0cac71da8ec28c6c8", "dd75c48ef4ca401c697f06026ae581e1"),
        ),
        (
            2,
            "cdb6620396b18c06a393083f748134a5",
            ("cca2a21ef37cf080c22174e986b6659d", "65d4e0804186a03f3a0b0fc2db3ddc53"),
        ),
        (
            2,
            "f227d3e355597856c900c8176d6abf7e",
            ("4d3ac75b5a0601efcfccae5dea5170b3", "fefad2efdabea6e39b5a5224634b8e16"),
        ),
        (
            3,
            "5a8ca82c983c717868f70d3d29dd7d54",
            ("d253eefc193149ad809850b9d2817e73", "5dfc23687f0ab010200ae68df789a6b1"),
        ),
        (
            3,
            "d0a264fb42f9283e2b88a6175900912c",
            ("94957dfacfb5f0fdd953ad9f131e5850", "419e41aacc4e1f3d2e39ea4e0c0927c1"),
        ),
    ]
    assert _pins(parse_pipeline_text(PINNED_UNKEYED, tmp_path / "unkeyed.yaml")) == [
        (
            1,
            "5f778262573386807f2aa29a5976c5e3",
            ("734db7ceee89e7988f8a46e13de23929", "0835fd12b2ed1b5679e74276bc525c7c"),
        ),
        (
            2,
            "44f259b3417edddc5fa22c1f4b17363d",
            ("a1e2f7ff8fc4c7a6aebb511a7fd95934", "aa6a3c0853ae39e0a1d3cea271f0e947"),
        ),
        (
            3,
            "7f5b2662f1626e39aaeec30017b333b4",
            ("44ec964415a38cb8127b6166e6d1da29", "8ce8797b557adbda337705c193dd1983"),
        ),
    ]


# --------------------------------------------------------------------------- key, where, fill_down


def test_key_is_unique_among_the_rows_where_keeps(tmp_path: Path) -> None:
    """Duplicates in rows that `where` drops are fine: uniqueness is checked after `where`."""
    rows = [("A1", "Mug", "red"), ("A1", "", "red"), ("A2", "Bowl", "blue"), ("A2", "", "blue")]
    p = _pipeline(tmp_path, _csv(rows), where="row.name != ''")
    assert [(i.row_number, i.key) for i in iter_items(p)] == [(1, "A1"), (3, "A2")]
    assert validate_pipeline(p).items == 2


def test_an_empty_key_only_matters_in_kept_rows(tmp_path: Path) -> None:
    """A dropped row may have no key; a kept row without one is exit 2 naming the row."""
    rows = [("A1", "Mug", "red"), ("", "draft", "red"), ("", "Bowl", "blue")]
    p = _pipeline(tmp_path, _csv(rows), where="row.name != 'draft'")
    with pytest.raises(MatrixError) as info:
        validate_pipeline(p)
    (problem,) = info.value.problems
    assert (problem.line, problem.message) == (4, "row 3: empty key column 'sku'")
    assert "drop rows without one with where" in str(problem.hint)


def test_continuation_rows_are_explained(tmp_path: Path) -> None:
    """Duplicate keys on rows whose other cells are mostly empty (Shopify variants) suggest where or fill_down."""
    (tmp_path / "p.csv").write_text("Handle,Title,Vendor,Type,Size,Price\nshirt,Shirt,Acme,Tee,S,9\nshirt,,,,M,9\n")
    text = (
        TWO_STEPS.format(key="key: Handle", where="").replace("row.colour", "row.Size").replace("row.name", "row.Title")
    )
    with pytest.raises(MatrixError) as info:
        validate_pipeline(parse_pipeline_text(text, tmp_path / "p.yaml"))
    (problem,) = info.value.problems
    assert problem.message == "duplicate key 'shirt' in rows 1 and 2"
    assert "row 2 looks like a continuation of row 1 (2 of 5 other cells filled)" in str(problem.hint)
    assert "where: \"row.Title != ''\"" in str(problem.hint)
    assert "fill_down: [Title, Vendor, Type]" in str(problem.hint)


def test_plain_duplicates_do_not_claim_continuation(tmp_path: Path) -> None:
    """Two full rows with one key are just duplicates: no continuation advice."""
    rows = [("A1", "Mug", "red"), ("A1", "Cup", "blue")]
    with pytest.raises(MatrixError) as info:
        validate_pipeline(_pipeline(tmp_path, _csv(rows)))
    assert "continuation" not in str(info.value)


def test_identity_follows_filled_values(tmp_path: Path) -> None:
    """With fill_down, a variant row plans exactly as if its product's values were written on it."""
    filled = "sku,name,colour\nA1,Mug,red\nA2,Mug,red\n"
    sparse = "sku,name,colour\nA1,Mug,red\nA2,,\n"
    text = TWO_STEPS.format(key="key: sku", where="")
    (tmp_path / "p.csv").write_text(filled)
    want = [r.identity for ip in expand_runs(parse_pipeline_text(text, tmp_path / "p.yaml")) for r in ip.runs]
    (tmp_path / "p.csv").write_text(sparse)
    with_fill = text.replace("  key: sku\n", "  key: sku\n  fill_down: [name, colour]\n")
    got = [r.identity for ip in expand_runs(parse_pipeline_text(with_fill, tmp_path / "p.yaml")) for r in ip.runs]
    assert got == want


def test_fill_down_on_inline_rows(tmp_path: Path) -> None:
    """fill_down works on inline rows too (a row without the column counts as empty)."""
    p = _inline(
        tmp_path,
        "matrix:\n  rows: [{h: a, t: Shirt}, {h: b}, {h: c, t: ''}]\n  fill_down: [t]\n"
        "steps: [{id: s, app: a, inputs: {P: '{{ row.t }}'}}]\n",
    )
    assert [ip.runs[0].inputs["P"] for ip in expand_runs(p)] == ["Shirt", "Shirt", "Shirt"]


def test_template_errors_point_at_the_input_line(tmp_path: Path) -> None:
    """A missing column is reported at the line of the input that uses it, not the step's first line."""
    with pytest.raises(TemplateError) as info:
        validate_pipeline(_pipeline(tmp_path, "sku,name\nA1,Mug\n"))
    (problem,) = info.value.problems
    assert problem.line == 10  # the Prompt: line, inside the step that starts at line 7


def test_download_path_errors_carry_their_line(tmp_path: Path) -> None:
    """download.path problems name the line of `path:`."""
    text = TWO_STEPS.format(key="key: sku", where="") + 'download:\n  path: "out/{{ row.size }}.png"\n'
    (tmp_path / "p.csv").write_text(_csv(ROWS))
    with pytest.raises(TemplateError) as info:
        validate_pipeline(parse_pipeline_text(text, tmp_path / "p.yaml"))
    problem = info.value.problems[0]
    assert (problem.line, problem.path) == (19, "download.path")
    assert problem.message.startswith("row 1: step 'hero': no column 'size'")


def test_attempt_is_one_at_plan_time_and_renders_on_redo(tmp_path: Path) -> None:
    """`attempt` is 1 in planned inputs (identity never includes it); render_inputs and render_vary take it."""
    text = (
        "version: 1\nmatrix: {rows: [{n: a}]}\nsteps:\n  - id: s\n    app: x\n"
        "    inputs: {P: '{{ row.n }}-{{ attempt }}', Seed: 1}\nreview:\n  vary: {Seed: '{{ attempt * 7 }}'}\n"
    )
    p = parse_pipeline_text(text, tmp_path / "p.yaml")
    (plan,) = list(expand_runs(p))
    (run,) = plan.runs
    assert run.inputs == {"P": "a-1", "Seed": 1}
    assert render_inputs(p, run, {}, attempt=3) == {"P": "a-3", "Seed": 1}
    assert render_vary(p, run, {}, attempt=1) == {}
    assert render_vary(p, run, {}, attempt=2) == {"Seed": "14"}
    assert render_vary(p, run, {}, attempt=2, overrides={"Seed": "{{ 5 }}", "Style": "x"}) == {
        "Seed": "5",
        "Style": "x",
    }
    with pytest.raises(TemplateError, match=r"--redo-set: row 1: no column 'zz'"):
        render_vary(p, run, {}, attempt=2, overrides={"Style": "{{ row.zz }}"})


# --------------------------------------------------------------------------- subsets


def _all_runs(p: Pipeline, **kw: object) -> dict[int, list[str]]:
    return {ip.item.row_number: [r.identity for r in ip.runs] for ip in expand_runs(p, **kw)}


@pytest.mark.parametrize("keyed", [True, False])
def test_a_subset_has_the_full_batchs_identities(tmp_path: Path, keyed: bool) -> None:
    """--rows and --limit pick items without changing a single identity (duplicates without a key included)."""
    rows = [(f"S{i}" if keyed else "", "Mug" if i % 3 else "Jug", "red") for i in range(1, 13)]
    p = _pipeline(tmp_path, _csv(rows), key="sku" if keyed else None, where="row_number != 4")
    full = _all_runs(p)
    picked = _all_runs(p, selection=Selection.parse(rows="1-5,9"))
    assert set(picked) == {1, 2, 3, 5, 9}
    assert all(picked[n] == full[n] for n in picked)
    limited = _all_runs(p, selection=Selection.parse(limit=3))
    assert set(limited) == {1, 2, 3}
    both = _all_runs(p, selection=Selection.parse(rows="3-12", limit=2))
    assert set(both) == {3, 5}
    assert all(both[n] == full[n] for n in both)


def test_subset_counts_say_how_many_of_how_many(tmp_path: Path) -> None:
    """Tally and ValidationSummary count the whole batch and the subset ("5 of 11 items")."""
    rows = [(f"S{i}", "Mug", "red") for i in range(1, 13)]
    p = _pipeline(tmp_path, _csv(rows), where="row_number != 4")
    tally = Tally()
    assert len(list(iter_items(p, selection=Selection.parse(limit=5), tally=tally))) == 5
    assert (tally.rows, tally.items, tally.selected_items) == (12, 11, 5)
    summary = validate_pipeline(p, selection=Selection.parse(rows="1-5"))
    assert (summary.rows, summary.items, summary.runs, summary.selected_items, summary.selected_runs) == (
        12,
        11,
        22,
        4,
        8,
    )
    tally = Tally()
    plans = list(expand_runs(p, selection=Selection.parse(rows="1-2"), tally=tally))
    assert (len(plans), tally.items, tally.selected_items, tally.runs, tally.selected_runs) == (2, 11, 2, 22, 4)


def test_a_subset_digest_holds_only_its_runs(tmp_path: Path) -> None:
    """The preflight digest built by validate with a selection counts only the selected runs."""
    p = _pipeline(tmp_path, _csv(ROWS))
    digest = InputDigest()
    validate_pipeline(p, digest=digest, selection=Selection.parse(rows="2"))
    assert digest.totals == {"hero": 1, "banner": 1}


def test_selection_parsing() -> None:
    """`1-5,42` parses to ranges; junk, zero and backwards ranges are ConfigErrors naming --rows."""
    assert Selection.parse(rows="1-5, 42,7").rows == ((1, 5), (7, 7), (42, 42))
    assert Selection.parse(rows="3", limit=2).describe() == "rows 3 and the first 2 items"
    for bad in ("", "a", "0", "5-3", "1-", "1,,2"):
        with pytest.raises(ConfigError, match="--rows"):
            Selection.parse(rows=bad)
    with pytest.raises(ConfigError, match="--limit"):
        Selection.parse(limit=-1)


# --------------------------------------------------------------------------- catalogue exports

CATALOGUES = Path(__file__).parent / "fixtures" / "catalogues"


def _catalogue(tmp_path: Path, csv_name: str, matrix: str, inputs: str) -> Pipeline:
    shutil.copy(CATALOGUES / csv_name, tmp_path / csv_name)
    head = f"version: 1\nmatrix:\n  csv: {csv_name}\n{matrix}"
    text = f"{head}steps:\n  - id: hero\n    app: app_7Hk2\n    inputs:\n{inputs}"
    return parse_pipeline_text(text, tmp_path / "p.yaml")


def test_shopify_one_hero_per_product(tmp_path: Path) -> None:
    """Shopify's layout with `key: Handle` and `where: Title != ''`: one item per product, inches and barcodes kept."""
    p = _catalogue(
        tmp_path,
        "shopify_products.csv",
        "  key: Handle\n  where: \"row.Title != ''\"\n",
        '      Prompt: "{{ row.Title }} by {{ row.Vendor }}"\n      Image: "{{ row[\'Image Src\'] }}"\n',
    )
    plans = list(expand_runs(p))
    assert [(ip.item.key, ip.runs[0].inputs["Prompt"]) for ip in plans] == [
        ("example-t-shirt", "Example T-Shirt by Acme"),
        ("mountain-poster", 'Mountain Poster 9" x 12" by Paper Co'),
    ]
    assert plans[0].item.row["Variant Barcode"] == "'3212483"
    assert len(plans[0].item.row) == 45


def test_shopify_one_image_per_variant(tmp_path: Path) -> None:
    """fill_down carries Title and Vendor to variant rows; each variant is keyed by its own SKU."""
    p = _catalogue(
        tmp_path,
        "shopify_products.csv",
        "  key: Variant SKU\n  fill_down: [Title, Vendor]\n",
        "      Prompt: \"{{ row.Title }}, size {{ row['Option1 Value'] }}, by {{ row.Vendor }}\"\n",
    )
    assert [ip.runs[0].inputs["Prompt"] for ip in expand_runs(p)] == [
        "Example T-Shirt, size Small, by Acme",
        "Example T-Shirt, size Medium, by Acme",
        "Example T-Shirt, size Large, by Acme",
        'Mountain Poster 9" x 12", size 9" x 12", by Paper Co',
        'Mountain Poster 9" x 12", size 18" x 24", by Paper Co',
    ]


def test_shopify_key_handle_without_where_says_continuation(tmp_path: Path) -> None:
    """The new user's first try (key: Handle alone) is refused with the continuation-row advice."""
    p = _catalogue(tmp_path, "shopify_products.csv", "  key: Handle\n", '      Prompt: "{{ row.Title }}"\n')
    with pytest.raises(MatrixError, match=r"looks like a continuation of row 1") as info:
        validate_pipeline(p)
    assert "where: \"row.Title != ''\"" in str(info.value)


def test_woocommerce_first_image_in_the_sandbox(tmp_path: Path) -> None:
    """A template takes the first of the comma-separated `Images` URLs; quoted multi-line descriptions read whole."""
    p = _catalogue(
        tmp_path,
        "woocommerce_products.csv",
        "  key: SKU\n  where: \"row.Type != 'variation'\"\n",
        "      Image: \"{{ (row.Images.split(',') | first | trim) if row.Images else '' }}\"\n"
        "      Prompt: \"{{ row.Name }}: {{ row.Description | replace('\\n', ' ') }}\"\n",
    )
    got = [(ip.item.key, ip.runs[0].inputs["Image"], ip.runs[0].inputs["Prompt"]) for ip in expand_runs(p)]
    up = "https://shop.example.com/wp-content/uploads/2024/05"
    assert got == [
        ("woo-beanie", f"{up}/beanie-2.jpg", "Beanie: Knitted, one size. Hand wash."),
        ("woo-hoodie", f"{up}/hoodie-2.jpg", "Hoodie: Cotton blend."),
        ("woo-cap", f"{up}/cap-2.jpg", "Cap: "),
    ]


def test_bom_semicolon_export(tmp_path: Path) -> None:
    """A European export (UTF-8 BOM, `;`, decimal commas) reads with `delimiter: ";"`."""
    p = _catalogue(
        tmp_path,
        "bom_semicolon.csv",
        '  key: sku\n  delimiter: ";"\n',
        '      Prompt: "{{ row.name }} {{ row.price }}"\n',
    )
    assert [ip.runs[0].inputs["Prompt"] for ip in expand_runs(p)] == ["Crème brûlée dish 12,50", "Bol; grand 8"]
