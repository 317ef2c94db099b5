"""Tests for scaffold.py: `init` pipelines load with spec.load_pipeline and pass the live preflight."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from lamina_batch import matrix, spec
from lamina_batch.client import LaminaClient
from lamina_batch.models import AppInfo, AppOutput, AppParameter, Dialect
from lamina_batch.preflight import check_apps
from lamina_batch.scaffold import init_pipeline_yaml, row_ref, step_id_for

APP = AppInfo(
    app_id="app_7Hk2",
    name="Product Hero: v2!",
    description="A studio hero shot.\nSecond line.",
    parameters=(
        AppParameter("1", "Prompt", "text", required=True),
        AppParameter("2", "Aspect Ratio", "options", options=("1:1", "16:9"), default="1:1", has_default=True),
        AppParameter("3", "Reference Image", "url", default="", has_default=True),
        AppParameter("4", "Product Image", "url"),
        AppParameter("5", "Style", "options", options=("photo", "flat")),
        AppParameter("6", "items", "text"),
    ),
    outputs=(AppOutput(0, "Hero Image", "image"),),
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_step_id_and_row_ref() -> None:
    """Step ids are valid slugs; column references use `row['Col Name']` where `.` would not work."""
    assert step_id_for("Product Hero: v2!") == "product_hero_v2"
    assert step_id_for("3D Render") == "step_3d_render"
    assert step_id_for("!!!") == "step"
    assert row_ref("sku") == "row.sku"
    assert row_ref("Col Name") == "row['Col Name']"
    assert row_ref("items") == "row['items']"  # `row.items` would be the dict method
    assert row_ref("it's") == 'row["it\'s"]'


def test_inline_rows_scaffold_loads_and_validates(tmp_path: Path) -> None:
    """Without a CSV: one inline example row; the file loads, renders for every row, and maps no-default params."""
    text = init_pipeline_yaml(APP, csv_path=None, csv_columns=None, dialect="runs")
    pipeline = spec.load_pipeline(write(tmp_path, text))
    assert pipeline.api == "runs"
    assert pipeline.matrix.rows is not None
    assert len(pipeline.matrix.rows) == 1
    (step,) = pipeline.steps
    assert step.id == "product_hero_v2"
    assert step.app == "app_7Hk2"
    assert step.inputs["Prompt"] == "{{ row.prompt }}"
    assert step.inputs["Style"] == "photo"
    assert step.inputs["items"] == "{{ row.col_items }}"  # a column named `items` would shadow dict.items
    assert "Aspect Ratio" not in step.inputs  # defaults stay commented out
    assert "# options; default '1:1'; options: 1:1, 16:9" in text
    matrix.validate_pipeline(pipeline)


def test_csv_scaffold_maps_columns(tmp_path: Path) -> None:
    """With a CSV: matrix.csv is relative, columns match names ignoring case/spaces, and it loads."""
    csv = tmp_path / "data" / "products.csv"
    csv.parent.mkdir()
    csv.write_text("sku,PROMPT,product_image,Aspect  ratio\nA1,a mug,https://x.test/a.png,16:9\n", encoding="utf-8")
    text = init_pipeline_yaml(
        APP,
        csv_path=csv,
        csv_columns=["sku", "PROMPT", "product_image", "Aspect  ratio"],
        dialect="executions",
        pipeline_dir=tmp_path,
    )
    assert "csv: data/products.csv" in text
    assert "Aspect Ratio: \"{{ row['Aspect  ratio'] }}\"" in text
    pipeline = spec.load_pipeline(write(tmp_path, text))
    assert pipeline.api == "executions"
    step = pipeline.steps[0]
    assert step.inputs["Prompt"] == "{{ row.PROMPT }}"
    assert step.inputs["Product Image"] == "{{ row.product_image }}"
    assert step.inputs["items"].startswith("example")  # no column: a TODO placeholder
    matrix.validate_pipeline(pipeline)


def test_awkward_names_round_trip() -> None:
    """Parameter names and defaults that need YAML quoting survive a round trip."""
    odd = AppInfo(
        "app_x",
        "X",
        None,
        (
            AppParameter("1", "a: b #c", "text"),
            AppParameter("2", "yes", "text"),
            AppParameter("3", "Multi", "text", default="line one\nline two", has_default=True),
        ),
        (),
    )
    text = init_pipeline_yaml(odd, csv_path=None, csv_columns=["a: b #c"], dialect="runs")
    doc: dict[str, Any] = yaml.safe_load(text)
    inputs = doc["steps"][0]["inputs"]
    assert set(inputs) == {"a: b #c", "yes"}
    assert all(isinstance(v, str) and v.startswith("{{") for v in inputs.values())


def test_all_default_app_has_empty_inputs(tmp_path: Path) -> None:
    """An app whose parameters all have defaults gets `inputs: {}` and still loads."""
    app = AppInfo("app_d", "D", None, (AppParameter("1", "Tone", "text", default="calm", has_default=True),), ())
    text = init_pipeline_yaml(app, csv_path=None, csv_columns=None, dialect="runs")
    assert "inputs: {}" in text
    pipeline = spec.load_pipeline(write(tmp_path, text))
    assert dict(pipeline.steps[0].inputs) == {}


@pytest.mark.parametrize("dialect", ["runs", "executions"])
def test_scaffold_of_every_emulator_app_passes_preflight(emulator: Any, tmp_path: Path, dialect: Dialect) -> None:
    """For every app the emulator serves, the scaffold loads and passes the live preflight unchanged."""

    async def go() -> list[str]:
        failures: list[str] = []
        async with LaminaClient(emulator.base_url, emulator.key, dialect) as client:
            for summary in await client.list_apps():
                app = await client.get_app(summary.app_id)
                folder = tmp_path / dialect / app.app_id
                folder.mkdir(parents=True)
                path = folder / "pipeline.yaml"
                path.write_text(init_pipeline_yaml(app, csv_path=None, csv_columns=None, dialect=dialect))
                pipeline = spec.load_pipeline(path)
                problems = await check_apps(pipeline, client, matrix.expand_runs(pipeline))
                failures += [f"{app.app_id}: {p}" for p in problems]
        return failures

    assert asyncio.run(go()) == []
