"""The library entry point: `run_batch(pipeline, options)` does what `lamina-batch run` does (local checks,
preflight, the executor over the manifest, downloads, reports) and returns a `BatchResult`. It raises
`errors.*`, emits `events.*` to `on_event` and never prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .binding import bind_manifest
from .errors import ConfigError, CreditsError, Problem
from .events import Event, Notice, PlanReady, ReportWritten, StopReason
from .models import Pipeline, RunState
from .options import BatchOptions, PipelineSource, download_timeout, listen_address, output_dir_for, prepare_pipeline
from .target import ApiTarget, api_target, emulator_state_file, make_client, target_origin, unreachable_as_config

if TYPE_CHECKING:
    from .client import LaminaClient
    from .credits import Estimates
    from .errors import ApiError
    from .executor import ExecOptions, Executor
    from .manifest import Manifest
    from .matrix import InputDigest
    from .models import AppInfo, PastAttempt
    from .reports import ReportInput
    from .selection import Selection
    from .verdicts import Verdict

__all__ = ["BatchOptions", "BatchResult", "EventHandler", "run_batch", "run_batch_async", "write_reports"]

EventHandler = Callable[[Event], None]
T = TypeVar("T")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class BatchResult:
    """What one `run_batch` did. `counts` covers every planned run it reached (reused ones included) by its state
    at the end; runs it never started are in `not_started`. `stop_reason` says why it returned: FINISHED, a guard
    (MAX_FAILURES, MAX_STARTS), FATAL (an API answer such as 401 or no credits: `fatal_error`) or a signal."""

    pipeline_name: str
    pipeline_path: Path
    manifest: Path
    output_dir: Path
    stop_reason: StopReason
    counts: Mapping[RunState, int]
    not_started: int
    starts: int  # start requests that created a remote run in this call
    download_failures: int
    fatal_error: ApiError | None = None
    message: str | None = None  # why a guard stopped it, in words
    reports: tuple[tuple[str, Path], ...] = ()  # (format, path) written at the end
    subset: str | None = None  # with --rows/--limit: what was picked, e.g. "5 of 600 items"

    @property
    def total(self) -> int:
        """Every planned run of this invocation (its shard)."""
        return sum(self.counts.values()) + self.not_started

    @property
    def completed(self) -> int:
        return self.counts.get(RunState.COMPLETED, 0)

    @property
    def failed(self) -> int:
        """Runs that ended failed, cancelled, timed out or unknown."""
        return sum(n for state, n in self.counts.items() if RunState(state).bad)

    @property
    def ok(self) -> bool:
        """Every planned run completed and every file was downloaded (the CLI's exit 0)."""
        finished = self.stop_reason is StopReason.FINISHED
        return finished and not (self.failed or self.not_started or self.download_failures)


def run_batch(
    pipeline: PipelineSource, options: BatchOptions | None = None, *, on_event: EventHandler | None = None
) -> BatchResult:
    """Run a pipeline as `lamina-batch run` does, resuming from its manifest, and return what happened.

    `pipeline` is a file path (or a `Pipeline` from `load_pipeline`); `options` are the `run` flags
    (`BatchOptions`); `on_event` gets every `events.*` value as it happens (progress, notices, reports written).
    Everything local is checked before any request (ConfigError, exit 2 on the command line), then a preflight
    checks the key and the apps; a run's own failure is recorded, not raised. Blocks until the batch ends; inside
    a running event loop (Jupyter, async code) use `await run_batch_async(...)`.
    """
    options = options or BatchOptions()
    if _loop_running():
        raise RuntimeError("run_batch() was called inside a running event loop: use `await run_batch_async(...)`")
    prepared = _prepare(pipeline, options)
    with api_target(options.emulator, state_file=emulator_state_file(prepared.pipeline.manifest)) as target:
        return asyncio.run(_execute(prepared, options, target, on_event or _ignore))


async def run_batch_async(
    pipeline: PipelineSource, options: BatchOptions | None = None, *, on_event: EventHandler | None = None
) -> BatchResult:
    """`run_batch` on the running event loop. The local checks (every template for every row) run on the loop's
    thread before the first await; `on_event` is called on it too."""
    options = options or BatchOptions()
    prepared = _prepare(pipeline, options)
    with api_target(options.emulator, state_file=emulator_state_file(prepared.pipeline.manifest)) as target:
        return await _execute(prepared, options, target, on_event or _ignore)


def run_sync(name: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(main()) for the library's blocking calls, with a clear error inside a running loop."""
    if _loop_running():
        raise RuntimeError(f"{name}() blocks and cannot run inside a running event loop: call it in a thread")
    return asyncio.run(main())


def write_reports(
    pipeline: Pipeline,
    manifest: Manifest,
    reports: Sequence[tuple[str, str | os.PathLike[str]]],
    base_dir: Path,
    emit: EventHandler,
    *,
    embed: bool = False,
    not_started: int = 0,
    thumbnails: bool = False,
) -> tuple[tuple[str, Path], ...]:
    """Write each (format, path) report from the manifest, files resolved against `base_dir`, emitting
    ReportWritten after each; a markdown report is also appended to `$GITHUB_STEP_SUMMARY` when that is set."""
    if not reports:
        return ()
    from .reports import ReportInput, append_github_summary, render_markdown, write_report

    written: list[tuple[str, Path]] = []
    verdicts, history = _review_of(manifest)
    for fmt, target in reports:
        path = Path(target)
        data = ReportInput(
            pipeline_name=pipeline.name,
            step_ids=[s.id for s in pipeline.steps],
            records=manifest.iter_runs(),
            base_dir=base_dir,
            embed=embed,
            not_started=not_started,
            verdicts=verdicts,
            history=history,
            thumbnails=thumbnails,
        )
        data = _with_card_fields(data, pipeline)
        write_report(fmt, data, path)
        emit(ReportWritten(fmt, path))
        if fmt == "markdown" and os.environ.get("GITHUB_STEP_SUMMARY"):
            append_github_summary(render_markdown(dataclasses.replace(data, records=manifest.iter_runs())), os.environ)
        written.append((fmt, path))
    return tuple(written)


def _review_of(manifest: Manifest) -> tuple[dict[tuple[str, int], Verdict], dict[str, list[PastAttempt]]]:
    """The verdicts in force per (identity, attempt) and the earlier attempts per identity, for the reports."""
    from .verdicts import VerdictStore

    verdicts: dict[tuple[str, int], Verdict] = {}
    if manifest.path.is_file():
        with VerdictStore.open(manifest.path, pipeline_name=manifest.pipeline_name, writable=False) as store:
            verdicts = dict(store.latest())
    return verdicts, dict(manifest.past_attempts())


def _with_card_fields(data: ReportInput, pipeline: Pipeline) -> ReportInput:
    """What a gallery card shows of its row: titled by the key, else the first column a template uses; the
    spec's `report.columns`, else the template columns; the rest behind the toggle (reports/fields.py)."""
    from .reports.fields import template_columns

    return dataclasses.replace(
        data,
        columns=pipeline.report.columns,
        template_columns=template_columns(pipeline),
        key_column=pipeline.matrix.key,
    )


# --------------------------------------------------------------------------- the steps of one batch


@dataclass(frozen=True)
class _Prepared:
    """A pipeline with the options applied and checked locally, and what the check saw for the preflight."""

    pipeline: Pipeline
    digest: InputDigest
    shard: tuple[int, int] | None
    output_dir: Path  # downloads, and what reports resolve file links against
    selection: Selection | None = None  # --rows / --limit
    subset: str | None = None  # "5 of 600 items" when a selection is set


def _prepare(source: PipelineSource, options: BatchOptions) -> _Prepared:
    """Every local check, without a request: the options, the spec, every row, every template of every run."""
    from .matrix import InputDigest, validate_pipeline
    from .selection import subset_text
    from .sources import fetch_for_invocation

    pipeline = fetch_for_invocation(prepare_pipeline(source, options))  # a sheet by URL: fetched once, here
    shard = options.shard_pair
    selection = options.selection
    digest = InputDigest()
    summary = validate_pipeline(pipeline, digest=digest, shard=shard, selection=selection)
    if summary.warnings and not options.allow_empty:
        # a batch with nothing in it is never a silent success in CI (a subset or shard that is empty is fine)
        raise ConfigError(
            [dataclasses.replace(w, hint="or pass allow_empty (--allow-empty)") for w in summary.warnings]
        )
    output_dir = output_dir_for(pipeline, options)
    subset = (
        subset_text(summary.selected_items, summary.items, selection, summary.rows) if selection is not None else None
    )
    return _Prepared(pipeline, digest, shard, output_dir, selection, subset)


async def _execute(prepared: _Prepared, options: BatchOptions, target: ApiTarget, emit: EventHandler) -> BatchResult:
    """Preflight, then the executor over the manifest, then the reports."""
    from .downloads import Downloader
    from .executor import Executor
    from .manifest import Manifest

    pipeline = prepared.pipeline
    async with make_client(target, pipeline.api, pipeline) as client:
        apps = await _preflight(prepared, client, target)
        output_dir = prepared.output_dir
        with Manifest.open(pipeline.manifest, pipeline_name=pipeline.name, writer=True) as manifest:
            bind_manifest(manifest, target_origin(target, pipeline), lambda text: emit(Notice(text)))
            prices = await _check_credits(prepared, options, client, target, manifest, emit)
            downloader = (
                Downloader(output_dir, total_timeout=download_timeout(options))
                if pipeline.download is not None
                else None
            )
            if pipeline.matrix.source_sha256 is not None:  # so `plan` can say when the sheet changed
                from .sources import SOURCE_SHA_META

                manifest.set_meta(SOURCE_SHA_META, pipeline.matrix.source_sha256)
            exec_options = dataclasses.replace(
                _exec_options(pipeline, options, prepared.shard, prepared.selection), credit_prices=prices, apps=apps
            )
            executor = Executor(pipeline, manifest, client, exec_options, emit=emit, downloader=downloader)
            totals = {s.id: prepared.digest.totals.get(s.id, 0) for s in pipeline.steps}
            try:
                with _stop_on_signals(executor, enabled=options.handle_signals):
                    emit(PlanReady(total_runs=sum(totals.values()), by_step=totals))
                    result = await executor.run()
            finally:
                if downloader is not None:
                    await downloader.aclose()
            # a stop (signal, guard) leaves runs the executor never reached: they are not started too
            reached = sum(result.counts.values()) + result.not_started
            not_started = result.not_started + max(0, sum(totals.values()) - reached)
            reports = write_reports(pipeline, manifest, options.reports, output_dir, emit, not_started=not_started)
    return BatchResult(
        pipeline_name=pipeline.name,
        pipeline_path=pipeline.path,
        manifest=pipeline.manifest,
        output_dir=output_dir,
        stop_reason=result.stop_reason,
        counts=result.counts,
        not_started=not_started,
        starts=result.starts,
        download_failures=result.download_failures,
        fatal_error=result.fatal_error,
        message=result.message,
        reports=reports,
        subset=prepared.subset,
    )


async def _preflight(prepared: _Prepared, client: LaminaClient, target: ApiTarget) -> dict[str, AppInfo]:
    """One GET per step's app: the key is accepted, every app exists and takes the rendered inputs. Returns the
    apps (a redo's varied inputs resolve against them)."""
    from .matrix import expand_runs
    from .preflight import check_apps

    pipeline = prepared.pipeline
    runs = expand_runs(pipeline, shard=prepared.shard, selection=prepared.selection)
    apps: dict[str, AppInfo] = {}
    with unreachable_as_config(target.base_url):
        problems = await check_apps(pipeline, client, runs, digest=prepared.digest, apps_seen=apps)
    if problems:
        raise ConfigError(problems)
    return apps


async def _check_credits(
    prepared: _Prepared,
    options: BatchOptions,
    client: LaminaClient,
    target: ApiTarget,
    manifest: Manifest,
    emit: EventHandler,
) -> dict[str, float]:
    """Before the first start: one estimate per app (asked afresh, and cached for `plan`); the expected cost of
    what this invocation may start (runs_to_start, within max_starts, at most max_credits) held against the
    balance. CreditsError (nothing started) when it exceeds the balance, or when the cost is unknown while
    max_credits is set. Returns each app's expected credits per run, for the budget and the manifest."""
    pipeline = prepared.pipeline
    limit = pipeline.run.max_credits
    estimates = await _run_estimates(prepared, client, target)
    why = estimates.why_unknown(s.app for s in pipeline.steps)
    if why is not None:
        if limit is not None:
            raise CreditsError(
                Problem(
                    f"the batch's cost is unknown ({why}) and max_credits is set: refusing to start rather than "
                    "spend blind",
                    hint="run again when the estimate answers, or drop max_credits / --max-credits",
                )
            )
        emit(Notice(f"credits: the batch's cost is unknown ({why}); starting anyway (max_credits would refuse)"))
    elif estimates.balance is not None:
        _check_affordable(prepared, options, manifest, estimates, estimates.balance, emit)
    return {app: e.expected for app, e in estimates.by_app.items()}


async def _run_estimates(prepared: _Prepared, client: LaminaClient, target: ApiTarget) -> Estimates:
    """Each app's estimate, asked afresh (and cached for `plan`); unknown on an API without estimates."""
    from .credits import NO_ESTIMATE_API, cache_path, estimate_inputs, fetch_estimates, origin_of, unknown

    pipeline = prepared.pipeline
    if not client.supports_estimate:
        return unknown(NO_ESTIMATE_API)
    return await fetch_estimates(
        client,
        estimate_inputs(pipeline, prepared.shard),
        cache=cache_path(pipeline.manifest),
        origin=origin_of(target.base_url, emulator=target.emulator),
        refresh=True,
    )


def _check_affordable(
    prepared: _Prepared,
    options: BatchOptions,
    manifest: Manifest,
    estimates: Estimates,
    balance: float,
    emit: EventHandler,
) -> None:
    """CreditsError unless what this invocation may commit (the runs `plan` would bill, at most max_credits)
    fits the balance; a notice with both figures when it does."""
    from .credits import bill_of, format_credits
    from .planner import starts_planned

    pipeline = prepared.pipeline
    limit = pipeline.run.max_credits
    starts = starts_planned(
        pipeline,
        manifest,
        retry_failed=options.retry_failed,
        restart_unknown=options.restart_unknown,
        shard=prepared.shard,
        max_starts=pipeline.run.max_starts,
        redo_rejected=options.redo_rejected,
        rejected=_rejected(pipeline) if options.redo_rejected else None,
        selection=prepared.selection,
    )
    bill = bill_of(pipeline, starts, estimates)
    expected = bill.expected or 0.0
    may_commit = expected if limit is None else min(expected, limit)
    n = format_credits
    if may_commit > balance:
        raise CreditsError(
            Problem(
                f"this invocation would start {bill.runs} runs expected to cost {n(expected)} credits"
                f"{_span(bill.range)}, more than the balance of {n(balance)}: nothing was started",
                hint="top up; or start fewer now with --max-starts N or --max-credits N, narrow the rows with "
                "a `where`, or split the batch with --shard I/N",
            )
        )
    emit(Notice(f"credits: {bill.runs} runs to start, {n(expected)} expected; balance {n(balance)}"))


def _span(span: tuple[float, float] | None) -> str:
    from .credits import format_credits

    return "" if span is None or span[0] == span[1] else f" (range {format_credits(span[0])}-{format_credits(span[1])})"


def _exec_options(
    pipeline: Pipeline, options: BatchOptions, shard: tuple[int, int] | None, selection: Selection | None = None
) -> ExecOptions:
    from .executor import ExecOptions

    webhook = pipeline.run.webhook
    redo = options.redo_rejected
    return ExecOptions(
        retry_failed=options.retry_failed,
        restart_unknown=options.restart_unknown,
        shard=shard,
        webhook_url=webhook.url if webhook else None,
        listen=listen_address(webhook.listen) if webhook else None,
        redo_rejected=redo,
        rejected=_rejected(pipeline) if redo else {},
        redo_set=options.redo_templates,
        selection=selection,
    )


def _rejected(pipeline: Pipeline) -> dict[str, int]:
    """identity -> its newest rejected attempt, from the verdicts kept beside the runs (`--redo rejected`)."""
    from .verdicts import rejected_attempts

    return rejected_attempts(pipeline.manifest, pipeline.name)


@contextlib.contextmanager
def _stop_on_signals(executor: Executor, *, enabled: bool) -> Iterator[None]:
    """With `enabled`, the first SIGINT/SIGTERM asks the executor to stop (it records the runs in flight and
    returns with that signal as its stop reason); a second one ends the process at once."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    seen: list[int] = []

    def on_signal(signum: int) -> None:
        if seen:
            # asked twice: go now. Every manifest write is a committed transaction, so this loses nothing.
            os._exit(128 + signum)
        seen.append(signum)
        executor.request_stop(StopReason.SIGINT if signum == signal.SIGINT else StopReason.SIGTERM)

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _ignore(event: Event) -> None:
    """The default `on_event`: events are optional to watch."""
