"""The HTML gallery in a real browser (Debian chromium under Playwright): what is drawn, not just the DOM.

Pixels sampled from screenshots must show the test images' known colours inside their cards, and a filter must
make the hidden cards' colours vanish from the screen; wide Shopify-like rows must give cards at most a screen
tall with readable values; the offline approve/reject buttons must export a verdicts.json that imports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from review_helpers import (
    Picture,
    Run,
    browser_skip_reason,
    launch_chromium,
    read_png,
    shopify_rows,
    write_png,
    write_runs,
)

from lamina_batch.manifest import Manifest
from lamina_batch.models import DownloadRecord, RunOutput, RunRecord, RunState
from lamina_batch.reports import ReportInput, write_html
from lamina_batch.review import import_verdicts, list_reviews

SKIP = browser_skip_reason()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

# Flat product colours, each far from every colour of the page's own palette.
PRODUCTS = [
    ("MUG-01", "Ceramic mug", (38, 70, 200)),
    ("TEE-07", "Cotton tee", (250, 120, 30)),
    ("BAG-12", "Canvas tote", (200, 170, 110)),
    ("CAP-03", "Baseball cap", (20, 110, 60)),
    ("LMP-22", "Desk lamp", (230, 200, 20)),
    ("BTL-05", "Water bottle", (120, 40, 170)),
    ("SOK-30", "Wool socks", (0, 170, 190)),
    ("PEN-09", "Fountain pen", (170, 20, 50)),
]
# row number -> (hero state, banner state); every other row has both completed
STATES = {
    3: (RunState.COMPLETED, RunState.FAILED),
    5: (RunState.TIMED_OUT, RunState.PENDING),
    7: (RunState.COMPLETED, RunState.RUNNING),
    8: (RunState.UNKNOWN, RunState.PENDING),
}


def banner_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return (rgb[0] * 3 // 5, rgb[1] * 3 // 5, rgb[2] * 3 // 5)


def gallery_records(base: Path) -> list[RunRecord]:
    """Eight products, hero + banner, flat-colour PNGs downloaded for every completed run."""
    records: list[RunRecord] = []
    for n, (sku, name, rgb) in enumerate(PRODUCTS, start=1):
        row = {"sku": sku, "name": name, "colour": f"rgb{rgb}"}
        for step, state in zip(("hero", "banner"), STATES.get(n, (RunState.COMPLETED,) * 2), strict=True):
            outputs: tuple[RunOutput, ...] = ()
            downloads: tuple[DownloadRecord, ...] = ()
            if state is RunState.COMPLETED:
                rel = f"out/{sku}/{step}.png"
                write_png(base / rel, rgb if step == "hero" else banner_colour(rgb))
                url = f"https://cdn.example/{sku}/{step}.png"
                outputs = (RunOutput("n1", f"{step.title()} Image", "image", url, "completed"),)
                downloads = (DownloadRecord(0, f"{step.title()} Image", url, rel, 1, "0" * 64),)
            records.append(
                RunRecord(
                    identity=f"{step}-{n}",
                    step_id=step,
                    app_id="app_7Hk2",
                    row_number=n,
                    row_key=sku,
                    item_id=f"item-{n}",
                    row=row,
                    axes={},
                    inputs={},
                    output_labels=None,
                    needs={},
                    state=state,
                    remote_id=None if state is RunState.PENDING else f"run_{step}_{n}",
                    attempts=0 if state is RunState.PENDING else 1,
                    outputs=outputs,
                    error=None if state in (RunState.COMPLETED, RunState.PENDING) else f"{state.value} for a reason",
                    downloads=downloads,
                )
            )
    return records


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as b:
        yield b


def open_page(browser: Any, url: str, *, width: int = 1280, height: int = 2400) -> Any:
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    # every image on the screen has loaded (or failed); lazy ones further down are not waited for
    page.wait_for_function(
        "Array.from(document.images).every(i => i.complete || i.getBoundingClientRect().top > innerHeight)"
    )
    page.errors = errors
    return page


def shot(page: Any) -> Picture:
    return read_png(page.screenshot())


def build_gallery(tmp: Path, **extra: Any) -> Path:
    base = tmp / "batch"
    out = base / "reports" / "gallery.html"
    write_html(ReportInput("catalogue-hero", ("hero", "banner"), gallery_records(base), base, **extra), out)
    return out


def near(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 8) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_gallery_draws_each_image_inside_its_card(tmp_path: Path, browser: Any) -> None:
    """The centre of every thumbnail, in a screenshot, has its product's colour, and lies inside its card."""
    page = open_page(browser, build_gallery(tmp_path).as_uri())
    assert page.errors == []
    pic = shot(page)
    checked = 0
    for n, (_sku, _name, rgb) in enumerate(PRODUCTS, start=1):
        card = page.locator("article.card").nth(n - 1)
        cbox = card.bounding_box()
        for step, state in zip(("hero", "banner"), STATES.get(n, (RunState.COMPLETED,) * 2), strict=True):
            if state is not RunState.COMPLETED:
                continue
            box = card.locator(f'img[alt^="{step} "]').bounding_box()
            cx, cy = int(box["x"] + box["width"] / 2), int(box["y"] + box["height"] / 2)
            assert cbox["x"] <= cx <= cbox["x"] + cbox["width"]
            assert cbox["y"] <= cy <= cbox["y"] + cbox["height"]
            want = rgb if step == "hero" else banner_colour(rgb)
            got = pic.mean(cx - 5, cy - 5, cx + 5, cy + 5)
            assert near(got, want), (n, step, got, want)
            checked += 1
    assert checked == 10


def test_filters_remove_the_hidden_cards_pixels(tmp_path: Path, browser: Any) -> None:
    """After a status filter (and a search), only the matching cards' colours are left on the screen."""
    page = open_page(browser, build_gallery(tmp_path).as_uri())
    before = shot(page)
    for _sku, _name, rgb in PRODUCTS[:4]:
        assert before.count_near(rgb) > 2000
    page.click('nav button[data-filter="failed"]')
    after = shot(page)
    assert after.count_near(PRODUCTS[2][2]) > 2000  # row 3 is the one with a failed run
    for i, (_sku, _name, rgb) in enumerate(PRODUCTS):
        if i != 2:
            assert after.count_near(rgb) == 0, PRODUCTS[i]
            assert after.count_near(banner_colour(rgb)) == 0, PRODUCTS[i]
    page.click('nav button[data-filter="all"]')
    page.fill("#q", "cap-03")
    searched = shot(page)
    assert searched.count_near(PRODUCTS[3][2]) > 2000
    assert all(searched.count_near(rgb) == 0 for i, (_s, _n, rgb) in enumerate(PRODUCTS) if i != 3)


def test_wide_shopify_rows_give_readable_cards(tmp_path: Path, browser: Any) -> None:
    """45 Shopify columns: cards at most one 1280x900 screen tall, titled by the key, every shown value one line
    and wider than a few characters, the full text on hover, the rest behind the details toggle."""
    rows = shopify_rows(12)
    base = tmp_path / "batch"
    records = []
    for n, row in enumerate(rows, start=1):
        rel = f"out/{row['Handle']}/hero.png"
        write_png(base / rel, PRODUCTS[n % len(PRODUCTS)][2])
        records.append(
            RunRecord(
                f"hero-{n}", "hero", "app_7Hk2", n, row["Handle"], f"item-{n}", row, {}, {}, None, {},
                RunState.COMPLETED, remote_id=f"r{n}", attempts=1,
                outputs=(RunOutput("n1", "Hero Image", "image", "https://cdn.example/x.png", "completed"),),
                downloads=(DownloadRecord(0, "Hero Image", "https://cdn.example/x.png", rel, 1, "0" * 64),),
            )
        )  # fmt: skip
    out = base / "gallery.html"
    used = ("Title", "Body (HTML)", "Vendor", "Image Src", "Handle")
    write_html(
        ReportInput("shopify", ("hero",), records, base, template_columns=used, key_column="Handle"),
        out,
    )
    page = open_page(browser, out.as_uri(), height=900)
    page.screenshot(path=str(tmp_path / "wide.png"))
    cards = page.locator("article.card")
    assert cards.count() == 12
    heights = page.eval_on_selector_all("article.card", "els => els.map(e => e.getBoundingClientRect().height)")
    assert max(heights) <= 900, heights
    first = cards.first
    assert first.locator(".ttl").inner_text() == rows[0]["Handle"]
    shown = first.locator(":scope > .body > dl.kv > dt").all_inner_texts()
    assert shown == ["Title", "Body (HTML)", "Vendor", "Image Src"]  # the key is the title, not a line
    char = page.evaluate(
        "(() => { const s = document.createElement('span'); s.style.font = '12.5px system-ui'; s.textContent = 'x'; "
        "document.body.appendChild(s); const w = s.getBoundingClientRect().width; s.remove(); return w; })()"
    )
    boxes = page.eval_on_selector_all(
        ".body > dl.kv > dd, .body > dl.kv > dt, h2 .ttl",
        "els => els.map(e => { const r = e.getBoundingClientRect(); "
        "return [r.width, r.height, parseFloat(getComputedStyle(e).lineHeight) || 18]; })",
    )
    assert len(boxes) == 12 * 9
    for width, height, line in boxes:
        assert width >= 6 * char, (width, char)
        assert height <= line * 1.5, (height, line)  # one line: nothing wraps, not even inside a word
    body = first.locator("dd", has_text="A soft, breathable")
    assert body.get_attribute("title") == rows[0]["Body (HTML)"]
    first.locator("details.more summary").click()
    hidden_names = first.locator("details.more dt").all_inner_texts()
    assert len(hidden_names) == 45 - 5
    assert "Google Shopping / MPN" in hidden_names
    wrapped = page.eval_on_selector_all(
        "article.card:first-child details.more dd, article.card:first-child details.more dt",
        "els => els.filter(e => e.getBoundingClientRect().height > 1.5 * "
        "(parseFloat(getComputedStyle(e).lineHeight) || 18)).length",
    )
    assert wrapped == 0


def test_offline_verdicts_export_a_file_that_imports(tmp_path: Path, browser: Any) -> None:
    """Approve/reject in the static gallery (no server), kept across a reload; "Export verdicts" downloads a
    verdicts.json in the agreed format that `import_verdicts` records into the manifest."""
    manifest, out_dir = tmp_path / "p.lamina.sqlite", tmp_path
    runs = [
        Run(step, n, {"sku": f"S{n}", "name": f"Item {n}"}, key=f"S{n}", colour=PRODUCTS[n][2])
        for n in range(1, 5)
        for step in ("hero", "banner")
    ]
    write_runs(manifest, out_dir, runs)
    gallery = tmp_path / "gallery.html"
    with Manifest.open(manifest, pipeline_name="catalogue", writer=False) as m:
        write_html(ReportInput("catalogue", ("hero", "banner"), m.iter_runs(), out_dir), gallery)
    page = open_page(browser, gallery.as_uri(), height=1200)
    boxes = page.locator(".vd")
    assert boxes.count() == 8
    boxes.nth(0).locator(".vr").click()
    boxes.nth(0).locator(".vnote").fill("wrong colour")
    boxes.nth(3).locator(".vr").click()
    boxes.nth(4).locator(".va").click()
    boxes.nth(5).locator(".va").click()
    boxes.nth(5).locator(".va").click()  # a second click takes the decision back
    assert boxes.nth(5).get_attribute("data-verdict") == ""
    assert page.locator("#export b").inner_text() == "3"
    page.reload()
    page.wait_for_function("document.querySelector('#export b').textContent === '3'")
    assert boxes.nth(0).get_attribute("data-verdict") == "rejected"
    assert boxes.nth(0).locator(".vnote").input_value() == "wrong colour"
    assert page.locator("article.card.rejected").count() == 2
    page.select_option("#vf", "rejected")
    assert page.locator("article.card:not([hidden])").count() == 2
    with page.expect_download() as dl:
        page.click("#export")
    target = tmp_path / "verdicts.json"
    dl.value.save_as(str(target))
    assert dl.value.suggested_filename == "verdicts.json"
    doc = json.loads(target.read_text(encoding="utf-8"))
    assert set(doc) == {"pipeline", "exported_at", "verdicts"}
    assert doc["pipeline"] == "catalogue"
    got = {(v["step"], v["row_key"], v["verdict"], v["note"]) for v in doc["verdicts"]}
    assert got == {("hero", "S1", "rejected", "wrong colour"), ("banner", "S2", "rejected", None),
                   ("hero", "S3", "approved", None)}  # fmt: skip
    for v in doc["verdicts"]:
        assert set(v) == {"identity", "attempt", "verdict", "note", "at", "step", "row_number", "row_key"}
        assert v["attempt"] == 1
    summary = import_verdicts(manifest, "catalogue", target)
    assert (summary.recorded, summary.duplicates, summary.skipped) == (3, 0, ())
    listed = {(e.record.step_id, e.record.row_key): e.verdict for e in list_reviews(manifest, "catalogue")}
    assert listed[("hero", "S1")] is not None
    assert listed[("hero", "S1")].verdict == "rejected"
    assert listed[("hero", "S1")].note == "wrong colour"
    assert sum(1 for v in listed.values() if v is not None) == 3
    assert import_verdicts(manifest, "catalogue", target).duplicates == 3
    assert page.errors == []
