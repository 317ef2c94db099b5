"""Helpers shared by the report, review and verdict tests: flat-colour PNGs and a reader for screenshots, real
manifests written through the Manifest API, a wide Shopify-like row set, and Debian chromium under Playwright."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina_batch.manifest import Manifest
from lamina_batch.models import DownloadRecord, MatrixItem, PlannedRun, RunOutput, RunState

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # runs as root in containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def browser_skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None when Playwright and Debian's chromium are both present."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs Playwright for Python (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """A headless Debian chromium driven by Playwright (its own browser download is not used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# --------------------------------------------------------------------------- PNG in and out


def write_png(path: Path, colour: tuple[int, int, int], *, w: int = 160, h: int = 120) -> None:
    """A flat-colour PNG: its colour is what a screenshot of it must show."""
    row = b"\x00" + bytes(colour) * w
    raw = row * h

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@dataclass
class Picture:
    """A decoded 8-bit RGB(A) PNG (what chromium screenshots are)."""

    width: int
    height: int
    channels: int
    data: bytes = field(repr=False)
    _histogram: Counter[tuple[int, int, int]] | None = field(default=None, repr=False)

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * self.width + x) * self.channels
        return self.data[i], self.data[i + 1], self.data[i + 2]

    def histogram(self) -> Counter[tuple[int, int, int]]:
        """How many pixels have each colour (counted once per picture)."""
        if self._histogram is None:
            d, ch = self.data, self.channels
            self._histogram = Counter(zip(d[0::ch], d[1::ch], d[2::ch], strict=True))
        return self._histogram

    def count_near(self, colour: tuple[int, int, int], tol: int = 6) -> int:
        """Pixels within `tol` of `colour` on every channel."""
        return sum(
            n for c, n in self.histogram().items() if all(abs(a - b) <= tol for a, b in zip(c, colour, strict=True))
        )

    def mean(self, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int]:
        """The mean colour of a box (x1, y1 exclusive)."""
        sums, n = [0, 0, 0], 0
        for y in range(y0, y1):
            for x in range(x0, x1):
                for k, v in enumerate(self.pixel(x, y)):
                    sums[k] += v
                n += 1
        return (sums[0] // n, sums[1] // n, sums[2] // n)


def read_png(blob: bytes) -> Picture:
    """Decode a non-interlaced 8-bit RGB or RGBA PNG (all five scanline filters)."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = depth = ctype = 0
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        tag, body = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert body[12] == 0, "interlaced PNG"
        elif tag == b"IDAT":
            idat += body
    assert depth == 8, depth
    assert ctype in (2, 6), ctype
    ch = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), width * ch
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b, c = prev[i], prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out += line
        prev = line
    return Picture(width, height, ch, bytes(out))


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Run:
    """One run to write into a test manifest. `colour` (with state completed) makes a downloaded PNG."""

    step: str
    row_number: int
    row: Mapping[str, str]
    state: RunState = RunState.COMPLETED
    key: str | None = None
    axes: Mapping[str, str] | None = None
    colour: tuple[int, int, int] | None = None
    remote_image: str | None = None
    error: str | None = None


def identity_of(run: Run) -> str:
    axes = "-".join(f"{k}{v}" for k, v in (run.axes or {}).items())
    return f"{run.step}-{run.row_number}{'-' + axes if axes else ''}"


def planned(run: Run) -> PlannedRun:
    axes = dict(run.axes or {})
    item_id = f"item-{run.row_number}" + ("-" + "-".join(f"{k}{v}" for k, v in axes.items()) if axes else "")
    item = MatrixItem(run.row_number, dict(run.row), axes, run.key, item_id)
    app = "app_7Hk2" if run.step == "hero" else "app_9Qx1"
    return PlannedRun(identity_of(run), run.step, app, item, {"Prompt": "p"}, None)


def write_runs(
    manifest: Path, out_dir: Path, runs: Sequence[Run], *, name: str = "catalogue", one_commit: bool = False
) -> list[str]:
    """Write `runs` into a real manifest (created if needed) the way a batch does: planned, started with a
    remote id, finished, and for completed runs with a colour, a PNG downloaded under `out_dir`.
    `one_commit`: all in one transaction (thousands of runs without thousands of fsyncs)."""
    identities = []
    with (
        Manifest.open(manifest, pipeline_name=name, writer=True) as m,
        m.batch() if one_commit else contextlib.nullcontext(),
    ):
        m.ensure_planned_many(planned(r) for r in runs)
        for n, r in enumerate(runs):
            p = planned(r)
            identities.append(p.identity)
            if r.state is RunState.PENDING:
                continue
            m.begin_attempt(p, p.inputs)
            m.set_remote_id(p.identity, f"run_{n}_{p.identity}")
            outputs: tuple[RunOutput, ...] = ()
            if r.state is RunState.COMPLETED:
                url = r.remote_image or f"https://cdn.example/{p.identity}.png"
                outputs = (RunOutput("n1", f"{r.step.title()} Image", "image", url, "completed"),)
            if r.state is RunState.RUNNING:
                continue
            m.finish(p.identity, r.state, outputs=outputs, error=r.error)
            if r.state is RunState.COMPLETED and r.colour is not None:
                rel = f"out/{r.key or r.row_number}/{p.identity}.png"
                write_png(out_dir / rel, r.colour)
                m.add_download(p.identity, DownloadRecord(0, outputs[0].label, outputs[0].value, rel, 1, "0" * 64))
    return identities


# --------------------------------------------------------------------------- a wide sheet

SHOPIFY_COLUMNS = (
    "Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
    "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value",
    "Variant SKU", "Variant Grams", "Variant Inventory Tracker", "Variant Inventory Qty", "Variant Inventory Policy",
    "Variant Fulfillment Service", "Variant Price", "Variant Compare At Price", "Variant Requires Shipping",
    "Variant Taxable", "Variant Barcode", "Image Src", "Image Position", "Image Alt Text", "Gift Card",
    "SEO Title", "SEO Description", "Google Shopping / Google Product Category", "Google Shopping / Gender",
    "Google Shopping / Age Group", "Google Shopping / MPN", "Google Shopping / Condition",
    "Google Shopping / Custom Product", "Variant Image", "Variant Weight Unit", "Variant Tax Code",
    "Cost per item", "Included / United States", "Price / United States", "Compare At Price / United States",
    "Status",
)  # fmt: skip


def shopify_rows(n: int) -> list[dict[str, str]]:
    """`n` product rows in Shopify's 45-column export layout, with long HTML bodies and long handles."""
    rows = []
    for i in range(n):
        handle = f"black-t-shirt-os-{i:02d}" if i % 2 else f"organic-cotton-crew-neck-tee-heather-grey-{i:02d}"
        row = dict.fromkeys(SHOPIFY_COLUMNS, "")
        row.update(
            {
                "Handle": handle,
                "Title": f"Example T-Shirt {i} — organic cotton, relaxed fit, garment dyed",
                "Body (HTML)": "<p>" + "A soft, breathable everyday tee made from 100% organic cotton. " * 6 + "</p>",
                "Vendor": "Acme Apparel",
                "Product Category": "Apparel & Accessories > Clothing > Shirts & Tops",
                "Type": "Shirts",
                "Tags": "mens, t-shirt, organic, cotton, summer, bestseller",
                "Published": "TRUE",
                "Option1 Name": "Size",
                "Option1 Value": "OS",
                "Variant SKU": f"'3212483{i:02d}",
                "Variant Grams": "200",
                "Variant Price": "25.00",
                "Variant Barcode": f"'3212483{i:02d}",
                "Image Src": f"https://cdn.shopify.example/s/files/1/0000/products/{handle}-front-large.jpg",
                "Image Alt Text": 'Poster 9" x 12" of the tee',
                "SEO Title": f"Example T-Shirt {i}",
                "Google Shopping / MPN": f"MPN-{i:06d}",
                "Status": "active",
            }
        )
        rows.append(row)
    return rows
