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
