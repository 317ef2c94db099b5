"""The library twins of the commands around a batch: `validate`, `plan`, `status`, `cancel` and `report` take a
pipeline (path or `Pipeline`) and `BatchOptions`, return values, raise `errors.*` and never print.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, ManifestError, Problem
from .options import BatchOptions, PipelineSource, load_for

if TYPE_CHECKING:  # the others are imported where used: each command pays only for what it needs
    from .batch import EventHandler
    from .credits import Estimates
    from .events import Event
    from .manifest import Manifest
    from .matrix import InputDigest, ValidationSummary
    from .models import Pipeline
    from .planner import PlanReport, StatusReport

__all__ = ["cancel", "offline_bill", "plan", "report", "status", "validate"]


def validate(
    pipeline: PipelineSource, options: BatchOptions | None = None, *, check_apps: bool = False
) -> ValidationSummary:
    """Read every row and render every template of every run, without a request; with `check_apps`, also hold
    the rendered inputs against the live app definitions (one GET per step's app, on `options.emulator` or the
    environment's key). Raises ConfigError listing every problem."""
    from .matrix import InputDigest, validate_pipeline
    from .sources import fetch_for_invocation

    options = options or BatchOptions()
    loaded = fetch_for_invocation(load_for(pipeline, options))
    shard = options.shard_pair
    digest = InputDigest() if check_apps else None
    selection = options.selection
    summary = validate_pipeline(loaded, digest=digest, shard=shard, selection=selection)
    if digest is not None:
        _check_apps(loaded, digest, options, shard)
    return summary


def plan(
    pipeline: PipelineSource,
    options: BatchOptions | None = None,
    *,
    details: bool = False,
    credits: bool = False,
    refresh_estimates: bool = False,
) -> PlanReport:
    """What `run_batch` with these options would do now: per step, the runs it would start (new, to retry), reuse,
    follow (running remotely) or keep as they are, and why; orphaned manifest runs. Never creates or locks the
    manifest. `details` lists every run with its identity and rendered inputs. With `credits`, the report's
    `bill` prices the runs it would start: one estimate request per app (on `options.emulator` or the
    environment's credentials; none without them), reused from `<manifest>.estimates.json` for an hour unless
    `refresh_estimates`; without `credits` nothing is sent and the bill is absent."""
    from .manifest import Manifest
    from .planner import plan_against_manifest
    from .sources import fetch_for_invocation

    options = options or BatchOptions()
    loaded = fetch_for_invocation(load_for(pipeline, options))
    path = loaded.manifest
    manifest = Manifest.open(path, pipeline_name=loaded.name, writer=False) if path.exists() else None
    max_starts = options.max_starts if options.max_starts is not None else loaded.run.max_starts
    try:
        report = plan_against_manifest(
            loaded,
            manifest,
            retry_failed=options.retry_failed,
            restart_unknown=options.restart_unknown,
            shard=options.shard_pair,
            details=details,
            max_starts=max_starts,
            redo_rejected=options.redo_rejected,
            rejected=_rejected(loaded) if options.redo_rejected else None,
            selection=options.selection,
        )
        report = _with_sheet(report, loaded, manifest)
    except ConfigError as e:
        raise _all_problems(loaded, e) from None
    finally:
        if manifest is not None:
            manifest.close()
    if not credits:
        return report
    from .credits import bill_of

    estimates = _estimates(loaded, options, refresh=refresh_estimates)
    return dataclasses.replace(report, bill=bill_of(loaded, report.starts, estimates))


def offline_bill(report: PlanReport, pipeline: PipelineSource, options: BatchOptions | None = None) -> PlanReport:
    """`report` with a bill whose credits read "unknown (--offline)": `plan --offline` sends nothing."""
    from .credits import OFFLINE, bill_of, unknown

    loaded = load_for(pipeline, options or BatchOptions())
    return dataclasses.replace(report, bill=bill_of(loaded, report.starts, unknown(OFFLINE)))


def _estimates(loaded: Pipeline, options: BatchOptions, *, refresh: bool) -> Estimates:
    """Each app's estimate for `plan`: cached beside the manifest, else asked; unknown without credentials."""
    from .batch import run_sync
    from .credits import NO_ESTIMATE_API, NO_KEY, cache_path, estimate_inputs, fetch_estimates, origin_of, unknown
    from .target import make_client, optional_api_target

    if loaded.api != "runs":
        return unknown(NO_ESTIMATE_API)
    with optional_api_target(options.emulator) as target:
        if target is None:
            return unknown(NO_KEY)
        inputs = estimate_inputs(loaded, options.shard_pair)
        origin = origin_of(target.base_url, emulator=target.emulator)

        async def go() -> Estimates:
            async with make_client(target, loaded.api, loaded) as client:
                return await fetch_estimates(
                    client, inputs, cache=cache_path(loaded.manifest), origin=origin, refresh=refresh
                )

        return run_sync("plan", go)


def _rejected(loaded: Pipeline) -> dict[str, int]:
    from .verdicts import rejected_attempts

    return rejected_attempts(loaded.manifest, loaded.name)


def status(pipeline: PipelineSource, options: BatchOptions | None = None) -> StatusReport:
    """Counts by state per step over the planned runs, and every failure with its row and reason; safe while a
    batch is running. ManifestError if the batch never ran."""
    from .manifest import Manifest
    from .planner import status_report
    from .sources import fetch_for_invocation

    options = options or BatchOptions()
    loaded = load_for(pipeline, options)
    if not loaded.manifest.exists():
        raise no_manifest_yet(loaded, pipeline, options)
    loaded = fetch_for_invocation(loaded)  # status plans the runs again: it reads the sheet
    from .verdicts import VerdictStore

    with VerdictStore.open(loaded.manifest, pipeline_name=loaded.name, writable=False) as store:
        verdicts = {key: v.verdict for key, v in store.latest().items()}
    with Manifest.open(loaded.manifest, pipeline_name=loaded.name, writer=False) as manifest:
        return status_report(loaded, manifest, shard=options.shard_pair, verdicts=verdicts)


def cancel(pipeline: PipelineSource, options: BatchOptions | None = None) -> list[tuple[str, str]]:
    """Cancel every remote run the manifest still has running; (identity, outcome) per run. Blocks (call it in a
    thread from async code)."""
    from .batch import run_sync
    from .binding import check_origin
    from .manifest import Manifest
    from .planner import cancel_running
    from .target import api_target, emulator_state_file, make_client, target_origin

    options = options or BatchOptions()
    loaded = load_for(pipeline, options)
    if not loaded.manifest.exists():
        raise ManifestError(f"{loaded.manifest}: no manifest, so nothing to cancel")
    with api_target(options.emulator, state_file=emulator_state_file(loaded.manifest)) as target:

        async def go() -> list[tuple[str, str]]:
            async with make_client(target, loaded.api, loaded) as client:
                with Manifest.open(loaded.manifest, pipeline_name=loaded.name, writer=True) as manifest:
                    check_origin(manifest, target_origin(target, loaded))
                    return await cancel_running(loaded, manifest, client)

        return run_sync("cancel", go)


def report(
    pipeline: PipelineSource,
    fmt: str,
    path: str | os.PathLike[str],
    options: BatchOptions | None = None,
    *,
    on_event: EventHandler | None = None,
    embed: bool = False,
    thumbnails: bool = False,
) -> Path:
    """Write one report (csv, jsonl, junit, html, markdown, xlsx) from the manifest to `path`, downloaded files
    resolved against `options.output_dir`, else the folder the run recorded writing them to, else the pipeline's
    folder; `embed` inlines the HTML gallery's images; `thumbnails`: the xlsx report embeds a small image per
    downloaded output. `on_event` gets its ReportWritten. Returns the path."""
    from .batch import write_reports
    from .manifest import Manifest

    options = options or BatchOptions()
    loaded = load_for(pipeline, options)
    if not loaded.manifest.exists():
        raise no_manifest_yet(loaded, pipeline, options)
    with Manifest.open(loaded.manifest, pipeline_name=loaded.name, writer=False) as manifest:
        files = Path(options.output_dir).resolve() if options.output_dir is not None else recorded_folder(manifest)
        base = files or loaded.path.parent.resolve()
        written = write_reports(
            loaded, manifest, [(fmt, path)], base, on_event or _ignore, embed=embed, thumbnails=thumbnails
        )
    return written[0][1]


def recorded_folder(manifest: Manifest) -> Path | None:
    """The output folder the manifest's most recently written files went to (None: no file, or none recorded)."""
    newest: tuple[str, str] | None = None
    for rec in manifest.iter_runs():
        for d in rec.downloads:
            if d.folder and (newest is None or (rec.updated_at or "") >= newest[0]):
                newest = (rec.updated_at or "", d.folder)
    # a folder from another machine (a merged CI manifest) is no help here: the caller falls back
    return None if newest is None or not Path(newest[1]).is_dir() else Path(newest[1])


def _with_sheet(report: PlanReport, pipeline: Pipeline, manifest: Manifest | None) -> PlanReport:
    """The plan with what it knows of a sheet fetched by URL: whether it changed since the last run read it."""
    sha = pipeline.matrix.source_sha256
    if sha is None:
        return report
    from .rows import source_name
    from .sources import SOURCE_SHA_META

    before = manifest.get_meta(SOURCE_SHA_META) if manifest is not None else None
    changed = None if before is None else before != sha
    return dataclasses.replace(report, sheet=source_name(pipeline.matrix), sheet_changed=changed)


def _check_apps(pipeline: Pipeline, digest: InputDigest, options: BatchOptions, shard: tuple[int, int] | None) -> None:
    from .batch import run_sync
    from .matrix import expand_runs
    from .preflight import check_apps
    from .target import api_target, make_client, unreachable_as_config

    with api_target(options.emulator) as target:

        async def go() -> list[Problem]:
            async with make_client(target, pipeline.api, pipeline) as client:
                runs = expand_runs(pipeline, shard=shard, selection=options.selection)
                with unreachable_as_config(target.base_url):
                    return await check_apps(pipeline, client, runs, digest=digest)

        problems = run_sync("validate", go)
    if problems:
        raise ConfigError(problems)


def _all_problems(pipeline: Pipeline, first: ConfigError) -> ConfigError:
    """A single pass stops at the first bad row; on failure, a full validation pass lists every problem."""
    from .matrix import validate_pipeline

    try:
        validate_pipeline(pipeline)
    except ConfigError as every:
        return every
    return first


def _ignore(event: Event) -> None:
    """No one is watching."""


def no_manifest_yet(loaded: Pipeline, pipeline: PipelineSource, options: BatchOptions) -> ManifestError:
    """No manifest where this command looks: point at the `--emulator` one when only a try on the emulator ran."""
    from .options import emulator_manifest_path

    if not options.emulator and not options.manifest_given and emulator_manifest_path(loaded).exists():
        return ManifestError(
            f"{loaded.manifest}: no manifest yet; only the emulator's ({emulator_manifest_path(loaded).name}) exists: "
            "add --emulator to read that one"
        )
    return ManifestError(
        f"{loaded.manifest}: no manifest yet; start the batch with `lamina-batch run {_shown(pipeline)}`"
    )


def _shown(source: PipelineSource) -> str:
    """The pipeline as the caller named it (a path as given), for messages that suggest a command."""
    if isinstance(source, str | os.PathLike):
        return str(Path(source))
    return str(source.path)
