"""Regenerate docs/gallery.png: run the catalogue example on the built-in emulator in a temporary folder, then
screenshot its HTML gallery with headless chromium. Usage: `.venv/bin/python docs/make_screenshot.py [OUT.png]`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "catalogue"
DEFAULT_OUT = ROOT / "docs" / "gallery.png"
CHROMIUM = "/usr/bin/chromium"
WINDOW = "1280,1000"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_example(work: Path) -> Path:
    """Run the example (a private copy, so no manifest or downloads land in the repo); return the gallery path."""
    example = work / "catalogue"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("out", "report", "*.sqlite*"))
    gallery = work / "gallery.html"
    cmd = [
        sys.executable,
        "-m",
        "lamina_batch",
        "run",
        str(example / "pipeline.yaml"),
        "--emulator",
        "--report",
        f"html={gallery}",
        "--no-progress",
    ]
    subprocess.run(cmd, check=True, cwd=work, timeout=600)
    if not gallery.is_file():
        raise SystemExit(f"make_screenshot: {gallery} was not written")
    return gallery


def screenshot(gallery: Path, out: Path, work: Path) -> None:
    """Headless chromium, isolated from the network and from any user profile."""
    shot = work / "gallery.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # runs as root in containers, where the sandbox cannot start
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={work / 'chromium-profile'}",
        f"--screenshot={shot}",
        f"--window-size={WINDOW}",
        "--virtual-time-budget=5000",  # let lazy thumbnails decode before the shot
        gallery.as_uri(),
    ]
    subprocess.run(cmd, check=True, cwd=work, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not shot.is_file() or shot.read_bytes()[:8] != PNG_MAGIC:
        raise SystemExit("make_screenshot: chromium wrote no PNG")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.copyfile(shot, tmp)
    tmp.replace(out)


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve() if argv else DEFAULT_OUT
    if not Path(CHROMIUM).exists():
        print(f"make_screenshot: {CHROMIUM} not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lamina-shot-") as tmp:
        work = Path(tmp)
        screenshot(run_example(work), out, work)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
