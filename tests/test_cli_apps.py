"""`apps show` and `init` on the command line: parameters listed by key beside name, `init` mapping a sheet by
name and content (scaffold_for) and writing inputs by key; and the catalogue exports as they come (Shopify,
WooCommerce, a BOM + `;` sheet) through the real CLI: init -> validate -> run on the emulator, the README's
Shopify pipelines run as written, and the gallery's cards titled by what names each row."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina_batch.cli import main
from lamina_batch.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
CATALOGUES = ROOT / "tests" / "fixtures" / "catalogues"


@pytest.fixture
def api_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """LAMINA_BASE_URL / LAMINA_API_KEY point at a fast in-process emulator."""
    monkeypatch.setenv("LAMINA_BASE_URL", emulator.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emulator.key)
    return emulator


def cli(folder: Path, emu: Emulator, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `lamina-batch` process in `folder`, pointed at `emu`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "COV_", "GITHUB_STEP"))}
    env.update(LAMINA_BASE_URL=emu.base_url, LAMINA_API_KEY=emu.key, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", *args],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_apps_list_and_show_give_each_apps_credits(
    make_emulator: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`apps list` shows the credits per run the list states; `apps show` asks for the app's estimate (expected,
    range, balance): one estimate request."""
    emu = make_emulator(credits=50)
    monkeypatch.setenv("LAMINA_BASE_URL", emu.base_url)
    monkeypatch.setenv("LAMINA_API_KEY", emu.key)
    assert main(["apps", "list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["app_7Hk2"][3] == "4"
    assert rows["app_9Qx1"][3] == "6"
    assert main(["apps", "show", "app_7Hk2"]) == 0
    assert "credits: 4 a run (3-6); balance 50" in capsys.readouterr().out
    assert sum(1 for r in emu.stats.requests if r.path.endswith("/estimate")) == 1


def card_titles(gallery: Path) -> list[str]:
    text = gallery.read_text(encoding="utf-8")
    return [html.unescape(t) for t in re.findall(r'<span class="ttl" title="[^"]*">([^<]*)</span>', text)]


def test_apps_show_lists_each_key_beside_its_name(api_env: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """`apps show`: a KEY column before NAME, so both spellings an input may use are on one line."""
    assert main(["apps", "show", "app_7Hk2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("KEY"))
    assert header.split() == ["KEY", "NAME", "TYPE", "REQUIRED/DEFAULT", "VALUES"]
    rows = {line.split("  ")[0].strip(): line for line in lines}
    assert re.match(r"aspect_ratio +Aspect Ratio +options +default \"1:1\" +options: 1:1", rows["aspect_ratio"])
    assert re.match(r"prompt +Prompt +text +required", rows["prompt"])


def test_init_writes_inputs_by_key_with_the_name_in_a_comment(
    api_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every parameter of the app has a key: `init` writes inputs by key, each under a comment with its name."""
    out = tmp_path / "pipeline.yaml"
    assert main(["init", "app_7Hk2", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert '      prompt: "{{ row.prompt }}"' in text
    assert "      # Prompt: text; no default: must be set" in text
    assert "      # aspect_ratio: '1:1'    (uncomment to override the default)" in text


def test_init_reads_a_semicolon_sheet_and_refuses_a_missing_one(
    api_env: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`init --csv` samples the sheet as `init` does (its delimiter told from the header), and a sheet that is
    not there is one line naming it, before any request."""
    out = tmp_path / "pipeline.yaml"
    assert main(["init", "app_7Hk2", "--csv", str(CATALOGUES / "bom_semicolon.csv"), "-o", str(out)]) == 0
    assert "  delimiter: ;\n" in out.read_text(encoding="utf-8")
    requests = len(api_env.stats.requests)
    assert main(["init", "app_7Hk2", "--csv", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "x.yaml")]) == 2
    assert "nope.csv: --csv: CSV file not found" in capsys.readouterr().err
    assert len(api_env.stats.requests) == requests


@pytest.mark.parametrize(
    ("fixture", "app", "runs", "mapped"),
    [
        (
            "shopify_products.csv",
            "app_7Hk2",
            2,  # one per product: `where` keeps the first row of each Handle
            "reference_image: \"{{ row['Image Src'] }}\"    # the image URLs in 'Image Src'",
        ),
        (
            "woocommerce_products.csv",
            "app_9Qx1",
            4,
            "product_image: \"{{ row.Images.split(',')[0] | trim }}\"    # the first of the image URLs in 'Images'",
        ),
        ("bom_semicolon.csv", "app_7Hk2", 2, "  delimiter: ;"),
    ],
)
def test_catalogue_exports_go_init_validate_run(
    fixture: str, app: str, runs: int, mapped: str, emulator: Emulator, tmp_path: Path
) -> None:
    """A catalogue export as it comes: `init` maps it by content (and a `;` sheet's delimiter) and leaves no
    `TODO:` (issue 24: what it writes passes validate); `validate --check-apps` passes as written and `run`
    completes one run per kept row on the emulator, the gallery titling each card by its key."""
    shutil.copy(CATALOGUES / fixture, tmp_path / "products_export.csv")
    made = cli(tmp_path, emulator, "init", app, "--csv", "products_export.csv", "-o", "pipeline.yaml")
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "pipeline.yaml").read_text(encoding="utf-8")
    assert mapped in text
    todo_lines = [n for n, line in enumerate(text.splitlines(), 1) if "'TODO:" in line and "#" not in line[:8]]
    assert todo_lines == []
    checked = cli(tmp_path, emulator, "validate", "pipeline.yaml", "--check-apps")
    assert checked.returncode == 0, checked.stderr
    assert emulator.stats.starts == 0
    ran = cli(tmp_path, emulator, "run", "pipeline.yaml", "--no-progress", "--report", "html=gallery.html")
    assert ran.returncode == 0, ran.stderr
    assert emulator.stats.starts == runs
    assert emulator.stats.duplicate_starts() == {}
    key = re.search(r"^  key: (\S+)", text, re.MULTILINE)
    assert key is not None
    titles = card_titles(tmp_path / "gallery.html")
    assert len(titles) == runs
    assert not [t for t in titles if t.startswith("row ")]


@pytest.mark.parametrize("fixture", ["products.ods", "products.xls"])
def test_init_reads_a_workbook_and_what_it_writes_runs(fixture: str, emulator: Emulator, tmp_path: Path) -> None:
    """`init APP --csv products.ods` (or .xls) samples the workbook's first sheet by the conversion rules and
    writes `matrix.xlsx:` with a key; validate passes and run completes a run per row."""
    shutil.copy(CATALOGUES / fixture, tmp_path / fixture)
    made = cli(tmp_path, emulator, "init", "app_7Hk2", "--csv", fixture, "-o", "pipeline.yaml")
    assert made.returncode == 0, made.stderr
    text = (tmp_path / "pipeline.yaml").read_text(encoding="utf-8")
    assert f"  xlsx: {fixture}\n" in text
    assert re.search(r"^  key: sku ", text, re.MULTILINE)
    checked = cli(tmp_path, emulator, "validate", "pipeline.yaml", "--check-apps")
    assert checked.returncode == 0, checked.stderr
    ran = cli(tmp_path, emulator, "run", "pipeline.yaml", "--no-progress")
    assert ran.returncode == 0, ran.stderr
    assert emulator.stats.starts == 2


def readme_catalogue_pipelines() -> list[str]:
    """The complete pipelines (`version: 1`) in the README's catalogue section, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("**Catalogue exports.**", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return [b for b in blocks if b.startswith("version: 1")]


def test_the_readme_shopify_pipelines_run_as_written(emulator: Emulator, tmp_path: Path) -> None:
    """The README's two Shopify pipelines on the Shopify fixture: `key: Handle` + `where` runs once per product
    (cards titled by Handle); `fill_down` + `key: Variant SKU` once per variant, each variant's prompt carrying
    its product's title (cards titled by SKU)."""
    pipelines = readme_catalogue_pipelines()
    assert len(pipelines) == 2
    shutil.copy(CATALOGUES / "shopify_products.csv", tmp_path / "products_export.csv")
    (tmp_path / "heroes.yaml").write_text(pipelines[0], encoding="utf-8")
    ran = cli(tmp_path, emulator, "run", "heroes.yaml", "--no-progress", "--report", "html=heroes.html")
    assert ran.returncode == 0, ran.stderr
    assert emulator.stats.starts == 2
    assert card_titles(tmp_path / "heroes.html") == ["example-t-shirt", "mountain-poster"]

    (tmp_path / "variants.yaml").write_text(pipelines[1], encoding="utf-8")
    ran = cli(tmp_path, emulator, "run", "variants.yaml", "--no-progress", "--report", "html=variants.html")
    assert ran.returncode == 0, ran.stderr
    assert emulator.stats.starts == 2 + 5
    assert card_titles(tmp_path / "variants.html") == ["TS-S", "TS-M", "TS-L", "MP-912", "MP-1824"]
    prompts = [inputs for (app, inputs) in emulator.stats.starts_by_inputs if "size" in inputs]
    assert any("Example T-Shirt in size Large, by Acme" in p for p in prompts)


def test_cards_without_a_key_are_titled_by_the_first_template_column(emulator: Emulator, tmp_path: Path) -> None:
    """With `where` and no `key` (the issue's wide Shopify batch) a card is titled by the first column a template
    reads (the product's title), never "row N"; `report` writes the same gallery from the manifest."""
    shutil.copy(CATALOGUES / "shopify_products.csv", tmp_path / "products_export.csv")
    pipeline = readme_catalogue_pipelines()[0].replace("  key: Handle\n", "")
    (tmp_path / "pipeline.yaml").write_text(pipeline, encoding="utf-8")
    ran = cli(tmp_path, emulator, "run", "pipeline.yaml", "--no-progress", "--report", "html=run.html")
    assert ran.returncode == 0, ran.stderr
    wanted = ["Example T-Shirt", 'Mountain Poster 9" x 12"']
    assert card_titles(tmp_path / "run.html") == wanted
    reported = cli(tmp_path, emulator, "report", "pipeline.yaml", "-f", "html", "-o", "report.html")
    assert reported.returncode == 0, reported.stderr
    assert card_titles(tmp_path / "report.html") == wanted
