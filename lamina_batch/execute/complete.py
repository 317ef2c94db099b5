"""How a run's end is recorded: a completion (soon durable, its duration learned, its outputs downloaded), a bad
end, a failure without any request (upstream failed, inputs that do not render), and a reuse that re-verifies
the files of a run completed earlier."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lamina_batch.crash import crashpoint
from lamina_batch.downloads import guess_ext
from lamina_batch.errors import DownloadError, TemplateError
from lamina_batch.events import DownloadFailed, RunReused
from lamina_batch.history import move_to_history
from lamina_batch.manifest import Durability
from lamina_batch.models import DOWNLOAD_FAILED, DownloadRecord, PlannedRun, RemoteRun, RunOutput, RunRecord, RunState
from lamina_batch.templates import render_download_path
from lamina_batch.times import parse_timestamp

from .context import BatchContext, finished
from .follow import Durations
from .outcomes import Outcome
from .scope import Interrupted

if TYPE_CHECKING:
    from lamina_batch.downloads import Downloader

__all__ = ["Completer", "remote_duration"]

Upstream = Mapping[str, Sequence[RunOutput]]


def remote_duration(remote: RemoteRun) -> float | None:
    """completedAt - startedAt (or createdAt) as the API reported them, or None."""
    end = parse_timestamp(remote.completed_at)
    start = parse_timestamp(remote.started_at) or parse_timestamp(remote.created_at)
    if end is None or start is None or end < start:
        return None
    return end - start


class Completer:
    """Records how runs end and writes their output files."""

    def __init__(self, ctx: BatchContext, durations: Durations, downloader: Downloader | None) -> None:
        self._ctx = ctx
        self._manifest = ctx.manifest
        self._durations = durations
        self._downloader = downloader
        self.download_failures = 0

    async def complete(self, run: PlannedRun, remote: RemoteRun, upstream: Upstream) -> Outcome:
        duration = remote_duration(remote)
        # SOON: it shares the fsync of the next commit (or the group-commit timer's) instead of costing its own on
        # the event loop; lost in a crash, the run is still `running` with its remote id, so a resume asks for
        # its status once and records it: nothing is started or paid again.
        self._manifest.finish(
            run.identity,
            RunState.COMPLETED,
            outputs=remote.outputs,
            remote_duration=duration,
            durability=Durability.SOON,
        )
        if duration is not None:
            self._durations.add(run.app_id, duration)
        await self._download(run, remote.outputs, upstream, ())
        self._ctx.emit(finished(run, RunState.COMPLETED, None))
        self._ctx.guards.judge(RunState.COMPLETED)
        return Outcome(RunState.COMPLETED, remote.outputs)

    def archive_files(self, identity: str) -> tuple[DownloadRecord, ...] | None:
        """Before a redo's intent: move the completed attempt's files to history (history.py) and return their
        records as moved, for the attempt kept in the manifest; None when nothing was downloaded."""
        rec = self._manifest.get(identity)
        if self._downloader is None or rec is None or rec.state is not RunState.COMPLETED or not rec.downloads:
            return None
        return move_to_history(self._downloader.base_dir, rec.downloads, max(rec.attempts, 1))

    def finish_bad(self, run: PlannedRun, state: RunState, error: str, code: str | None) -> Outcome:
        self._manifest.finish(run.identity, state, error=error, error_code=code)
        self._ctx.emit(finished(run, state, error))
        self._ctx.guards.judge(state)
        return Outcome(state)

    def fail_without_request(self, run: PlannedRun, message: str, code: str) -> Outcome:
        """A run that fails without any request (its upstream failed, its inputs do not render)."""
        self._manifest.ensure_planned(run)
        self._manifest.finish(run.identity, RunState.FAILED, error=message, error_code=code)
        self._ctx.emit(finished(run, RunState.FAILED, message))
        return Outcome(RunState.FAILED)

    async def reuse(self, run: PlannedRun, rec: RunRecord, upstream: Upstream) -> Outcome:
        await self._download(run, rec.outputs, upstream, rec.downloads)
        self._ctx.emit(RunReused(run.identity, run.step_id, run.item.row_number, run.item.key))
        return Outcome(RunState.COMPLETED, rec.outputs)

    async def _download(
        self,
        run: PlannedRun,
        outputs: Sequence[RunOutput],
        upstream: Upstream,
        existing: Sequence[DownloadRecord],
    ) -> None:
        if self._ctx.pipeline.download is None or self._downloader is None:
            return
        dl = self._downloader
        valid = {d.output_index: d for d in existing if dl.verify(d)}
        wanted = [(i, o) for i, o in enumerate(outputs) if isinstance(o.value, str) and o.value]
        if all(i in valid for i, _ in wanted):
            return
        self._manifest.flush()  # the run is recorded completed before any file of it is written
        crashpoint("before-download")
        if len(valid) != len(existing):
            self._manifest.clear_downloads(run.identity)
            for d in valid.values():
                self._manifest.add_download(run.identity, d)
        errors: list[str] = []
        scope = self._ctx.scope
        for index, output in wanted:
            if index in valid:
                continue
            try:
                # a signal abandons the download: its partial file goes, nothing is recorded, a resume fetches it
                record = await scope.until(self._fetch(run, output, index, upstream), scope.hard)
            except Interrupted:
                break
            except (DownloadError, TemplateError) as e:
                errors.append(f"download of output '{output.label}' failed: {e}")
                self._ctx.emit(DownloadFailed(run.identity, run.step_id, run.item.row_number, output.label, str(e)))
                continue
            # where it went, so reports resolve it against the folder this run used (binding of files to runs)
            record = dataclasses.replace(record, folder=self._downloader.base_dir.resolve().as_posix())
            self._manifest.add_download(run.identity, record)
        if errors:
            self.download_failures += 1
            self._manifest.set_state(
                run.identity, RunState.COMPLETED, error="; ".join(errors), error_code=DOWNLOAD_FAILED
            )
        else:
            rec = self._manifest.get(run.identity)
            if rec is not None and rec.error_code == DOWNLOAD_FAILED:
                # every file is here now: `status` must not keep reporting the earlier failure
                self._manifest.set_state(run.identity, RunState.COMPLETED)

    async def _fetch(self, run: PlannedRun, output: RunOutput, index: int, upstream: Upstream) -> DownloadRecord:
        assert self._downloader is not None
        value = str(output.value)
        rel = render_download_path(self._ctx.pipeline, run, output, index, guess_ext(output), upstream)
        if value.startswith(("http://", "https://")):
            return await self._downloader.fetch(value, rel, output_index=index, label=output.label)
        return await asyncio.to_thread(self._downloader.write_text, rel, value, output_index=index, label=output.label)
