"""`lamina-batch run PIPELINE` (and bare `lamina-batch PIPELINE`): its flags, a thin call of `run_batch`, the
batch's events drawn as progress, and the final line with its exit code.
"""

from __future__ import annotations

import argparse
import gc
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from lamina_batch.cli.common import (
    EXIT_FAILED_RUNS,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_STOPPED,
    Out,
    UsageError,
    batch_options,
)
from lamina_batch.cli.github import annotate_problems, annotate_warning, append_step_summary, on_actions
from lamina_batch.cli.parser import (
    REPORT_FORMATS,
    Commands,
    add_emulator_flag,
    add_redo_flags,
    add_subset_flags,
    duration_flag,
    listen_flag,
    positive_int,
    report_flag,
    shard_flag,
)
from lamina_batch.cli.render import SUMMARY_EVERY, Progress, run_line

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
    add_subset_flags(r)
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
    # credits (issue 16): a positive number, checked by BatchOptions (exit 2 otherwise)
    r.add_argument("--max-credits", metavar="N", help="commit at most N credits (expected) in this invocation")
    add_emulator_flag(r)
    # issue 15: the edges of a run (empty batches, CI progress, a flag people try)
    r.add_argument("--allow-empty", action="store_true", help="a batch that plans nothing exits 0, not 2")
    r.add_argument(
        "--progress-interval",
        type=duration_flag,
        metavar="SECONDS",
        default=SUMMARY_EVERY,
        help=f"off a terminal (CI logs), print a progress line this often (default {SUMMARY_EVERY:g}s)",
    )
    r.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    add_redo_flags(r)
    # cmd_run turns the garbage collector on itself, just before the batch (see console())
    r.set_defaults(enables_gc=True)


def cmd_run(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.batch import run_batch
    from lamina_batch.errors import ConfigError

    if args.dry_run:
        raise UsageError(f"run has no --dry-run: `lamina-batch plan {args.pipeline}` shows what run would do")
    options = batch_options(args, handle_signals=True)
    view = RunView(
        out,
        progress=not args.no_progress,
        own_process=getattr(args, "own_process", False),
        interval=args.progress_interval,
    )
    try:
        result = run_batch(args.pipeline, options, on_event=view)
    except ConfigError as e:
        if on_actions():
            annotate_problems(e.problems, out)
        raise
    finally:
        view.close()
    append_step_summary(result)
    if on_actions():
        for step, failures in sorted(view.failed.items()):
            annotate_warning(f"{result.pipeline_name}: step {step}: {failures} runs did not complete", out)
    return finish(result, out, hint_flags(args))


def hint_flags(args: argparse.Namespace) -> str:
    """The flags a pasted `lamina-batch status ...` hint needs to find this run's manifest again."""
    parts = []
    if getattr(args, "manifest", None) is not None:
        parts.append(f"--manifest {shlex.quote(str(args.manifest))}")
    if getattr(args, "shard", None) is not None:
        parts.append(f"--shard {args.shard[0]}/{args.shard[1]}")
    if getattr(args, "emulator", False):
        parts.append("--emulator")
    return "".join(f" {p}" for p in parts)


class RunView:
    """The `run` command's view of a batch's events: progress from PlanReady on, notices, the line a signal
    prints, and one line per report written."""

    def __init__(self, out: Out, *, progress: bool, own_process: bool, interval: float = SUMMARY_EVERY) -> None:
        self.out = out
        self.show_progress = progress
        self.own_process = own_process
        self.interval = interval
        self.progress: Progress | None = None
        self.failed: dict[str, int] = {}  # step -> runs that ended badly, for the CI annotations

    def __call__(self, event: Event) -> None:
        from lamina_batch.events import Notice, PlanReady, ReportWritten, RunFinished, Stopping, StopReason

        if isinstance(event, RunFinished) and event.state.bad:
            self.failed[event.step_id] = self.failed.get(event.step_id, 0) + 1
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
            self.progress = Progress(self.out, event.by_step, enabled=self.show_progress, interval=self.interval)
            self.progress.start_timer()
        if self.own_process:
            # What exists now (modules, schema, compiled templates) lives as long as the process: keep it out of
            # the collector's full passes, which otherwise stalled a 2000-run batch ~40 ms each.
            gc.freeze()
            gc.enable()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def finish(result: BatchResult, out: Out, flags: str = "") -> int:
    """Print the final line (stdout when all is well, else stderr with what to do) and pick the exit code.
    `flags`: those a pasted hint needs (`--manifest ...`), so every hint works as printed."""
    from lamina_batch.errors import InsufficientCreditsError
    from lamina_batch.events import StopReason

    line = run_line(result)
    reason = result.stop_reason
    if reason is StopReason.SIGINT:
        out.err(f"{line}. Interrupted: run the same command again to resume.")
        return EXIT_SIGINT
    if reason is StopReason.SIGTERM:
        out.err(f"{line}. Terminated: run the same command again to resume.")
        return EXIT_SIGTERM
    if reason is StopReason.MAX_CREDITS:
        out.err(
            f"{line}. Stopped early: {result.message or 'max_credits reached'}. Run the same command again to "
            "continue within a new budget (each invocation has its own max_credits), or raise --max-credits."
        )
        return EXIT_STOPPED
    if reason is StopReason.FATAL and isinstance(result.fatal_error, InsufficientCreditsError):
        out.err(
            f"{line}. Stopped early: out of credits ({result.fatal_error}); runs not started stay pending. "
            "Top up and run the same command again to resume."
        )
        return EXIT_STOPPED
    if reason in (StopReason.MAX_FAILURES, StopReason.MAX_STARTS, StopReason.FATAL):
        why = result.message or reason.name.lower()
        if result.fatal_error is not None:
            why = f"{result.fatal_error}"
        out.err(f"{line}. Stopped early: {why}. Fix it and run the same command again to resume.")
        return EXIT_STOPPED
    if result.failed or result.not_started or result.download_failures:
        where = shlex.quote(str(result.pipeline_path))
        out.err(f"{line}. Some runs did not complete: `lamina-batch status {where}{flags}` lists them.")
        return EXIT_FAILED_RUNS
    out.result(line)
    return EXIT_OK
