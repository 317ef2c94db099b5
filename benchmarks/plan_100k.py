"""Benchmark: `lamina-batch plan` over a generated 100k-row CSV (2 steps, keyed), wall time and peak RSS; and the
same rows as an .xlsx workbook (`matrix.xlsx`, needs the `excel` extra and xlsxwriter to write it).

Usage: python benchmarks/plan_100k.py [--rows N] [--keep DIR] [--no-xlsx]
Prints one Markdown table row per source and one JSON line. Targets: < 10 s wall and < 200 MB peak RSS for 100k
rows from a CSV; the workbook within 3x the CSV's peak RSS (DESIGN §8).
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


HEADER = ["sku", "name", "colour", "material", "category", "status"]


def _row(i: int) -> list[str]:
    return [f"SKU-{i:07d}", f"Product {i}", COLOURS[i % 6], MATERIALS[i % 5], "home", "active"]


def write_inputs(folder: Path, rows: int) -> Path:
    with (folder / "products.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(rows):
            w.writerow(_row(i))
    path = folder / "pipeline.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    return path


def write_workbook(folder: Path, rows: int) -> Path:
    """The same rows as products.xlsx (written in xlsxwriter's constant-memory mode) and a pipeline reading it."""
    import xlsxwriter

    book = xlsxwriter.Workbook(str(folder / "products.xlsx"), {"constant_memory": True})
    sheet = book.add_worksheet("Products")
    sheet.write_row(0, 0, HEADER)
    for i in range(rows):
        sheet.write_row(i + 1, 0, _row(i))
    book.close()
    path = folder / "pipeline-xlsx.yaml"
    path.write_text(PIPELINE.replace("csv: products.csv", "xlsx: products.xlsx"), encoding="utf-8")
    return path


def measure(pipeline: Path, command: list[str] | None = None) -> dict[str, object]:
    """Wall time and peak RSS of `lamina-batch plan PIPELINE` (or `command[0] PIPELINE command[1:]`)."""
    words = command or ["plan"]
    cmd = [sys.executable, "-m", "lamina_batch", words[0], str(pipeline), *words[1:]]
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
    parser.add_argument("--no-xlsx", action="store_true", help="skip the workbook row")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        results.append({"source": "csv", "rows": args.rows, "steps": 2, **measure(write_inputs(folder, args.rows))})
        if not args.no_xlsx:
            results.append(
                {"source": "xlsx", "rows": args.rows, "steps": 2, **measure(write_workbook(folder, args.rows))}
            )
    csv_rss = results[0]["peak_rss_mb"] or 0
    for r in results:
        if r["source"] == "csv":
            r["target_met"] = r["exit"] == 0 and float(str(r["wall_s"])) < 10 and csv_rss < 200
        else:
            r["target_met"] = r["exit"] == 0 and (r["peak_rss_mb"] or 0) <= 3 * float(str(csv_rss))
    print("| benchmark | source | rows | runs | wall s | peak RSS MB | exit |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| plan_100k | {r['source']} | {args.rows} | {2 * args.rows} | {r['wall_s']} | {r['peak_rss_mb']} |"
            f" {r['exit']} |"
        )
    print(json.dumps(results))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
