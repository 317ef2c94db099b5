"""Tests for scaffold.py and sheethints.py: `init` pipelines map columns by name and content, leave TODOs that
block a run, and load, validate, pass the live preflight and run once the TODOs are filled."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lamina_batch import matrix, spec
from lamina_batch.client import LaminaClient
from lamina_batch.errors import MatrixError
from lamina_batch.models import AppInfo, AppOutput, AppParameter, Dialect
from lamina_batch.preflight import check_apps
from lamina_batch.scaffold import init_pipeline_yaml, row_ref, scaffold_for, step_id_for
from lamina_batch.sheethints import continuation, image_column, key_column, read_sample, sniff_delimiter

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
HERO = AppInfo(
    app_id="app_7Hk2",
    name="Product Hero",
    description=None,
    parameters=(
        AppParameter("p1", "Prompt", "text", key="prompt"),
        AppParameter(
            "p2",
            "Aspect Ratio",
            "options",
            key="aspect_ratio",
            options=("1:1", "16:9"),
            default="1:1",
            has_default=True,
        ),
        AppParameter(
            "p3", "Reference Image", "url", key="reference_image", accept=("image",), default="", has_default=True
        ),
    ),
    outputs=(AppOutput(0, "Hero Image", "image"),),
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def fill_todos(text: str) -> str:
    """Replace every TODO value as a user would: the first option, a URL, or text."""
    out: list[str] = []
    for line in text.splitlines():
        todo = re.search(r"'TODO: ([^']*)'", line)
        if todo:
            what = todo[1]
            if what.startswith("one of "):
                value = yaml.safe_dump(what[len("one of ") :].split(", ")[0]).split("\n")[0]
            elif what.startswith("an http(s) URL"):
                value = '"https://img.test/{{ row_number }}.png"'
            else:
                value = "a ceramic mug"
            line = line[: todo.start()] + value + line[todo.end() :]
        out.append(line)
    assert "TODO" not in "\n".join(ln for ln in out if not ln.lstrip().startswith("#"))
    return "\n".join(out) + "\n"


def test_step_id_and_row_ref() -> None:
    """Step ids are valid slugs; column references use `row['Col Name']` where `.` would not work."""
    assert step_id_for("Product Hero: v2!") == "product_hero_v2"
    assert step_id_for("3D Render") == "step_3d_render"
    assert step_id_for("!!!") == "step"
    assert row_ref("sku") == "row.sku"
    assert row_ref("Col Name") == "row['Col Name']"
    assert row_ref("items") == "row['items']"  # `row.items` would be the dict method
    assert row_ref("it's") == 'row["it\'s"]'


def test_inline_rows_scaffold_leaves_todos_and_validates_once_filled(tmp_path: Path) -> None:
    """Without a CSV: one inline example row whose values are TODOs, one column per no-default parameter;
    defaults stay commented; filled in, the file loads and renders for every row."""
    text = init_pipeline_yaml(APP, csv_path=None, csv_columns=None, dialect="runs")
    doc: dict[str, Any] = yaml.safe_load(text)
    (row,) = doc["matrix"]["rows"]
    assert row == {
        "prompt": "TODO: the prompt",
        "product_image": "TODO: an http(s) URL",
        "style": "TODO: one of photo, flat",
        "col_items": "TODO: the items",  # a column named `items` would shadow dict.items
    }
    inputs = doc["steps"][0]["inputs"]
    assert inputs["Prompt"] == "{{ row.prompt }}"
    assert inputs["items"] == "{{ row.col_items }}"
    assert "Aspect Ratio" not in inputs  # defaults stay commented out
    assert "# options; default '1:1'; options: 1:1, 16:9" in text
    pipeline = spec.load_pipeline(write(tmp_path, fill_todos(text)))
    assert pipeline.steps[0].id == "product_hero_v2"
    assert pipeline.matrix.rows == (
        {
            "prompt": "a ceramic mug",
            "product_image": "https://img.test/{{ row_number }}.png",
            "style": "photo",
            "col_items": "a ceramic mug",
        },
    )
    matrix.validate_pipeline(pipeline)


def test_schema_line_points_at_the_shipped_schema(tmp_path: Path) -> None:
    """The first line is the yaml-language-server schema line, a path from the pipeline's folder to the
    schema shipped with the package (a file URI without a folder)."""
    text = init_pipeline_yaml(APP, csv_path=None, dialect="runs", pipeline_dir=tmp_path)
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (tmp_path / first.split("$schema=", 1)[1]).resolve()
    assert target.name == "pipeline.schema.json"
    assert target.is_file()
    assert init_pipeline_yaml(APP, csv_path=None).splitlines()[0].startswith("# yaml-language-server: $schema=file:")


def test_csv_scaffold_maps_columns_by_normalised_name(tmp_path: Path) -> None:
    """Columns match a parameter's key, name or id with case and punctuation ignored (Color for colour,
    Product ID for product_id); unmatched ones are TODOs; matrix.csv is relative to the pipeline."""
    app = AppInfo(
        "app_c",
        "C",
        None,
        (
            AppParameter("u1", "Colour", "text", key="colour"),
            AppParameter("u2", "Product", "text", key="product_id"),
            AppParameter("prompt-uuid", "Words", "text", key="words"),
            AppParameter("u4", "Style", "options", key="style", options=("photo", "flat")),
            AppParameter("u5", "Aspect Ratio", "options", key="aspect_ratio", options=("1:1",)),
        ),
        (),
    )
    csv_file = tmp_path / "data" / "products.csv"
    csv_file.parent.mkdir()
    csv_file.write_text("Product ID,Color,PROMPT-UUID,Aspect  ratio\nA1,red,a mug,1:1\nA2,blue,a cup,1:1\n")
    text = scaffold_for(app, csv_file, tmp_path / "pipeline.yaml", "executions")
    assert "csv: data/products.csv" in text
    assert "aspect_ratio: \"{{ row['Aspect  ratio'] }}\"" in text
    assert "style: 'TODO: one of photo, flat'" in text
    pipeline = spec.load_pipeline(write(tmp_path, fill_todos(text)))
    assert pipeline.api == "executions"
    assert pipeline.matrix.key == "Product ID"
    assert dict(pipeline.steps[0].inputs) == {
        "colour": "{{ row.Color }}",
        "product_id": "{{ row['Product ID'] }}",
        "words": "{{ row['PROMPT-UUID'] }}",
        "style": "photo",
        "aspect_ratio": "{{ row['Aspect  ratio'] }}",
    }
    matrix.validate_pipeline(pipeline)


def test_inputs_by_key_with_the_name_as_a_comment_else_by_name() -> None:
    """When every parameter has a key, inputs are written by key with the name in the comment above; one
    parameter without a key makes the whole step use names."""
    by_key = init_pipeline_yaml(HERO, csv_path=None)
    assert '      # Prompt: text; no default: must be set\n      prompt: "{{ row.prompt }}"' in by_key
    assert "      # Aspect Ratio: options; default '1:1'; options: 1:1, 16:9\n      # aspect_ratio: '1:1'" in by_key
    mixed = AppInfo(
        "a", "A", None, (*HERO.parameters, AppParameter("p4", "Old", "text", default="", has_default=True)), ()
    )
    by_name = init_pipeline_yaml(mixed, csv_path=None)
    assert '      # text; no default: must be set\n      Prompt: "{{ row.prompt }}"' in by_name


def test_image_url_column_found_by_content(tmp_path: Path) -> None:
    """A url parameter that accepts images takes the column whose values are image URLs (an image-ish name
    winning over another URL column), even when it has a default; a video-only one does not."""
    rows = (
        "sku,Link,Picture\nA,https://shop.test/a,https://cdn.test/a.jpg\nB,https://shop.test/b,https://cdn.test/b.png\n"
    )
    sample = read_sample(_write_csv(rows, tmp_path))
    assert image_column(sample) is not None
    assert image_column(sample).name == "Picture"  # type: ignore[union-attr]
    text = init_pipeline_yaml(HERO, csv_path=Path("p.csv"), sample=sample)
    assert "reference_image: \"{{ row.Picture }}\"    # the image URLs in 'Picture'" in text
    video = AppInfo("v", "V", None, (AppParameter("x", "Clip", "url", key="clip", accept=("video",)),), ())
    assert "clip: 'TODO: an http(s) URL" in init_pipeline_yaml(video, csv_path=Path("p.csv"), sample=sample)


def test_required_text_gets_a_template_from_descriptive_columns(tmp_path: Path) -> None:
    """A required text parameter no column names gets a working template from the title and description
    columns, with a comment saying to edit it (the title alone for a name parameter): no TODO is left."""
    sample = read_sample(_write_csv("sku,Title,Short description,Description\nA,Mug,Blue mug.,<p>Long</p>\n", tmp_path))
    text = init_pipeline_yaml(HERO, csv_path=Path("p.csv"), sample=sample)
    assert (
        "      prompt: \"{{ row.Title }}: {{ row['Short description'] | striptags | truncate(200) }}\"    # a start"
        in text
    )
    assert "TODO" not in text
    named = AppInfo("n", "N", None, (AppParameter("x", "Product Name", "text", key="product_name"),), ())
    assert '      product_name: "{{ row.Title }}"    # a start' in init_pipeline_yaml(
        named, csv_path=Path("p.csv"), sample=sample
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name,sku,n\nMug,A1,1\nCup,A2,1\n", "sku"),  # a key-like name first
        ("name,colour\nMug,red\nCup,blue\n", "name"),  # else the first unique, filled column
        ("name,colour\nMug,red\nMug,blue\n", "colour"),
        ("name,colour\nMug,red\nCup,\n", "name"),
        ("name,colour\nMug,red\nMug,\n", None),
        ("name,colour\nMug,red\n", None),  # one row proves nothing unless the name says key
        ("handle,colour\nmug,red\n", "handle"),
    ],
)
def test_key_column_is_filled_and_unique(tmp_path: Path, text: str, key: str | None) -> None:
    """`key` is proposed from a column filled and unique over the rows read, key-like names first."""
    assert key_column(read_sample(_write_csv(text, tmp_path))) == key


def test_read_sample_limits_sniffs_and_refuses(tmp_path: Path) -> None:
    """read_sample stops at its limit (saying the sample is incomplete), tells `;` and tab from `,`,
    tolerates a BOM, and raises MatrixError naming a missing or non-UTF-8 file."""
    big = tmp_path / "big.csv"
    big.write_text("a,b\n" + "".join(f"{n},x\n" for n in range(20)))
    sample = read_sample(big, limit=5)
    assert (len(sample.rows), sample.complete) == (5, False)
    assert read_sample(big).complete
    assert sniff_delimiter("a;b;c") == ";"
    assert sniff_delimiter("a\tb") == "\t"
    assert sniff_delimiter("a,b;c") == ","
    semi = tmp_path / "semi.csv"
    semi.write_bytes(b"\xef\xbb\xbfsku;name\nA;Mug, blue\n")
    assert read_sample(semi).rows == ({"sku": "A", "name": "Mug, blue"},)
    with pytest.raises(MatrixError, match="CSV file not found"):
        read_sample(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"a\n\xff\n")
    with pytest.raises(MatrixError, match="not valid UTF-8"):
        read_sample(bad)


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
    text = init_pipeline_yaml(odd, csv_path=Path("x.csv"), csv_columns=["a: b #c"], dialect="runs")
    doc: dict[str, Any] = yaml.safe_load(text)
    inputs = doc["steps"][0]["inputs"]
    assert inputs == {
        "a: b #c": "{{ row['a: b #c'] }}",
        "yes": "TODO: the yes: text, or a template reading the columns",
    }


def test_all_default_app_has_empty_inputs(tmp_path: Path) -> None:
    """An app whose parameters all have defaults gets `inputs: {}` and still loads."""
    app = AppInfo("app_d", "D", None, (AppParameter("1", "Tone", "text", default="calm", has_default=True),), ())
    text = init_pipeline_yaml(app, csv_path=None, csv_columns=None, dialect="runs")
    assert "inputs: {}" in text
    pipeline = spec.load_pipeline(write(tmp_path, text))
    assert dict(pipeline.steps[0].inputs) == {}


@pytest.mark.parametrize("dialect", ["runs", "executions"])
def test_scaffold_of_every_emulator_app_passes_preflight(emulator: Any, tmp_path: Path, dialect: Dialect) -> None:
    """For every app the emulator serves, the scaffold with its TODOs filled loads and passes the preflight."""

    async def go() -> list[str]:
        failures: list[str] = []
        async with LaminaClient(emulator.base_url, emulator.key, dialect) as client:
            for summary in await client.list_apps():
                app = await client.get_app(summary.app_id)
                folder = tmp_path / dialect / app.app_id
                folder.mkdir(parents=True)
                text = init_pipeline_yaml(app, csv_path=None, csv_columns=None, dialect=dialect)
                pipeline = spec.load_pipeline(write(folder, fill_todos(text)))
                problems = await check_apps(pipeline, client, matrix.expand_runs(pipeline))
                failures += [f"{app.app_id}: {p}" for p in problems]
        return failures

    assert asyncio.run(go()) == []


# ---- catalogue exports (issue 24): generated here, as Shopify and WooCommerce lay them out -------------------

SHOPIFY_COLUMNS = [
    "Handle",
    "Title",
    "Body (HTML)",
    "Vendor",
    "Product Category",
    "Type",
    "Tags",
    "Published",
    "Option1 Name",
    "Option1 Value",
    "Option2 Name",
    "Option2 Value",
    "Option3 Name",
    "Option3 Value",
    "Variant SKU",
    "Variant Grams",
    "Variant Inventory Tracker",
    "Variant Inventory Qty",
    "Variant Inventory Policy",
    "Variant Fulfillment Service",
    "Variant Price",
    "Variant Compare At Price",
    "Variant Requires Shipping",
    "Variant Taxable",
    "Variant Barcode",
    "Image Src",
    "Image Position",
    "Image Alt Text",
    "Gift Card",
    "SEO Title",
    "SEO Description",
    "Google Shopping / Google Product Category",
    "Google Shopping / Gender",
    "Google Shopping / Age Group",
    "Google Shopping / MPN",
    "Google Shopping / Condition",
    "Google Shopping / Custom Product",
    "Variant Image",
    "Variant Weight Unit",
    "Variant Tax Code",
    "Cost per item",
    "Included / United States",
    "Price / United States",
    "Compare At Price / United States",
    "Status",
]
WOO_COLUMNS = [
    "ID",
    "Type",
    "SKU",
    "Name",
    "Published",
    "Is featured?",
    "Visibility in catalog",
    "Short description",
    "Description",
    "Date sale price starts",
    "Date sale price ends",
    "Tax status",
    "Tax class",
    "In stock?",
    "Stock",
    "Low stock amount",
    "Backorders allowed?",
    "Sold individually?",
    "Weight (kg)",
    "Length (cm)",
    "Width (cm)",
    "Height (cm)",
    "Allow customer reviews?",
    "Purchase note",
    "Sale price",
    "Regular price",
    "Categories",
    "Tags",
    "Shipping class",
    "Images",
    "Download limit",
    "Download expiry days",
    "Parent",
    "Grouped products",
    "Upsells",
    "Cross-sells",
    "External URL",
    "Button text",
    "Position",
]
SHOPIFY_PRODUCTS = (
    ("example-t-shirt", "Example T-Shirt", "<p>A soft <b>cotton</b> tee.</p>", ("Small", "Medium", "Large")),
    ("lithograph", 'Lithograph - Height: 9" x Width: 12"', "<p>Printed on heavy paper.</p>", ("Default Title",)),
    ("black-t-shirt", "Black T-Shirt", "<p>Black, of course.</p>", ("OS", "XL")),
)


def _write_csv(text: str, folder: Path) -> Path:
    path = folder / "sheet.csv"
    path.write_text(text, encoding="utf-8")
    return path


def shopify_export(path: Path) -> None:
    """Shopify's product CSV layout: a product row, its variant rows (Handle repeated, most cells empty) and an
    image-only row; quoted inches, a barcode written '3212483."""
    rows = []
    for handle, title, body, variants in SHOPIFY_PRODUCTS:
        for i, option in enumerate(variants):
            row = dict.fromkeys(SHOPIFY_COLUMNS, "")
            row.update(
                {
                    "Handle": handle,
                    "Option1 Value": option,
                    "Variant SKU": f"{handle}-{option.lower().replace(' ', '-')}",
                    "Variant Grams": "200",
                    "Variant Inventory Policy": "deny",
                    "Variant Fulfillment Service": "manual",
                    "Variant Price": "29.99",
                    "Variant Requires Shipping": "TRUE",
                    "Variant Taxable": "TRUE",
                    "Variant Barcode": "'3212483",
                    "Variant Weight Unit": "g",
                }
            )
            if i == 0:
                row.update(
                    {
                        "Title": title,
                        "Body (HTML)": body,
                        "Vendor": "Acme",
                        "Type": "Shirts",
                        "Tags": "mens, cotton",
                        "Published": "TRUE",
                        "Option1 Name": "Size",
                        "Image Src": f"https://cdn.test/{handle}.jpg",
                        "Image Position": "1",
                        "Gift Card": "FALSE",
                        "Status": "active",
                    }
                )
            rows.append(row)
        image_row = dict.fromkeys(SHOPIFY_COLUMNS, "")
        image_row.update({"Handle": handle, "Image Src": f"https://cdn.test/{handle}-back.jpg", "Image Position": "2"})
        rows.append(image_row)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, SHOPIFY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def woocommerce_export(path: Path, delimiter: str = ",", bom: bool = False) -> None:
    """A WooCommerce product export: `Images` holds several comma-separated URLs; External URL is empty."""
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.DictWriter(f, WOO_COLUMNS, delimiter=delimiter)
        writer.writeheader()
        for n, name in enumerate(("Hoodie", "Beanie", "Belt"), 1):
            row = dict.fromkeys(WOO_COLUMNS, "")
            row.update(
                {
                    "ID": str(10 + n),
                    "Type": "simple",
                    "SKU": f"woo-{name.lower()}",
                    "Name": name,
                    "Published": "1",
                    "Short description": f"A warm {name.lower()}.",
                    "Description": f"<p>The {name} is great.</p>",
                    "Regular price": "45",
                    "Categories": "Clothing",
                    "Images": f"https://woo.test/{name.lower()}-1.jpg, https://woo.test/{name.lower()}-2.jpg",
                }
            )
            writer.writerow(row)


def _cli(folder: Path, emu: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "GITHUB_STEP"))}
    env.update(LAMINA_BASE_URL=emu.base_url, LAMINA_API_KEY=emu.key)
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", *args],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _init_validate_run(folder: Path, emu: Any, app_id: str, sheet: str) -> str:
    """init (library) -> fill the TODOs -> validate --check-apps -> run, on the emulator; returns the scaffold."""

    async def app() -> AppInfo:
        async with LaminaClient(emu.base_url, emu.key, "runs") as client:
            return await client.get_app(app_id)

    text = scaffold_for(asyncio.run(app()), folder / sheet, folder / "pipeline.yaml")
    write(folder, fill_todos(text))
    checked = _cli(folder, emu, "validate", "pipeline.yaml", "--check-apps")
    assert checked.returncode == 0, checked.stderr
    ran = _cli(folder, emu, "run", "pipeline.yaml", "--no-progress", "--poll-interval", "1s")
    assert ran.returncode == 0, ran.stderr
    return text


def test_shopify_export_scaffold(tmp_path: Path) -> None:
    """On a Shopify export init sees the variant rows: `key: Handle` with a `where` keeping product rows and a
    commented `fill_down`, each with why; `Image Src` feeds the image parameter; a prompt is suggested."""
    shopify_export(tmp_path / "products_export.csv")
    sample = read_sample(tmp_path / "products_export.csv")
    cont = continuation(sample)
    assert cont is not None
    assert (cont.group, cont.anchor, cont.rows) == ("Handle", "Title", 6)
    text = scaffold_for(HERO, tmp_path / "products_export.csv", tmp_path / "pipeline.yaml")
    assert "  key: Handle    # filled and unique over the rows `where` keeps, in every row" in text
    assert "  where: \"row.Title != ''\"    # 'Title' is set on first rows only" in text
    assert "  # fill_down: [Title, Body (HTML)]" in text
    assert "'Handle' repeats on 6 of the 9 rows read" in text
    assert "reference_image: \"{{ row['Image Src'] }}\"    # the image URLs in 'Image Src'" in text
    assert "prompt: \"{{ row.Title }}: {{ row['Body (HTML)'] | striptags | truncate(200) }}\"    # a start" in text


def test_shopify_export_init_validate_run(tmp_path: Path, emulator: Any) -> None:
    """Shopify export: init -> TODOs filled -> validate --check-apps -> run: one run per product."""
    shopify_export(tmp_path / "products_export.csv")
    _init_validate_run(tmp_path, emulator, "app_7Hk2", "products_export.csv")
    assert emulator.stats.starts == len(SHOPIFY_PRODUCTS)


def test_woocommerce_export_init_validate_run(tmp_path: Path, emulator: Any) -> None:
    """WooCommerce export: the image parameter takes the first of `Images`' URLs (in the sandbox), `key: ID`,
    and the filled scaffold validates and runs once per product on the emulator."""
    woocommerce_export(tmp_path / "products.csv")
    text = _init_validate_run(tmp_path, emulator, "app_9Qx1", "products.csv")
    assert (
        "product_image: \"{{ row.Images.split(',')[0] | trim }}\"    # the first of the image URLs in 'Images'" in text
    )
    assert "  key: ID    # names each row: filled and unique in every row read" in text
    assert emulator.stats.starts == 3
    assert {v for _, v in emulator.stats.starts_by_inputs} == {
        f'{{"Product Image":"https://woo.test/{n}-1.jpg"}}' for n in ("hoodie", "beanie", "belt")
    }


def test_semicolon_sheet_with_bom_scaffold(tmp_path: Path) -> None:
    """A `;`-separated sheet with a BOM: init reads its columns and writes `delimiter: ";"`."""
    woocommerce_export(tmp_path / "products.csv", delimiter=";", bom=True)
    text = scaffold_for(HERO, tmp_path / "products.csv", tmp_path / "pipeline.yaml")
    assert "  delimiter: ;\n" in text
    assert "  key: ID" in text


def test_semicolon_sheet_init_validate_run(tmp_path: Path, emulator: Any) -> None:
    """A `;`-separated sheet with a BOM goes init -> validate -> run on the emulator."""
    woocommerce_export(tmp_path / "products.csv", delimiter=";", bom=True)
    _init_validate_run(tmp_path, emulator, "app_9Qx1", "products.csv")
    assert emulator.stats.starts == 3


def test_unfilled_todos_are_refused_by_validate(tmp_path: Path) -> None:
    """What init writes is refused by validate until its TODOs are replaced, naming the line."""
    text = init_pipeline_yaml(HERO, csv_path=None)
    path = write(tmp_path, text)
    todo_line = next(n for n, line in enumerate(text.splitlines(), 1) if "TODO:" in line and "#" not in line[:6])
    with pytest.raises(Exception, match=rf"pipeline\.yaml:{todo_line}") as e:
        matrix.validate_pipeline(spec.load_pipeline(path))
    assert "TODO" in str(e.value)
