"""schemafast: the fast yes agrees with jsonschema, so skipping jsonschema never lets a bad spec through."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from lamina_batch import schemafast
from lamina_batch.spec import load_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = load_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

BASE: dict[str, Any] = {
    "version": 1,
    "name": "catalogue",
    "api": "runs",
    "matrix": {"csv": "products.csv", "key": "sku", "where": "row.on", "axes": {"aspect": ["1:1", "16:9"]}},
    "steps": [
        {"id": "hero", "app": "app_1", "inputs": {"Prompt": "{{ row.name }}", "Steps": 4, "HD": True}},
        {"id": "banner", "app": "app_2", "needs": ["hero"], "outputs": ["Banner"], "concurrency": 2},
    ],
    "download": {"path": "out/{{ row.sku }}.{{ output.ext }}"},
    "run": {
        "concurrency": 8,
        "rate_limit": "90/min",
        "poll_interval": "4s",
        "timeout": 1800,
        "retries": 0,
        "max_failures": "20%",
        "max_starts": 10,
        "webhook": {"url": "https://hooks.example.com/x", "listen": "127.0.0.1:8787"},
        "max_credits": 2000,
    },
    "review": {"vary": {"Seed": "{{ attempt }}"}},
    "report": {"columns": ["sku", "name"]},
    "manifest": "m.sqlite",
}


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()

# Each one is a case where Python's idea of equality or type differs from JSON Schema's, or a keyword's edge.
MUTATIONS: list[tuple[tuple[Any, ...], Any]] = [
    (("version",), True),
    (("version",), 1.0),
    (("version",), 2),
    (("version",), _DELETE),
    (("name",), ""),
    (("api",), "graphql"),
    (("api",), None),
    (("matrix", "rows"), [{"sku": "a", "n": 1, "ok": None}]),
    (("matrix", "csv"), _DELETE),
    (("matrix",), {"rows": [{"sku": "a", "n": 1.5, "ok": None}], "key": "sku"}),
    (("matrix",), {"rows": [{"sku": ["a"]}]}),
    (("matrix", "key"), 5),
    (("matrix", "axes"), {"1bad": ["x"]}),
    (("matrix", "axes"), {"aspect": []}),
    (("matrix", "axes"), {"aspect": [1, True]}),
    (("matrix", "axes"), {"aspect": [1, 1.0]}),
    (("matrix", "axes"), {"aspect": ["a", "a"]}),
    (("matrix", "axes"), {"aspect": [None]}),
    (("matrix", "extra"), 1),
    (("steps",), []),
    (("steps", 0, "id"), "Hero"),
    (("steps", 0, "id"), "hero-2_b"),
    (("steps", 0, "app"), ""),
    (("steps", 0, "inputs", "Prompt"), None),
    (("steps", 0, "inputs", "Prompt"), ["a"]),
    (("steps", 1, "needs"), ["hero", "hero"]),
    (("steps", 1, "outputs"), []),
    (("steps", 1, "concurrency"), 0),
    (("steps", 1, "concurrency"), True),
    (("steps", 1, "concurrency"), 2.0),
    (("steps", 1, "concurrency"), 2.5),
    (("steps", 1, "oops"), 1),
    (("download", "path"), _DELETE),
    (("run", "concurrency"), "eight"),
    (("run", "retries"), -1),
    (("run", "poll_interval"), True),
    (("run", "poll_interval"), 4.5),
    (("run", "max_failures"), 2.5),
    (("run", "max_failures"), 3),
    (("run", "webhook", "url"), "ftp://x"),
    (("run", "webhook", "listen"), "[::1]:8787"),
    (("run", "webhook", "listen"), "nohost"),
    (("run", "webhook"), {"listen": "127.0.0.1:1"}),
    (("surprise",), True),
    # this round's additions: sources, sheets, delimiters, fill-down, credits, review, report, durations
    (("matrix", "csv"), "https://docs.example.com/export?format=csv"),
    (("matrix",), {"xlsx": "p.xlsx", "sheet": "Products", "header_row": 2}),
    (("matrix",), {"xlsx": "p.xlsx", "sheet": 2}),
    (("matrix",), {"xlsx": "p.xlsx", "sheet": 0}),
    (("matrix",), {"xlsx": "p.xlsx", "sheet": ""}),
    (("matrix",), {"xlsx": "p.xlsx", "sheet": 1.5}),
    (("matrix",), {"xlsx": "p.xlsx", "sheet": True}),
    (("matrix",), {"xlsx": "p.xlsx", "header_row": 0}),
    (("matrix",), {"xlsx": "p.xlsx", "csv": "p.csv"}),
    (("matrix",), {"xlsx": "p.xlsx", "rows": []}),
    (("matrix", "delimiter"), ";"),
    (("matrix", "delimiter"), "\t"),
    (("matrix", "delimiter"), ";;"),
    (("matrix", "delimiter"), ""),
    (("matrix", "delimiter"), '"'),
    (("matrix", "delimiter"), "\n"),
    (("matrix", "delimiter"), "😀"),
    (("matrix", "fill_down"), ["Title"]),
    (("matrix", "fill_down"), []),
    (("matrix", "fill_down"), ["a", "a"]),
    (("matrix", "fill_down"), [""]),
    (("run", "max_credits"), 0),
    (("run", "max_credits"), 12.5),
    (("run", "max_credits"), -1),
    (("run", "max_credits"), "100"),
    (("run", "timeout"), "1h30m"),
    (("run", "timeout"), "30 mins"),
    (("run", "timeout"), "1h30"),
    (("run", "poll_interval"), "2m 30s"),
    (("run", "poll_interval"), "500ms"),
    (("run", "rate_limit"), "90 / min"),
    (("run", "rate_limit"), "90/day"),
    (("run", "max_failures"), "20 %"),
    (("run", "max_failures"), "lots"),
    (("review",), {}),
    (("review",), {"vary": {"Seed": ""}}),
    (("review",), {"vary": {"Seed": 3}}),
    (("review",), {"other": 1}),
    (("report",), {"columns": []}),
    (("report",), {"columns": ["a", "a"]}),
    (("report",), {"columns": "sku"}),
    (("report",), {"extra": True}),
]


def _fixture_docs() -> list[tuple[str, Any]]:
    docs = []
    for path in sorted(
        [*ROOT.glob("tests/fixtures/*/pipeline.yaml"), *ROOT.glob("pipelines/*.yaml"), *ROOT.glob("examples/*/*.yaml")]
    ):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        docs.append((str(path.relative_to(ROOT)), data))
    return docs


def test_the_shipped_schema_is_fully_implemented() -> None:
    """Every keyword of the shipped schema is one schemafast implements, so valid specs skip jsonschema."""
    assert schemafast.supports(SCHEMA)


def test_an_unknown_keyword_anywhere_turns_the_fast_path_off() -> None:
    """A keyword schemafast does not implement, even deep inside, means it never decides for that schema."""
    assert not schemafast.supports({"type": "object", "properties": {"a": {"type": "string", "format": "uri"}}})
    assert not schemafast.supports({"items": {"oneOf": [{"if": {}}]}})


@pytest.mark.parametrize(("path", "value"), MUTATIONS, ids=lambda v: "DELETE" if v is _DELETE else repr(v)[:40])
def test_agrees_with_jsonschema_on_edge_cases(path: tuple[Any, ...], value: Any) -> None:
    """On each edge case (bools vs numbers, 1 vs 1.0, oneOf, patterns, uniqueness) both validators agree."""
    doc = _set(BASE, path, value)
    assert schemafast.is_valid(SCHEMA, doc) == VALIDATOR.is_valid(doc)


def test_agrees_with_jsonschema_on_every_fixture_and_example() -> None:
    """Every pipeline in the fixtures, pipelines/ and examples/ gets the same verdict from both validators."""
    docs = _fixture_docs()
    assert len(docs) > 40
    verdicts = {name: (schemafast.is_valid(SCHEMA, d), VALIDATOR.is_valid(d)) for name, d in docs}
    assert {n: v for n, v in verdicts.items() if v[0] != v[1]} == {}
    assert any(fast for fast, _ in verdicts.values())
    assert not all(fast for fast, _ in verdicts.values())


def test_the_base_document_is_valid() -> None:
    """The document the edge cases start from is valid, so each mutation tests one thing."""
    assert VALIDATOR.is_valid(BASE)
    assert schemafast.is_valid(SCHEMA, BASE)


def test_a_valid_spec_loads_without_importing_jsonschema(tmp_path: Path) -> None:
    """Loading a valid pipeline never imports jsonschema (its import is paid only when a spec is bad)."""
    code = (
        "import sys; from lamina_batch.spec import load_pipeline; "
        f"load_pipeline({str(ROOT / 'examples/catalogue/pipeline.yaml')!r}); print('jsonschema' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
