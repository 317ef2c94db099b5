"""`lamina-batch run PIPELINE` (and bare `lamina-batch PIPELINE`): its flags, a thin call of `run_batch`, the
batch's events drawn as progress, and the final line with its exit code.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path
from typing import TYPE_CHECKING

from lamina_batch.cli.common import (
    EXIT_FAILED_RUNS,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_STOPPED,
    Out,
    batch_options,
)
from lamina_batch.cli.parser import (
    REPORT_FORMATS,
    Commands,
    add_emulator_flag,
    duration_flag,
    listen_flag,
    positive_int,
    report_flag,
    shard_flag,
)
from lamina_batch.cli.render import Progress, run_line

if TYPE_CHECKING:  # imported where used: `lamina-batch --help` should not pay for them
    from lamina_batch.batch import BatchResult
    from lamina_batch.events import Event, PlanReady


def register(commands: Commands) -> None:
    """`run`. Each flag's dest is the BatchOptions field it sets (see `common.batch_options`)."""
    r = commands.add(
        "run", "plan, start, poll, download and checkpoint; resumes if the manifest exists", cmd_run, pipeline=True
    )
    r.add_argument("--manifest", type=Path, help="manifest file (default: from the spec, else beside it)")
    r.add_argument("--concurrency", type=positive_int, help="max runs in flight")
    r.add_argument("--rate-limit", metavar="RATE", help="API requests for all runs together, e.g. 90/min")
    r.add_argument("--poll-interval", type=duration_flag, metavar="DURATION")
    r.add_argument("--timeout", type=duration_flag, metavar="DURATION", help="per run")
    r.add_argument("--retry-failed", action="store_true", help="start again runs that failed/cancelled/timed out")
    r.add_argument("--restart-unknown", action="store_true", help="start again runs whose outcome is unknown")
    r.add_argument("--max-starts", type=positive_int, metavar="N", help="start at most N new runs now")
    r.add_argument("--max-failures", metavar="N|P%", help="stop starting past this count or share of failures")
    r.add_argument("--shard", type=shard_flag, metavar="I/N", help="only the rows of shard I of N")
    r.add_argument("--webhook-url", metavar="URL", help="public URL Lamina posts results to")
    r.add_argument("--listen", type=listen_flag, metavar="HOST:PORT", help="where the webhook receiver binds")
    r.add_argument("--output-dir", type=Path, help="where downloads go (default: the pipeline's folder)")
    r.add_argument(
        "--download-timeout",
        type=duration_flag,
        metavar="DURATION",
        help="total time cap of one output download (default: 120s plus 1s per 64 KiB of the file)",
    )
    r.add_argument(
        "--report",
        dest="reports",
        type=report_flag,
        action="append",
        default=[],
        metavar="FORMAT=PATH",
        help=f"write a report at the end (repeatable); FORMAT is one of {', '.join(REPORT_FORMATS)}",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars or summary lines")
    add_emulator_flag(r)
    # cmd_run turns the garbage collector on itself, just before the batch (see console())
    r.set_defaults(enables_gc=True)


def cmd_run(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.batch import run_batch

    options = batch_options(args, handle_signals=True)
    view = RunView(out, progress=not args.no_progress, own_process=getattr(args, "own_process", False))
    try:
        result = run_batch(args.pipeline, options, on_event=view)
    finally:
        view.close()
    return finish(result, out)


class RunView:
    """The `run` command's view of a batch's events: progress from PlanReady on, notices, the line a signal
    prints, and one line per report written."""

    def __init__(self, out: Out, *, progress: bool, own_process: bool) -> None:
        self.out = out
        self.show_progress = progress
        self.own_process = own_process
        self.progress: Progress | None = None

    def __call__(self, event: Event) -> None:
        from lamina_batch.events import Notice, PlanReady, ReportWritten, Stopping, StopReason

        if isinstance(event, PlanReady):
            self._ready(event)
            return
        if isinstance(event, ReportWritten):
            self.close()
            self.out.info(f"wrote {event.format} report to {event.path}")
            return
        if isinstance(event, Stopping) and event.reason in (StopReason.SIGINT, StopReason.SIGTERM):
            self.out.err(
                f"lamina-batch: {event.reason.name}: stopping new starts, recording in-flight "
                "runs (press again to exit at once)"
            )
        if self.progress is not None:
            self.progress(event)
        elif isinstance(event, Notice) and not self.out.quiet:
            self.out.err(event.message)

    def _ready(self, event: PlanReady) -> None:
        if self.progress is None:
            self.progress = Progress(self.out, event.by_step, enabled=self.show_progress)
        if self.own_process:
            # What exists now (modules, schema, compiled templates) lives as long as the process: keep it out of
            # the collector's full passes, which otherwise stalled a 2000-run batch ~40 ms each.
            gc.freeze()
            gc.enable()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def finish(result: BatchResult, out: Out) -> int:
    """Print the final line (stdout when all is well, else stderr with what to do) and pick the exit code."""
    from lamina_batch.events import StopReason

    line = run_line(result)
    reason = result.stop_reason
    if reason is StopReason.SIGINT:
        out.err(f"{line}. Interrupted: run the same command again to resume.")
        return EXIT_SIGINT
    if reason is StopReason.SIGTERM:
        out.err(f"{line}. Terminated: run the same command again to resume.")
        return EXIT_SIGTERM
    if reason in (StopReason.MAX_FAILURES, StopReason.MAX_STARTS, StopReason.FATAL):
        why = result.message or reason.name.lower()
        if result.fatal_error is not None:
            why = f"{result.fatal_error}"
        out.err(f"{line}. Stopped early: {why}. Fix it and run the same command again to resume.")
        return EXIT_STOPPED
    if result.failed or result.not_started or result.download_failures:
        out.err(f"{line}. Some runs did not complete: `lamina-batch status {result.pipeline_path}` lists them.")
        return EXIT_FAILED_RUNS
    out.result(line)
    return EXIT_OK
