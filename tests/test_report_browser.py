"""Browser test of the HTML gallery: real PNG downloads rendered by headless Debian chromium.

Run as a script (`.venv/bin/python tests/test_report_browser.py`) to regenerate docs/gallery.png.
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from lamina_batch.models import DownloadRecord, RunOutput, RunRecord, RunState
from lamina_batch.reports import ReportInput, write_html

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
]

PRODUCTS = [
    ("MUG-01", "Ceramic mug", "ocean blue", (38, 99, 235)),
    ("TEE-07", "Cotton tee", "coral", (244, 114, 94)),
    ("BAG-12", "Canvas tote", "sand", (214, 180, 120)),
    ("CAP-03", "Baseball cap", "forest", (34, 139, 84)),
    ("LMP-22", "Desk lamp", "amber", (245, 158, 11)),
    ("BTL-05", "Water bottle", "<b>violet</b>", (139, 92, 246)),
    ("SOK-30", "Wool socks", "charcoal", (71, 85, 105)),
    ("PEN-09", "Fountain pen", "crimson", (190, 24, 60)),
]


def png(path: Path, colour: tuple[int, int, int], *, w: int = 240, h: int = 180, banner: bool = False) -> None:
    """A small valid PNG: a soft background gradient with a coloured 'product' disc (or a wide band)."""
    raw = bytearray()
    cx, cy, rad = w / 2, h / 2 - 4, min(w, h) * 0.30
    for y in range(h):
        raw.append(0)  # filter type: none
        t = y / h
        bg = (246 - 14 * t, 247 - 12 * t, 250 - 8 * t)
        for x in range(w):
            # A soft elliptical shadow under the product, then the product with a highlight, anti-aliased.
            sd = math.hypot((x - cx) / (rad * 1.1), (y - (cy + rad * 0.95)) / (rad * 0.22))
            shadow = max(0.0, 1.0 - sd) * 0.25
            px = [c * (1.0 - shadow) for c in bg]
            if banner:
                edge = min(x - w * 0.1, w * 0.9 - x, y - h * 0.3, h * 0.7 - y)
            else:
                edge = rad - math.hypot(x - cx, y - cy)
            cover = max(0.0, min(1.0, edge + 0.5))
            if cover > 0:
                hl = math.hypot(x - (cx - rad * 0.35), y - (cy - rad * 0.35)) / (rad * 1.6)
                light = 1.25 - 0.55 * min(1.0, hl)
                fg = [min(255.0, c * light) for c in colour]
                px = [p * (1 - cover) + f * cover for p, f in zip(px, fg, strict=True)]
            raw += bytes(int(c) for c in px)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")
    )


def gallery_records(base: Path) -> list[RunRecord]:
    """Eight products, hero + banner; most completed with downloaded PNGs, a few failed / running / unknown."""
    records: list[RunRecord] = []
    for n, (sku, name, colour_name, rgb) in enumerate(PRODUCTS, start=1):
        row = {"sku": sku, "name": name, "colour": colour_name}
        item = f"item-{n}"
        states = {
            3: (RunState.COMPLETED, RunState.FAILED),
            5: (RunState.TIMED_OUT, RunState.PENDING),
            7: (RunState.COMPLETED, RunState.RUNNING),
            8: (RunState.UNKNOWN, RunState.PENDING),
        }.get(n, (RunState.COMPLETED, RunState.COMPLETED))
        for step, state in zip(("hero", "banner"), states, strict=True):
            outputs: tuple[RunOutput, ...] = ()
            downloads: tuple[DownloadRecord, ...] = ()
            error = None
            if state is RunState.COMPLETED:
                rel = f"out/{sku}/{step}.png"
                png(base / rel, rgb, banner=step == "banner")
                url = f"https://cdn.example/{sku}/{step}.png"
                outputs = (RunOutput("n1", f"{step.title()} Image", "image", url, "completed"),)
                downloads = (DownloadRecord(0, f"{step.title()} Image", url, rel, 1, "0" * 64),)
            elif state is RunState.FAILED:
                error = "Output 'Banner Image' failed: content policy refused the prompt"
            elif state is RunState.TIMED_OUT:
                error = "no result after 30m; remote run cancelled"
            elif state is RunState.UNKNOWN:
                error = "start reply lost and 2 candidate runs found; see --restart-unknown"
            records.append(
                RunRecord(
                    identity=f"{step}-{item}",
                    step_id=step,
                    app_id="app_7Hk2" if step == "hero" else "app_9Qx1",
                    row_number=n,
                    row_key=sku,
                    item_id=item,
                    row=row,
                    axes={},
                    inputs={},
                    output_labels=None,
                    needs={},
                    state=state,
                    remote_id=f"run_{step}_{n}" if state is not RunState.PENDING else None,
                    attempts=1,
                    outputs=outputs,
                    error=error,
                    downloads=downloads,
                )
            )
    return records


def chromium(*args: str, profile: Path) -> str:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def build_gallery(tmp: Path) -> Path:
    base = tmp / "batch"
    out = base / "reports" / "gallery.html"
    data = ReportInput("catalogue-hero", ("hero", "banner"), gallery_records(base), base)
    write_html(data, out)
    return out


def screenshot(page: Path, png_out: Path, profile: Path) -> None:
    chromium(
        f"--screenshot={png_out}",
        "--window-size=1280,900",
        "--virtual-time-budget=3000",
        page.as_uri(),
        profile=profile,
    )


def test_gallery_renders_cards_and_images(tmp_path: Path) -> None:
    """Chromium shows a card per item and every downloaded PNG loads (marked data-loaded=1 by onload)."""
    page = build_gallery(tmp_path)
    n_images = sum(len(r.downloads) for r in gallery_records(tmp_path / "again"))
    assert n_images == 10
    dom = chromium(
        "--dump-dom",
        "--window-size=1280,3000",
        "--virtual-time-budget=3000",
        page.as_uri(),
        profile=tmp_path / "profile",
    )
    assert dom.count('<article class="card') == 8
    assert dom.count("<img ") == n_images
    assert dom.count('data-loaded="1"') == n_images
    assert 'data-loaded="0"' not in dom
    assert "&lt;b&gt;violet&lt;/b&gt;" in dom


def test_gallery_status_filter_hides_other_cards(tmp_path: Path) -> None:
    """Opening the gallery at #failed runs the filter script: only cards with a failed run stay visible."""
    page = build_gallery(tmp_path)
    dom = chromium(
        "--dump-dom",
        "--virtual-time-budget=2000",
        page.as_uri() + "#failed",
        profile=tmp_path / "profile",
    )
    cards = re.findall(r"<article [^>]*>", dom)
    assert len(cards) == 8
    visible = [c for c in cards if " hidden" not in c]
    assert len(visible) == 1
    assert "failed" in visible[0]
    assert '<button class="f-failed on"' in dom


def test_gallery_screenshot(tmp_path: Path) -> None:
    """Chromium takes a full-size screenshot of the gallery (a valid, non-trivial PNG)."""
    page = build_gallery(tmp_path)
    shot = tmp_path / "gallery.png"
    screenshot(page, shot, tmp_path / "profile")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900)
    assert len(data) > 20_000


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        target = Path(__file__).resolve().parent.parent / "docs" / "gallery.png"
        screenshot(build_gallery(tmp), tmp / "gallery.png", tmp / "profile")
        shutil.copyfile(tmp / "gallery.png", target)
        sys.stdout.write(f"wrote {target}\n")
