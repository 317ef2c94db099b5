"""Tests for lamina_batch.spec: YAML safety, schema errors with lines, cross-field checks, parsing, defaults."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina_batch.errors import ConfigError, SpecError
from lamina_batch.models import FailureLimit, Rate
from lamina_batch.spec import (
    load_pipeline,
    load_schema,
    parse_duration,
    parse_failure_limit,
    parse_pipeline_text,
    parse_rate,
)

GOOD = """\
version: 1
matrix:
  rows: [{sku: A1, name: Mug, on: yes, when: 2024-01-02}]
  key: sku
steps:
  - id: banner
    app: app_9Qx1
    needs: [hero]
    outputs: [Banner]
    inputs:
      Product Image: "{{ steps.hero.output }}"
      Count: 3
  - id: hero
    app: app_7Hk2
    concurrency: 2
    inputs:
      Prompt: "Photo of {{ row.name }}"
run:
  concurrency: 4
  rate_limit: 30/s
  poll_interval: 90
  timeout: 2h
  retries: 2
  max_failures: 5
  max_starts: 100
  webhook: {url: "https://example.com/hook"}
download:
  path: "out/{{ row.sku }}{{ output.ext }}"
"""


def _write(tmp_path: Path, text: str, name: str = "cat.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_good_pipeline_with_defaults_and_topological_order(tmp_path: Path) -> None:
    """A valid file becomes a Pipeline: steps in needs order, paths beside the file, name/manifest defaults."""
    p = load_pipeline(_write(tmp_path, GOOD))
    assert [s.id for s in p.steps] == ["hero", "banner"]
    assert p.name == "cat"
    assert p.manifest == tmp_path.resolve() / "cat.lamina.sqlite"
    assert p.download is not None
    assert p.download.base_dir == tmp_path.resolve()
    assert p.api == "runs"
    banner = p.step("banner")
    assert banner.outputs == ("Banner",)
    assert banner.needs == ("hero",)
    assert banner.inputs["Count"] == 3
    assert banner.line == 6
    assert p.step("hero").concurrency == 2
    assert p.run.rate_limit == Rate(30, 1.0)
    assert p.run.poll_interval == 90.0
    assert p.run.timeout == 7200.0
    assert p.run.max_failures == FailureLimit(fraction=None, count=5)
    assert p.run.webhook is not None
    assert p.run.webhook.listen == "127.0.0.1:8787"
    # YAML 1.1 surprises are neutralised: `on` stays a key, dates stay the text written
    assert p.matrix.rows == ({"sku": "A1", "name": "Mug", "on": "true", "when": "2024-01-02"},)


def test_csv_and_manifest_resolve_relative_to_pipeline(tmp_path: Path) -> None:
    """matrix.csv and manifest are relative to the pipeline's folder, not the working directory."""
    text = GOOD.replace("  rows: [{sku: A1, name: Mug, on: yes, when: 2024-01-02}]\n", "  csv: data/p.csv\n")
    p = load_pipeline(_write(tmp_path, text + "manifest: state/m.sqlite\nname: catalogue\n"))
    assert p.matrix.csv == tmp_path.resolve() / "data" / "p.csv"
    assert p.manifest == tmp_path.resolve() / "state" / "m.sqlite"
    assert p.name == "catalogue"


def test_reports_every_problem_with_lines(tmp_path: Path) -> None:
    """All problems are reported at once, each as file:line: path: message, sorted by line."""
    text = """\
version: 1
matrix:
  rows: [{a: b}]
steps:
  - id: hero
    app: app_7Hk2
    inputs:
      Prompt: "{{ row.a }"
    promt: x
run:
  timeout: soon
"""
    with pytest.raises(SpecError) as info:
        load_pipeline(_write(tmp_path, text, "pipeline.yaml"))
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert "pipeline.yaml:8: steps[0].inputs.Prompt: template syntax error" in lines[0]
    assert lines[1].endswith(
        "pipeline.yaml:9: steps[0]: unknown key 'promt' (allowed: id, app, inputs, outputs, needs, concurrency)"
    )
    assert "pipeline.yaml:11: run.timeout: invalid duration 'soon'" in lines[2]


def test_problem_objects_carry_file_line_path(tmp_path: Path) -> None:
    """Problems are structured (file, line, path, message, hint), not just text."""
    with pytest.raises(SpecError) as info:
        load_pipeline(_write(tmp_path, GOOD.replace("  key: sku\n", "  key: sku\n  kye: x\n")))
    (problem,) = info.value.problems
    assert problem.line == 5
    assert problem.path == "matrix"
    assert problem.message == "unknown key 'kye'"
    assert problem.hint == "did you mean 'key'?"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a' (first at line 1)"),
        ("a: &x 1\nb: *x\n", "anchors are not allowed"),
        ("a: !!python/object:os.system x\n", "unsupported YAML type"),
        ("a: !!binary aGVsbG8=\n", "unsupported YAML type"),
        ("<<: {a: 1}\n", "merge keys"),
        ("? [a]\n: 1\n", "mapping keys must be plain text"),
        ("a: [\n", "YAML syntax error"),
        ("just text\n", "top level must be a mapping"),
        ("", "the file is empty"),
    ],
)
def test_unsafe_or_broken_yaml_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """Duplicate keys, anchors, aliases, arbitrary tags, merge keys and syntax errors are SpecErrors."""
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_pipeline_text(text, tmp_path / "p.yaml")


def test_oversized_and_non_utf8_files(tmp_path: Path) -> None:
    """Files above 1 MiB and non-UTF-8 files are refused before parsing; a missing file is a SpecError."""
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(SpecError, match="larger than"):
        load_pipeline(big)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"version: 1\nname: caf\xe9\n")
    with pytest.raises(SpecError, match=r"bad\.yaml:2: not valid UTF-8"):
        load_pipeline(bad)
    with pytest.raises(SpecError, match="not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_needs_checks(tmp_path: Path) -> None:
    """Unknown needs, cycles and steps.X outside the (transitive) needs are reported."""
    text = """\
version: 1
matrix: {rows: [{a: b}]}
steps:
  - {id: a, app: x, needs: [c]}
  - {id: b, app: x, needs: [a], inputs: {P: "{{ steps.a.output }}"}}
  - {id: c, app: x, needs: [b]}
  - {id: d, app: x, needs: [e], inputs: {P: "{{ steps.b.output }}"}}
  - {id: e, app: x, needs: [f]}
  - {id: f, app: x, inputs: {P: "{{ steps.e.output }}"}}
  - {id: g, app: x, needs: [f], inputs: {P: "{{ steps.f.output }}{{ steps.zz.output }}"}}
  - {id: h, app: x, needs: [g], inputs: {P: "{{ steps.f.outputs[0].value }}"}}
"""
    with pytest.raises(SpecError) as info:
        parse_pipeline_text(text, tmp_path / "p.yaml")
    text_out = str(info.value)
    assert "needs form a cycle: a -> c -> b -> a" in text_out
    assert "p.yaml:7: steps[3].inputs.P: uses steps.b but 'b' is not in this step's needs" in text_out
    assert "p.yaml:9: steps[5].inputs.P: uses steps.e" in text_out
    assert "there is no step 'zz'" in text_out
    assert "steps[7]" not in text_out  # f is a transitive need of h: allowed


def test_where_cannot_use_steps(tmp_path: Path) -> None:
    """`where` filters rows before anything runs, so it may not read step outputs."""
    text = 'version: 1\nmatrix: {rows: [{a: b}], where: "steps.x.output"}\nsteps: [{id: x, app: y}]\n'
    with pytest.raises(SpecError, match="where cannot use steps"):
        parse_pipeline_text(text, tmp_path / "p.yaml")


def test_parse_duration() -> None:
    """Durations accept 90, "90", "90s", "15m", "2h" and refuse anything else or <= 0."""
    assert parse_duration(90) == 90.0
    assert parse_duration("90") == 90.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("15m") == 900.0
    assert parse_duration("2h") == 7200.0
    assert parse_duration(1.5) == 1.5
    for bad in ("", "15 minutes", "1d", "-5", 0, True, "m"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(bad)


def test_parse_rate() -> None:
    """Rates accept N/s, N/min, N/h."""
    assert parse_rate("90/min") == Rate(90, 60)
    assert parse_rate("2/s") == Rate(2, 1)
    assert parse_rate("1000/h") == Rate(1000, 3600)
    assert parse_rate("0.5/s").per_second == 0.5
    for bad in ("90", "90/day", "0/s", "x/min", 90):
        with pytest.raises(ValueError, match="invalid rate"):
            parse_rate(bad)


def test_parse_failure_limit() -> None:
    """max_failures is a share ("20%") or a count (5 or "5")."""
    assert parse_failure_limit("20%") == FailureLimit(fraction=0.2)
    assert parse_failure_limit("5") == FailureLimit(fraction=None, count=5)
    assert parse_failure_limit(0) == FailureLimit(fraction=None, count=0)
    for bad in ("lots", "150%", -1, True, "2.5"):
        with pytest.raises(ValueError, match="max_failures"):
            parse_failure_limit(bad)


def test_schema_is_valid_and_described() -> None:
    """The shipped schema is valid 2020-12 and every property has a description."""
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                assert "description" in sub, f"{path}.{name} has no description"
                walk(sub, f"{path}.{name}")
            for key in ("items", "additionalProperties"):
                if isinstance(node.get(key), dict):
                    walk(node[key], f"{path}[{key}]")

    walk(schema, "")
    top = {"version", "name", "api", "matrix", "steps", "download", "run", "review", "report", "manifest"}
    assert set(schema["properties"]) == top


def test_schema_file_matches_package_resource() -> None:
    """schemas/pipeline.schema.json is what the package loads (the editor schema is the enforced one)."""
    on_disk = json.loads((Path(__file__).parents[1] / "schemas" / "pipeline.schema.json").read_text("utf-8"))
    assert on_disk == load_schema()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_loader_never_raises_anything_but_config_errors(tmp_path: Path, text: str) -> None:
    """Arbitrary text either loads or raises a ConfigError subclass, never anything else."""
    with contextlib.suppress(ConfigError):
        parse_pipeline_text(text, tmp_path / "p.yaml")


YAMLISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["version", "matrix", "steps", "run", "download", "name", "x"]), YAMLISH))
def test_loader_on_structured_garbage_raises_only_config_errors(tmp_path: Path, doc: dict[str, object]) -> None:
    """Well-formed YAML of the wrong shape also only ever raises ConfigError subclasses."""
    with contextlib.suppress(ConfigError):
        parse_pipeline_text(json.dumps(doc), tmp_path / "p.yaml")


# --------------------------------------------------------------------------- this round's additions

ROUND = """\
version: 1
matrix:
  xlsx: data/products.xlsx
  sheet: Products
  header_row: 2
  fill_down: [Title, Vendor]
  key: Handle
steps:
  - id: hero
    app: app_7Hk2
    inputs:
      Prompt: "Photo of {{ row.Title }}"
      Seed: "1"
run:
  timeout: 1h30m
  poll_interval: 1m 30s
  max_credits: 2000
review:
  vary:
    Seed: "{{ attempt }}"
report:
  columns: [Handle, Title]
"""


def test_round_additions_load_into_the_models(tmp_path: Path) -> None:
    """xlsx/sheet/header_row/fill_down, max_credits, review.vary and report.columns reach the Pipeline."""
    p = load_pipeline(_write(tmp_path, ROUND))
    m = p.matrix
    assert (m.xlsx, m.csv, m.url) == (tmp_path.resolve() / "data" / "products.xlsx", None, None)
    assert (m.sheet, m.header_row, m.fill_down, m.delimiter) == ("Products", 2, ("Title", "Vendor"), None)
    assert m.lines["fill_down"] == 6
    assert p.run.max_credits == 2000.0
    assert (p.run.timeout, p.run.poll_interval) == (5400.0, 90.0)
    assert p.review.vary == {"Seed": "{{ attempt }}"}
    assert p.report.columns == ("Handle", "Title")
    assert p.step("hero").input_lines == {"Prompt": 12, "Seed": 13}
    plain = load_pipeline(_write(tmp_path, GOOD, "plain.yaml"))
    assert (plain.review.vary, plain.report.columns, plain.run.max_credits) == ({}, None, None)


def test_csv_url_and_delimiter(tmp_path: Path) -> None:
    """`csv: https://...` is a URL source (no local path until fetched); `delimiter` is kept."""
    text = GOOD.replace(
        "  rows: [{sku: A1, name: Mug, on: yes, when: 2024-01-02}]\n",
        '  csv: "https://docs.example.com/sheet.csv?format=csv"\n  delimiter: ";"\n',
    )
    m = load_pipeline(_write(tmp_path, text)).matrix
    assert (m.csv, m.url, m.delimiter) == (None, "https://docs.example.com/sheet.csv?format=csv", ";")


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ("  csv: http://example.com/p.csv\n", "p.yaml:3: matrix.csv: only https:// URLs are fetched, not http://"),
        ("  csv: p.csv\n  sheet: 2\n", "p.yaml:4: matrix.sheet: matrix.sheet applies to a workbook (matrix.xlsx) only"),
        ("  rows: [{a: b}]\n  header_row: 2\n", "p.yaml:4: matrix.header_row: matrix.header_row applies to a workbook"),
        (
            "  xlsx: p.xlsx\n  delimiter: ';'\n",
            "p.yaml:4: matrix.delimiter: matrix.delimiter applies to matrix.csv only",
        ),
        ("  csv: p.csv\n  delimiter: ';;'\n", "p.yaml:4: matrix.delimiter: invalid delimiter ';;': one character"),
        ("  xlsx: p.xlsx\n  sheet: 0\n", "p.yaml:4: matrix.sheet: must be at least 1, got 0"),
        ("  csv: p.csv\n  xlsx: p.xlsx\n", "p.yaml:2: matrix: set only one of 'csv' or 'xlsx', not both"),
        ("  csv: p.csv\n  fill_down: []\n", "p.yaml:4: matrix.fill_down: must not be empty"),
    ],
)
def test_matrix_source_keys_are_checked(tmp_path: Path, matrix: str, message: str) -> None:
    """Source-specific keys on the wrong source, bad URLs and delimiters are one line each at their line."""
    text = f"version: 1\nmatrix:\n{matrix}steps: [{{id: s, app: a}}]\n"
    with pytest.raises(SpecError) as info:
        parse_pipeline_text(text, tmp_path / "p.yaml")
    assert (
        str(info.value)
        .splitlines()[0]
        .startswith(str(tmp_path / message.split(":")[0]) + message[len(message.split(":")[0]) :])
    )


@pytest.mark.parametrize("value", ["30 mins", "1d", "fast", "1h30", "30m extra"])
def test_durations_have_a_schema_pattern(value: str) -> None:
    """The shipped schema itself refuses `timeout: 30 mins` (editors show it; it used to pass the schema)."""
    doc = {"version": 1, "matrix": {"rows": []}, "steps": [{"id": "s", "app": "a"}], "run": {"timeout": value}}
    assert not jsonschema.Draft202012Validator(load_schema()).is_valid(doc)


def test_a_bad_duration_is_one_problem_not_two(tmp_path: Path) -> None:
    """The schema's pattern and the parser agree on the words, so the user sees one line."""
    text = "version: 1\nmatrix: {rows: []}\nsteps: [{id: s, app: a}]\nrun:\n  timeout: 30 mins\n  rate_limit: lots\n"
    with pytest.raises(SpecError) as info:
        parse_pipeline_text(text, tmp_path / "p.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(
        "p.yaml:5: run.timeout: invalid duration '30 mins' (use 90, 90s, 15m or 2h, or a compound like 1h30m)"
    )
    assert "p.yaml:6: run.rate_limit: invalid rate 'lots'" in lines[1]


def test_compound_durations() -> None:
    """Durations accept compounds such as 1h30m and `2m 30s`."""
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("2m 30s") == 150.0
    assert parse_duration("1h 1m 1s 500ms") == 3661.5
    for bad in ("1h30", "h30m", "1h-30m"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("line", "fix"),
    [
        ("      Prompt: {{ row.Title }}\n", 'write Prompt: "{{ row.Title }}"'),
        ("      Prompt: {{ row.Title }} on white\n", 'write Prompt: "{{ row.Title }} on white"'),
        ("      Prompt: {% if row.a %}x{% endif %}\n", 'write Prompt: "{% if row.a %}x{% endif %}"'),
        ('      Prompt: {{ row["Title"] }}\n', 'write Prompt: "{{ row[\\"Title\\"] }}"'),
    ],
)
def test_an_unquoted_template_says_quote_it(tmp_path: Path, line: str, fix: str) -> None:
    """`Prompt: {{ row.Title }}` unquoted is YAML's mapping syntax: the error says to quote the template."""
    text = "version: 1\nmatrix: {rows: [{Title: a}]}\nsteps:\n  - id: s\n    app: a\n    inputs:\n" + line
    with pytest.raises(SpecError) as info:
        parse_pipeline_text(text, tmp_path / "p.yaml")
    (problem,) = info.value.problems
    assert (problem.line, problem.message) == (7, "a Jinja template must be quoted in YAML: quote the template")
    assert problem.hint == fix


def test_todo_placeholders_are_refused_at_their_line(tmp_path: Path) -> None:
    """Values `init` leaves as `TODO: ...` make validate fail at each one's line."""
    text = (
        "version: 1\nmatrix:\n  csv: 'TODO: your products.csv'\nsteps:\n  - id: s\n    app: app_1\n    inputs:\n"
        "      Prompt: 'TODO: describe the image'\n      Style: photo\n      Note: 'A TODO list'\n"
    )
    with pytest.raises(SpecError) as info:
        parse_pipeline_text(text, tmp_path / "p.yaml")
    problems = info.value.problems
    assert [(p.line, p.path) for p in problems] == [(3, "matrix.csv"), (8, "steps[0].inputs.Prompt")]
    assert problems[1].message == "placeholder 'TODO: describe the image' left to fill in"


def test_review_vary_templates_are_checked(tmp_path: Path) -> None:
    """review.vary entries are templates: syntax, steps and axes are checked like inputs."""
    text = (
        "version: 1\nmatrix: {rows: [{a: b}], axes: {aspect: ['1:1']}}\nsteps: [{id: s, app: a}]\n"
        "review:\n  vary:\n    Seed: '{{ attempt'\n    Style: '{{ axes.aspct }}'\n    Ok: '{{ steps.s.output }}'\n"
    )
    with pytest.raises(SpecError) as info:
        parse_pipeline_text(text, tmp_path / "p.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "p.yaml:6: review.vary.Seed: template syntax error" in lines[0]
    assert "p.yaml:7: review.vary.Style: no axis 'aspct' (did you mean 'aspect'?)" in lines[1]
