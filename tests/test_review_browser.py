"""The review page in a real browser (Debian chromium under Playwright): keyboard review saved at once and shown
on reload, undo, filters, new completions appearing while the page is open, cross-site posts refused, and a
few thousand images loaded lazily."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_env, run_cli, write_pipeline
from review_helpers import Run, browser_skip_reason, launch_chromium, read_png, write_runs

from lamina_batch.emulator import Emulator
from lamina_batch.models import RunState
from lamina_batch.review import ReviewSource, ReviewThread
from lamina_batch.verdicts import VerdictStore

SKIP = browser_skip_reason()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

NAME = "catalogue"
COLOURS = [(220, 40, 40), (40, 80, 220), (30, 150, 70), (240, 170, 20), (150, 50, 190), (0, 160, 180)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as b:
        yield b


def catalogue(tmp_path: Path, rows: int = 6) -> tuple[Path, ReviewSource]:
    """`rows` products with hero + banner completed (PNGs of known colours); row 4's banner failed."""
    manifest = tmp_path / "p.lamina.sqlite"
    runs = []
    for n in range(1, rows + 1):
        row = {"sku": f"SKU-{n}", "name": f"Product {n}", "colour": "c", "notes": "x" * 400}
        for step in ("hero", "banner"):
            state = RunState.FAILED if (n, step) == (4, "banner") else RunState.COMPLETED
            colour = COLOURS[(n - 1) % len(COLOURS)] if step == "hero" else (90, 90, 90)
            runs.append(Run(step, n, row, key=f"SKU-{n}", state=state, colour=colour, error="policy"))
    write_runs(manifest, tmp_path, runs)
    return manifest, ReviewSource(manifest, NAME, ("hero", "banner"), tmp_path, template_columns=("name", "colour"))


def open_review(browser: Any, url: str, *, height: int = 900) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": height})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector(".tile.focus")
    return page


def until(check: Callable[[], Any], timeout: float = 15.0) -> None:
    """Poll `check` until it is truthy, failing after `timeout` seconds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def verdicts(manifest: Path) -> dict[str, tuple[str, str | None]]:
    with VerdictStore.open(manifest, writable=False) as store:
        return {k[0]: (v.verdict, v.note) for k, v in store.latest().items()}


def test_reject_two_by_keyboard_then_reload(tmp_path: Path, browser: Any) -> None:
    """j/k move, r + note + Enter rejects, a approves; each is in the manifest at once and shown on reload;
    u undoes the last; ? opens the help."""
    manifest, src = catalogue(tmp_path)
    with ReviewThread(src) as srv:
        page = open_review(browser, srv.url)
        assert page.locator(".tile").count() == 12
        assert page.locator(".tile.focus").get_attribute("data-identity") == "hero-1"
        page.keyboard.press("j")
        page.keyboard.press("k")
        page.keyboard.press("r")
        page.keyboard.type("wrong colour")
        page.keyboard.press("Enter")
        page.wait_for_selector('.tile.v-rejected[data-identity="hero-1"]')
        assert page.locator(".tile.focus").get_attribute("data-identity") == "banner-1"  # moved on
        page.keyboard.press("j")
        page.keyboard.press("r")
        page.keyboard.press("Enter")
        page.wait_for_selector('.tile.v-rejected[data-identity="hero-2"]')
        page.keyboard.press("a")
        page.wait_for_selector('.tile.v-approved[data-identity="banner-2"]')
        assert verdicts(manifest) == {
            "hero-1": ("rejected", "wrong colour"),
            "hero-2": ("rejected", None),
            "banner-2": ("approved", None),
        }
        page.keyboard.press("u")
        page.wait_for_selector('.tile[data-identity="banner-2"][data-verdict="unreviewed"]')
        assert "banner-2" not in verdicts(manifest)
        page.reload()
        page.wait_for_selector('.tile.v-rejected[data-identity="hero-2"]')
        assert page.locator(".tile.v-rejected").count() == 2
        assert page.locator('.tile[data-identity="hero-1"] .note').inner_text() == "wrong colour"
        assert "2 rejected" in page.locator("#sub").inner_text()
        page.keyboard.press("?")
        assert page.locator("#help").is_visible()
        page.keyboard.press("Escape")
        assert page.locator("#help").is_hidden()
        hero = page.locator('.tile[data-identity="hero-1"] img')
        until(lambda: hero.evaluate("i => i.complete && i.naturalWidth > 0"))
        hero.scroll_into_view_if_needed()  # a reload may restore the scroll position of the last focused tile
        shot = read_png(page.screenshot())
        assert shot.count_near(COLOURS[0]) > 5000  # the images are drawn, not just in the DOM
        assert page.errors == []


def test_filters_and_search(tmp_path: Path, browser: Any) -> None:
    """Step, status and verdict filters and the search hide tiles and rows; j moves only among what is shown."""
    _, src = catalogue(tmp_path)
    with ReviewThread(src) as srv:
        page = open_review(browser, srv.url)
        page.select_option("#f-step", "banner")
        assert page.locator(".tile:not([hidden])").count() == 6
        page.select_option("#f-state", "failed")
        assert page.locator(".tile:not([hidden])").count() == 1
        assert page.locator(".row:not([hidden])").count() == 1
        page.select_option("#f-state", "")
        page.select_option("#f-step", "")
        page.fill("#q", "sku-3")
        page.locator("#q").press("Escape")
        assert page.locator(".tile:not([hidden])").count() == 2
        page.keyboard.press("j")
        page.keyboard.press("a")
        page.wait_for_selector('.tile.v-approved[data-identity="hero-3"]')
        page.fill("#q", "")
        page.select_option("#f-verdict", "approved")
        assert page.locator(".tile:not([hidden])").count() == 1
        page.select_option("#f-verdict", "unreviewed")
        assert page.locator(".tile:not([hidden])").count() == 10  # the failed banner has no verdict to give
        assert page.errors == []


def test_new_completions_appear_while_the_page_is_open(tmp_path: Path, browser: Any) -> None:
    """Runs a batch completes after the page loaded show up without a reload; a focused tile stays focused."""
    manifest, src = catalogue(tmp_path, rows=2)
    with ReviewThread(src) as srv:
        page = open_review(browser, srv.url)
        page.keyboard.press("j")
        assert page.locator(".tile").count() == 4
        more = [Run("hero", n, {"sku": f"SKU-{n}", "name": f"P{n}"}, key=f"SKU-{n}", colour=COLOURS[n]) for n in (3, 4)]
        write_runs(manifest, tmp_path, more)
        page.locator(".tile").nth(5).wait_for(timeout=15000)  # the page polls the manifest every 2 s
        assert page.locator(".tile").count() == 6
        assert page.locator(".tile.focus").get_attribute("data-identity") == "banner-1"
        assert "3 rows" not in page.locator("#sub").inner_text()
        assert page.locator("#sub").inner_text().startswith("4 rows · 6 runs")


def test_a_cross_site_page_cannot_record_verdicts(tmp_path: Path, browser: Any) -> None:
    """A page on another origin posting to the review server (fetch or a form) is refused; nothing recorded."""
    manifest, src = catalogue(tmp_path, rows=1)
    with ReviewThread(src) as srv:
        endpoint = srv.url + "api/verdict"
        attack = f"""<!doctype html><body>
<form id="f" method="POST" action="{endpoint}" enctype="text/plain">
<input name='{{"identity":"hero-1","attempt":1,"verdict":"rejected","x":"' value='"}}'></form>
<script>
fetch("{endpoint}", {{method: "POST", mode: "no-cors", body: JSON.stringify(
  {{identity: "hero-1", attempt: 1, verdict: "rejected"}})}}).finally(() => {{
  document.title = "fetched"; document.getElementById("f").submit(); }});
</script></body>"""
        page = browser.new_page()
        page.route("http://evil.test/", lambda route: route.fulfill(body=attack, content_type="text/html"))
        page.goto("http://evil.test/")
        page.wait_for_url(endpoint)
        assert "missing or wrong review token" in page.content()
        # chromium itself may stop the fetch (a public page calling loopback); whatever got through was refused
        stats = srv.server.stats
        assert stats.refused == stats.requests >= 1
        assert stats.verdicts == 0
        assert verdicts(manifest) == {}
        page.close()


def test_a_few_thousand_images_load_lazily(tmp_path: Path, browser: Any) -> None:
    """2,000 images: the page renders every tile but fetches only the images near the screen; moving to the
    last tile with the keyboard loads its image."""
    manifest = tmp_path / "p.lamina.sqlite"
    runs = [
        Run(step, n, {"sku": f"S{n:04d}", "name": f"Item {n}"}, key=f"S{n:04d}", colour=COLOURS[n % len(COLOURS)])
        for n in range(1, 1001)
        for step in ("hero", "banner")
    ]
    write_runs(manifest, tmp_path, runs, one_commit=True)
    src = ReviewSource(manifest, NAME, ("hero", "banner"), tmp_path, template_columns=("name",))
    with ReviewThread(src) as srv:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url) if "/files/" in r.url else None)
        page.goto(srv.url)
        page.wait_for_selector(".tile.focus", timeout=30000)
        assert page.locator(".tile").count() == 2000
        first = page.locator('.tile[data-identity="hero-1"] img')
        until(lambda: first.evaluate("i => i.complete && i.naturalWidth > 0"))
        assert 0 < len(fetched) < 200
        for _ in range(6):
            page.keyboard.press("j")
        assert page.locator(".tile.focus").get_attribute("data-identity") == "hero-4"
        last = page.locator('.tile[data-identity="banner-1000"] img')
        last.scroll_into_view_if_needed()
        until(lambda: last.evaluate("i => i.complete && i.naturalWidth > 0"))
        assert any("/files/banner-1000/" in u for u in fetched)
        assert len(fetched) < 400


# --------------------------------------------------------------------------- the whole loop, end to end


def _review_process(pipeline: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina_batch", "review", str(pipeline)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_review_export_import_and_redo_end_to_end(
    tmp_path: Path, browser: Any, make_emulator: Callable[..., Emulator]
) -> None:
    """A batch run on the emulator; two heroes rejected by keyboard on the served page (kept through a kill -9 of
    the server); a banner rejected offline in the static gallery, exported and imported; `run --redo rejected`
    starts exactly those three runs and the two banners downstream of the heroes (counted at the emulator); the
    page then shows the new, unreviewed attempts beside the rejected ones, whose files moved to history."""
    emu = make_emulator()
    pipeline = write_pipeline(tmp_path, 3, download=True)
    env = cli_env(emu)
    assert run_cli(pipeline, env).returncode == 0

    proc, url = _review_process(pipeline, env)
    try:
        page = open_review(browser, url)
        tiles = page.locator(".tile")
        assert tiles.count() == 6
        first, second = tiles.nth(0).get_attribute("data-identity"), tiles.nth(2).get_attribute("data-identity")
        page.keyboard.press("r")
        page.keyboard.type("wrong colour")
        page.keyboard.press("Enter")
        page.wait_for_selector(f'.tile.v-rejected[data-identity="{first}"]')
        page.keyboard.press("j")
        page.keyboard.press("r")
        page.keyboard.press("Enter")
        page.wait_for_selector(f'.tile.v-rejected[data-identity="{second}"]')
        page.close()
    finally:
        proc.kill()  # SIGKILL: each verdict was committed when it was given
        proc.communicate(timeout=30)
    listed = json.loads(_cli(env, "review", str(pipeline), "--list", "--json").stdout)
    assert {(e["row_key"], e["step"]) for e in listed if e["verdict"] == "rejected"} == {
        ("S000", "hero"),
        ("S001", "hero"),
    }

    gallery = tmp_path / "gallery.html"
    assert _cli(env, "report", str(pipeline), "--format", "html", "-o", str(gallery)).returncode == 0
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(gallery.as_uri())
    boxes = page.locator(".vd")
    assert boxes.count() == 6
    assert boxes.nth(0).get_attribute("data-verdict") == "rejected"  # the page's verdicts are in the gallery
    boxes.nth(5).locator(".vr").click()  # row 3's banner
    with page.expect_download() as dl:
        page.click("#export")
    exported = tmp_path / "verdicts.json"
    dl.value.save_as(str(exported))
    page.close()
    imported = _cli(env, "review", str(pipeline), "--import", str(exported))
    assert imported.returncode == 0, imported.stderr
    assert "1 verdicts recorded" in imported.stdout

    plan = _cli(env, "plan", str(pipeline), "--redo", "rejected")
    assert "would start 5 runs (0 new, 0 to retry, 5 to redo)" in plan.stdout
    starts = emu.stats.starts
    before = emu.stats.starts_by_inputs
    redo = run_cli(pipeline, env, "--redo", "rejected")
    assert redo.returncode == 0, redo.stderr
    assert emu.stats.starts - starts == 5
    started = emu.stats.starts_by_inputs - before
    heroes = sorted(json.loads(k[1])["Prompt"] for k in started if k[0] == "app_7Hk2")
    assert heroes == ["Studio photo of Item 0 in red", "Studio photo of Item 1 in blue"]
    assert sorted(json.loads(k[1])["Headline"] for k in started if k[0] == "app_9Qx1") == ["Item 0", "Item 1", "Item 2"]
    assert (tmp_path / "out" / "S000" / "history" / "hero.attempt-1.png").is_file()

    proc, url = _review_process(pipeline, env)
    try:
        page = open_review(browser, url)
        hero = page.locator(f'.tile[data-identity="{first}"]')
        assert hero.get_attribute("data-verdict") == "unreviewed"  # the new attempt awaits review
        captions = hero.locator(".atts figcaption").all_inner_texts()
        assert captions == ["#2 · now", "#1 · rejected"]
        old = hero.locator(".atts figure.a-rejected img")
        until(lambda: old.evaluate("i => i.complete && i.naturalWidth > 0"))  # served from the history folder
        assert page.errors == []
        page.close()
    finally:
        proc.kill()
        proc.communicate(timeout=30)
