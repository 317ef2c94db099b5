"""Regenerate the README's screenshots with headless Debian chromium (Playwright), from real batches run on the
built-in emulator in a temporary folder:

- docs/gallery.png       the HTML gallery of examples/catalogue
- docs/gallery-wide.png  the gallery of a Shopify-style 45-column product export (cards stay readable)
- docs/review.png        the review page of examples/catalogue after a few verdicts given by keyboard and a
                         `run --redo rejected`: the redone row shows its new attempts beside the rejected ones

Usage: `.venv/bin/python docs/make_screenshot.py [OUT_DIR]` (default: docs/).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers and the wide row set the tests use

from review_helpers import CHROMIUM, browser_skip_reason, launch_chromium, shopify_rows  # noqa: E402

from lamina_batch.manifest import Manifest  # noqa: E402
from lamina_batch.reports import ReportInput, write_html  # noqa: E402
from lamina_batch.reports.fields import template_columns  # noqa: E402
from lamina_batch.review import ReviewThread, review_source  # noqa: E402
from lamina_batch.spec import load_pipeline  # noqa: E402
from lamina_batch.verdicts import VerdictStore  # noqa: E402

EXAMPLE = ROOT / "examples" / "catalogue"
WIDE_PIPELINE = """version: 1
name: shopify-products
matrix:
  csv: products_export.csv
  key: Handle
steps:
  - id: hero
    app: app_7Hk2
    inputs:
      Prompt: "Studio photo of {{ row.Title }} by {{ row.Vendor }}, {{ row['Option1 Value'] }}, white background"
download:
  path: "out/{{ row.Handle }}/{{ step.id }}{{ output.ext }}"
"""


def run_on_emulator(pipeline: Path, *flags: str) -> Path:
    """Run a pipeline on the in-process emulator; return its manifest (whatever the default name is)."""
    cmd = [sys.executable, "-m", "lamina_batch", "run", str(pipeline), "--emulator", "--no-progress", "--quiet", *flags]
    subprocess.run(cmd, check=True, cwd=pipeline.parent, timeout=600)
    found = sorted(pipeline.parent.glob("*.sqlite"))
    if not found:
        raise SystemExit(f"make_screenshot: no manifest written beside {pipeline}")
    return found[0]


def gallery(pipeline_path: Path, manifest: Path, out: Path) -> Path:
    """The gallery as the report command writes it once the spec's columns are wired in."""
    pipeline = load_pipeline(pipeline_path)
    base = pipeline.download.base_dir if pipeline.download else pipeline_path.parent
    with Manifest.open(manifest, pipeline_name=pipeline.name, writer=False) as m:
        data = ReportInput(
            pipeline.name,
            [s.id for s in pipeline.steps],
            m.iter_runs(),
            base,
            template_columns=template_columns(pipeline),
            key_column=pipeline.matrix.key,
        )
        write_html(data, out)
    return out


def shoot(
    browser: object, url: str, target: Path, *, height: int = 1000, review: bool = False, wait: str | None = None
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": height})  # type: ignore[attr-defined]
    page.goto(url)
    if wait is not None:
        page.wait_for_selector(wait)
    if review:
        page.wait_for_selector(".tile.focus")
        for key in ("a", "a", "r"):  # approve row 1's two images, then reject the next with a note
            page.keyboard.press(key)
            page.wait_for_timeout(150)  # each verdict lands before the next key, as a person types
        page.keyboard.type("colour too dark, should be matte black")
        page.keyboard.press("Enter")
        page.wait_for_selector(".tile.v-rejected")
        page.keyboard.press("a")
        page.wait_for_selector('#sub:has-text("3 approved")')
        page.wait_for_selector("#toast", state="hidden", timeout=5000)
        page.keyboard.press("Home")
    # polled through the page's own elements: the review page's CSP forbids evaluating a string
    deadline = time.monotonic() + 30
    on_screen_loaded = "els => els.every(i => i.complete || i.getBoundingClientRect().top > innerHeight)"
    while not page.locator("img").evaluate_all(on_screen_loaded):
        if time.monotonic() > deadline:
            raise SystemExit(f"make_screenshot: images of {url} did not load")
        page.wait_for_timeout(100)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    page.screenshot(path=str(tmp), type="png")
    tmp.replace(target)
    page.close()
    print(f"wrote {target}")


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0]).resolve() if argv else ROOT / "docs"
    reason = browser_skip_reason()
    if reason is not None:
        print(f"make_screenshot: {reason} ({CHROMIUM})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lamina-shot-") as tmp:
        work = Path(tmp)
        example = work / "catalogue"
        shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("out", "report", "*.sqlite*"))
        manifest = run_on_emulator(example / "pipeline.yaml")
        wide = work / "shopify"
        wide.mkdir()
        rows = shopify_rows(16)
        with (wide / "products_export.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (wide / "pipeline.yaml").write_text(WIDE_PIPELINE, encoding="utf-8")
        wide_manifest = run_on_emulator(wide / "pipeline.yaml")
        with launch_chromium() as browser:
            page = gallery(example / "pipeline.yaml", manifest, work / "gallery.html")
            shoot(browser, page.as_uri(), out_dir / "gallery.png")
            page = gallery(wide / "pipeline.yaml", wide_manifest, work / "wide.html")
            shoot(browser, page.as_uri(), out_dir / "gallery-wide.png", height=900)
            pipeline = load_pipeline(example / "pipeline.yaml")
            source = review_source(pipeline, manifest=manifest)
            with ReviewThread(source) as server:
                shoot(browser, server.url, work / "verdicts.png", height=1000, review=True)
            with VerdictStore.open(manifest, writable=False) as store:
                print(f"review: {len(store.latest())} verdicts saved by keyboard")
            # a varied prompt, so the emulator draws a new image (the same inputs may give the same one)
            take = "Prompt=Studio photo of the {{ row.name }} in {{ row.colour }}, take {{ attempt }}"
            run_on_emulator(example / "pipeline.yaml", "--redo", "rejected", "--redo-set", take)
            with ReviewThread(source) as server:
                shoot(browser, server.url, out_dir / "review.png", height=1000, wait=".atts")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
