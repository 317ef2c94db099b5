"""Benchmark: `lamina-batch plan` over a generated 100k-row CSV (2 steps, keyed), wall time and peak RSS.

Usage: python benchmarks/plan_100k.py [--rows N] [--keep DIR]
Prints one Markdown table row and one JSON line. Target: < 10 s wall and < 200 MB peak RSS for 100k rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = """\
version: 1
name: plan-bench
matrix:
  csv: products.csv
  key: sku
  where: "row.status == 'active'"
steps:
  - id: hero
    app: app_7Hk2
    inputs:
      Prompt: "Studio photo of the {{ row.name }} in {{ row.colour }} {{ row.material }}, white background"
      Aspect Ratio: "1:1"
  - id: banner
    app: app_9Qx1
    needs: [hero]
    inputs:
      Product Image: "{{ steps.hero.output }}"
      Headline: "{{ row.name }}"
"""

COLOURS = ["sage green", "matte black", "ocean blue", "terracotta", "cream", "charcoal"]
MATERIALS = ["stoneware", "porcelain", "linen", "oak", "glass", "wool"]


def write_inputs(folder: Path, rows: int) -> Path:
    with (folder / "products.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sku", "name", "colour", "material", "category", "status"])
        for i in range(rows):
            w.writerow([f"SKU-{i:07d}", f"Product {i}", COLOURS[i % 6], MATERIALS[i % 5], "home", "active"])
    path = folder / "pipeline.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    return path


def measure(pipeline: Path) -> dict[str, object]:
    cmd = [sys.executable, "-m", "lamina_batch", "plan", str(pipeline)]
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    start = time.perf_counter()
    if timer:
        proc = subprocess.run([timer, "-v", *cmd], capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss_mb = int(m.group(1)) / 1024 if m else None
    else:  # no GNU time: the children's peak RSS from the kernel (Linux reports kB)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "exit": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(rss_mb, 1) if rss_mb is not None else None,
        "stdout_tail": proc.stdout.strip().splitlines()[-3:],
        "stderr_tail": [line for line in proc.stderr.strip().splitlines() if "\t" not in line][-3:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="write the inputs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result = {"rows": args.rows, "steps": 2, **measure(write_inputs(folder, args.rows))}
    ok = result["exit"] == 0 and float(str(result["wall_s"])) < 10 and (result["peak_rss_mb"] or 0) < 200
    result["target_met"] = ok
    print("| benchmark | rows | runs | wall s | peak RSS MB | exit |")
    print("|---|---|---|---|---|---|")
    print(
        f"| plan_100k | {args.rows} | {2 * args.rows} | {result['wall_s']} | {result['peak_rss_mb']} |"
        f" {result['exit']} |"
    )
    print(json.dumps(result))
    return 0 if result["exit"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
