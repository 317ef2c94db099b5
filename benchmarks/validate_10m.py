"""Benchmark: `lamina-batch validate` over a generated 10M-row CSV (2 steps), with and without `matrix.key`: wall
time and peak RSS. Memory must stay flat in the number of rows (issue 19.5): key uniqueness and occurrence numbers
live in fixed-size digests that spill to an on-disk index, never in per-row Python objects.

Usage: python benchmarks/validate_10m.py [--rows N] [--keep DIR] [--only keyed|unkeyed]
Prints one Markdown table row per case and one JSON line. Target: peak RSS <= 300 MB at 10M rows.
The CSV is ~600 MB; it is written to a temporary folder (or --keep DIR) and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINE = """\
version: 1
name: validate-bench
matrix:
  csv: products.csv
{key}  where: "row.status == 'active'"
steps:
  - id: hero
    app: app_7Hk2
    inputs:
      Prompt: "Studio photo of the {{{{ row.name }}}} in {{{{ row.colour }}}} {{{{ row.material }}}}, white background"
      Aspect Ratio: "1:1"
  - id: banner
    app: app_9Qx1
    needs: [hero]
    inputs:
      Product Image: "{{{{ steps.hero.output }}}}"
      Headline: "{{{{ row.name }}}}"
"""

COLOURS = ["sage green", "matte black", "ocean blue", "terracotta", "cream", "charcoal"]
MATERIALS = ["stoneware", "porcelain", "linen", "oak", "glass", "wool"]
TARGET_MB = 300


def write_csv(path: Path, rows: int) -> int:
    """Rows written in blocks (the generator must not be what uses the memory or the time)."""
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("sku,name,colour,material,category,status\n")
        block = 100_000
        for start in range(0, rows, block):
            f.write(
                "".join(
                    f"SKU-{i:08d},Product {i},{COLOURS[i % 6]},{MATERIALS[i % 5]},home,active\n"
                    for i in range(start, min(start + block, rows))
                )
            )
    return path.stat().st_size


def measure(pipeline: Path) -> dict[str, object]:
    cmd = [sys.executable, "-m", "lamina_batch", "validate", str(pipeline)]
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    if timer is None:
        raise SystemExit("needs GNU time (/usr/bin/time) for the peak RSS")
    start = time.perf_counter()
    proc = subprocess.run([timer, "-v", *cmd], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(int(m.group(1)) / 1024, 1) if m else None,
        "stdout_tail": proc.stdout.strip().splitlines()[-1:],
        "stderr_tail": [line for line in proc.stderr.strip().splitlines() if "\t" not in line][-3:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--keep", type=Path, help="write the inputs here and keep them")
    parser.add_argument("--only", choices=["keyed", "unkeyed"])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        size = write_csv(folder / "products.csv", args.rows)
        for case in ("keyed", "unkeyed"):
            if args.only not in (None, case):
                continue
            pipeline = folder / f"{case}.yaml"
            pipeline.write_text(PIPELINE.format(key="  key: sku\n" if case == "keyed" else ""), encoding="utf-8")
            result = {"case": case, "rows": args.rows, "csv_mb": round(size / 1024**2), **measure(pipeline)}
            result["target_met"] = result["exit"] == 0 and (result["peak_rss_mb"] or 0) <= TARGET_MB
            results.append(result)
    print("| benchmark | rows | CSV MB | wall s | peak RSS MB | exit |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| validate ({r['case']}) | {r['rows']} | {r['csv_mb']} | {r['wall_s']} | {r['peak_rss_mb']} |"
            f" {r['exit']} |"
        )
    print(json.dumps(results))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
