"""Benchmark: `lamina-batch report --format xlsx` over a manifest of 100k completed rows (2 steps: 200k runs, each
with an output URL and a downloaded file), wall time and peak RSS; the CSV report of the same manifest beside it.

Usage: python benchmarks/report_100k.py [--rows N] [--keep DIR]
The manifest is planned through the library (the identities `run` would give) and then marked completed with
one SQL update, so no run is started. Prints a Markdown table row per format and one JSON line. Target: memory
flat in the rows (XlsxWriter's constant-memory mode streams the rows to disk; what grows is its table of real
hyperlinks, capped at Excel's 65,530): < 200 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_100k import measure, write_inputs

from lamina_batch.manifest import Manifest
from lamina_batch.matrix import expand_runs
from lamina_batch.spec import load_pipeline

_BATCH = 5_000

# Every run completed, with one output URL and one downloaded file, as a finished batch leaves them.
_COMPLETE = """
UPDATE runs SET
  state = 'completed',
  remote_id = 'run_' || substr(identity, 1, 20),
  attempts = 1,
  finished_at = updated_at,
  outputs_json = json_array(json_object('id', 'o0', 'label', 'Image', 'type', 'image',
      'value', 'https://cdn.example.com/' || identity || '.png', 'status', 'completed', 'error', NULL)),
  downloads_json = json_array(json_object('output_index', 0, 'label', 'Image',
      'url', 'https://cdn.example.com/' || identity || '.png',
      'path', 'out/' || coalesce(row_key, item_id) || '/' || step_id || '.png', 'size', 123456,
      'sha256', substr(identity || identity, 1, 64)))
"""


def build_manifest(pipeline_path: Path) -> Path:
    pipeline = load_pipeline(pipeline_path)
    with Manifest.open(pipeline.manifest, pipeline_name=pipeline.name, writer=True) as manifest:
        batch = []
        for plan in expand_runs(pipeline):
            batch.extend(plan.runs)
            if len(batch) >= _BATCH:
                manifest.ensure_planned_many(batch)
                batch = []
        if batch:
            manifest.ensure_planned_many(batch)
    with sqlite3.connect(pipeline.manifest) as db:
        db.execute(_COMPLETE)
    return pipeline.manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="write the inputs, manifest and reports here and keep them")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        pipeline = write_inputs(folder, args.rows)
        build_manifest(pipeline)
        for fmt in ("xlsx", "csv"):
            out = folder / f"results.{fmt}"
            extra = ["report", "--format", fmt, "-o", str(out)]
            r = measure(pipeline, extra)
            r.update(format=fmt, rows=args.rows, runs=2 * args.rows, size_mb=round(out.stat().st_size / 1e6, 1))
            results.append(r)
    for r in results:
        r["target_met"] = r["exit"] == 0 and float(str(r["peak_rss_mb"] or 0)) < 200
    print("| benchmark | format | rows | runs | wall s | peak RSS MB | file MB | exit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| report_100k | {r['format']} | {r['rows']} | {r['runs']} | {r['wall_s']} | {r['peak_rss_mb']} |"
            f" {r['size_mb']} | {r['exit']} |"
        )
    print(json.dumps(results))
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
