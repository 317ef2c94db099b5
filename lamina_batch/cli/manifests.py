"""The commands that read or act on a batch's manifest: `status`, `report`, `cancel` and `merge`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lamina_batch.cli.common import (
    EXIT_FAILED_RUNS,
    EXIT_OK,
    EXIT_STOPPED,
    Out,
    UsageError,
    batch_options,
)
from lamina_batch.cli.parser import REPORT_FORMATS, Commands, add_emulator_flag, shard_flag

if TYPE_CHECKING:
    from lamina_batch.events import Event


def register(commands: Commands) -> None:
    st = commands.add(
        "status", "counts by state per step and every failure; safe while a run is going", cmd_status, pipeline=True
    )
    st.add_argument("--manifest", type=Path)
    st.add_argument("--shard", type=shard_flag, metavar="I/N")
    st.add_argument("--json", action="store_true", help="the same counts and failures as JSON, for scripts")
    add_emulator_flag(st, manifest_only=True)
    st.add_argument(
        "--fail-on-rejected", action="store_true", help="exit 1 while any rejected run has no newer attempt (CI gate)"
    )

    rp = commands.add("report", "write results from the manifest", cmd_report, pipeline=True)
    rp.add_argument("--format", "-f", required=True, choices=REPORT_FORMATS)
    rp.add_argument("-o", "--output", required=True, type=Path, metavar="PATH", help="the file; - is stdout")
    rp.add_argument("--manifest", type=Path)
    rp.add_argument("--shard", type=shard_flag, metavar="I/N")
    rp.add_argument("--output-dir", type=Path, help="where the run wrote its files (default: the folder it recorded)")
    rp.add_argument("--embed", action="store_true", help="html: inline the images, so the page can be moved")
    add_emulator_flag(rp, manifest_only=True)
    rp.add_argument("--thumbnails", action="store_true", help="xlsx: a small image of each downloaded output")

    c = commands.add("cancel", "cancel remote runs this manifest still has running", cmd_cancel, pipeline=True)
    c.add_argument("--manifest", type=Path)
    add_emulator_flag(c)

    m = commands.add("merge", "combine shard manifests", cmd_merge)
    m.add_argument("sources", nargs="+", type=Path, metavar="MANIFEST")
    m.add_argument("-o", "--output", required=True, type=Path, metavar="ALL.sqlite")


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    """Exits as a finished `run` would now: 0 all completed, 3 some unfinished, 1 some failed."""
    from lamina_batch.operations import status

    report = status(args.pipeline, batch_options(args))
    if args.json:
        out.result(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        out.result(report.render_text())
    if args.fail_on_rejected and report.rejected:
        out.err(f"lamina-batch: {report.rejected} rejected runs have no newer attempt (`run --redo rejected`)")
        return EXIT_FAILED_RUNS
    if report.all_completed:
        return EXIT_OK
    if report.any_unfinished:
        return EXIT_STOPPED
    return EXIT_FAILED_RUNS


def cmd_report(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.events import ReportWritten
    from lamina_batch.operations import report

    def written(event: Event) -> None:
        if isinstance(event, ReportWritten):
            out.info(f"wrote {event.format} report to {event.path}")

    if str(args.output) != "-":
        report(
            args.pipeline,
            args.format,
            args.output,
            batch_options(args),
            on_event=written,
            embed=args.embed,
            thumbnails=args.thumbnails,
        )
        return EXIT_OK
    # `-o -`: written beside the working directory (so an HTML page's relative links hold), copied to stdout
    fd, name = tempfile.mkstemp(prefix=".lamina-report-", suffix=f".{args.format}", dir=".")
    os.close(fd)
    tmp = Path(name)
    try:
        report(args.pipeline, args.format, tmp, batch_options(args), embed=args.embed, thumbnails=args.thumbnails)
        with tmp.open("rb") as fh:
            shutil.copyfileobj(fh, sys.stdout.buffer)
        sys.stdout.flush()
    finally:
        tmp.unlink(missing_ok=True)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.operations import cancel
    from lamina_batch.spec import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    outcomes = cancel(pipeline, batch_options(args))
    for identity, outcome in outcomes:
        out.info(f"{identity[:12]}: {outcome}")
    out.result(f"{pipeline.name}: {len(outcomes)} running runs handled")
    return EXIT_OK


def cmd_merge(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.manifest import merge_manifests

    for src in args.sources:
        if not src.exists():
            raise UsageError(f"{src}: no such manifest")
    summary = merge_manifests(args.sources, args.output)
    out.result(f"merged {len(args.sources)} manifests into {args.output}: {summary.runs} runs")
    if summary.run_more_than_once:
        out.err(
            f"warning: {summary.run_more_than_once} runs were started in more than one source manifest (paid for "
            f"more than once); {len(summary.dropped)} remote runs were dropped, kept in the merged history:"
        )
        for d in summary.dropped[:_SHOWN_DROPPED]:
            out.err(f"  {d.remote_id} ({d.state} in {d.source}), run {d.identity}; kept {d.kept or 'none'}")
        if len(summary.dropped) > _SHOWN_DROPPED:
            out.err(f"  ... and {len(summary.dropped) - _SHOWN_DROPPED} more (see the runs' transitions)")
    return EXIT_OK


_SHOWN_DROPPED = 20
