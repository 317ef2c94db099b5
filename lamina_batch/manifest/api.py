"""`Manifest`: a batch's checkpoint file opened for reading or as its one writer, and every write a batch makes
(plan, start intent, remote id, finish, any other state change, downloads, webhook deliveries)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lamina_batch.errors import IllegalTransitionError, ManifestError
from lamina_batch.models import FINISHED_STATES, DownloadRecord, PlannedRun, RemoteRun, RunOutput, RunRecord, RunState
from lamina_batch.times import utcnow_iso

from . import files
from .commit import Durability
from .reads import Reader
from .records import (
    SELECT_POSITION,
    detail_of,
    dumps,
    insert_run,
    outputs_json,
    plan_values,
    refresh_position,
    submitting_record,
)
from .schema import SCHEMA_VERSION
from .store import Clock

__all__ = ["Manifest"]

_BEGIN = (
    ", attempts = ?, submitted_at = ?, inputs_json = ?, remote_id = NULL, error = NULL, error_code = NULL, "
    "request_id = NULL, finished_at = NULL, remote_duration = NULL, outputs_json = '[]', downloads_json = '[]', "
    "output_labels_json = ?, needs_json = ?, upstream_attempts_json = ?, "
    # an earlier attempt that created a remote run cost something: carried into credits_earlier (the right-hand
    # sides read the row as it was before this UPDATE)
    "credits_earlier = credits_earlier + CASE WHEN remote_id IS NOT NULL "
    "THEN COALESCE(credits_actual, credits_estimate, 0) ELSE 0 END, credits_estimate = ?, credits_actual = NULL"
)
# The attempt a new one supersedes, kept whole in `attempts` (its files' records as given: moved to history).
_ARCHIVE = (
    "INSERT OR REPLACE INTO attempts (identity, attempt, state, remote_id, inputs_json, outputs_json, downloads_json, "
    "error, error_code, credits, submitted_at, finished_at, archived_at) "
    "SELECT identity, attempts, state, remote_id, inputs_json, outputs_json, COALESCE(?, downloads_json), error, "
    "error_code, CASE WHEN remote_id IS NOT NULL THEN COALESCE(credits_actual, credits_estimate) END, submitted_at, "
    "finished_at, ? FROM runs WHERE identity = ?"
)
_ARCHIVED = (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT, RunState.UNKNOWN)


class Manifest(Reader):
    """One open manifest (see `Store` for the connection, lock and transactions, `Reader` for the reads)."""

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        pipeline_name: str | None,
        writer: bool,
        create: bool = True,
        clock: Clock = utcnow_iso,
    ) -> Manifest:
        """Open (a writer also creates) the manifest at `path`.

        writer=True takes the lock (ManifestLockedError naming the holder), creates or migrates the file.
        writer=False never locks or writes. A missing file gives an empty in-memory manifest when `create`,
        else ManifestError("no manifest at PATH yet"); an older schema is migrated in a private in-memory copy.
        `pipeline_name=None` skips the name check (merge, tools); a writer creating a file needs the name.
        Corrupt files, other pipelines and newer schemas raise ManifestError.
        """
        path = Path(path)
        if writer:
            conn, name, lock = files.open_writer(path, pipeline_name, create=create)
            return cls(
                path, conn, pipeline_name=name, writer=True, lock=lock, clock=clock, schema_version=SCHEMA_VERSION
            )
        opened = files.open_reader(path, pipeline_name, create=create)
        if opened is None:
            conn = files.empty_connection(pipeline_name)
            return cls(path, conn, pipeline_name=pipeline_name, writer=False, lock=None, clock=clock, schema_version=0)
        conn, name, version = opened
        return cls(path, conn, pipeline_name=name, writer=False, lock=None, clock=clock, schema_version=version)

    # ----------------------------------------------------------------- planning

    def ensure_planned(self, run: PlannedRun) -> RunRecord:
        """Insert `run` as pending if absent; if present, refresh where it sits in the plan (row moved)."""
        self.ensure_planned_many((run,))
        record = self.get(run.identity)
        assert record is not None
        return record

    def ensure_planned_many(self, runs: Iterable[PlannedRun]) -> int:
        """`ensure_planned` for many runs in one transaction; returns how many were new."""
        now = self._clock()
        new = 0
        with self._write() as c:
            for run in runs:
                plan = plan_values(run)
                row = c.execute(SELECT_POSITION, (run.identity,)).fetchone()
                if row is None:
                    insert_run(
                        c, plan, run.identity, inputs_json=dumps(dict(run.inputs)), state=RunState.PENDING, now=now
                    )
                    self._move(c, run.identity, None, RunState.PENDING, at=now, detail=None)
                    new += 1
                else:
                    refresh_position(c, run.identity, plan, row)
        return new

    # ----------------------------------------------------------------- starting

    def begin_attempt(
        self,
        run: PlannedRun,
        inputs: Mapping[str, Any],
        *,
        redo: bool = False,
        upstream_attempts: Mapping[str, int] | None = None,
        archived_downloads: Sequence[DownloadRecord] | None = None,
        credits_estimate: float | None = None,
    ) -> RunRecord:
        """Record the intent to start `run` with `inputs` (-> submitting, attempts+1), committed before the
        start request goes out, with the expected credits it is started under. Refuses a run that is running, or
        completed unless `redo` (`--redo rejected`: a deliberate new attempt); anything else would pay twice.
        `upstream_attempts` (step id -> attempt) records which attempts of its upstream runs this attempt consumes.
        An attempt that ended is first kept in the `attempts` table (with what it cost), with `archived_downloads`
        as its files when they were moved (history.py)."""
        now = self._clock()
        plan = plan_values(run)
        inputs_json = dumps(dict(inputs))
        upstream_json = dumps(dict(upstream_attempts or {}))
        # Writes waiting in the group commit ride along only if due with an intent (this one is on the
        # one-start-per-app path), and this run's own finish, which must land first.
        with self._write(intent_of=run.identity) as c:
            row = c.execute(
                "SELECT state, remote_id, attempts, created_at FROM runs WHERE identity = ?", (run.identity,)
            ).fetchone()
            if row is None:
                attempts, created = 1, now
                insert_run(
                    c,
                    plan,
                    run.identity,
                    inputs_json=inputs_json,
                    state=RunState.SUBMITTING,
                    now=now,
                    credits_estimate=credits_estimate,
                    upstream_attempts_json=upstream_json,
                )
                self._move(c, run.identity, None, RunState.SUBMITTING, at=now, detail="attempt 1")
            else:
                attempts, created = int(row[2]) + 1, row[3]
                self._next_attempt(c, run, RunState(row[0]), row[1], attempts, now, values=(inputs_json, plan),
                                   redo=redo, upstream_json=upstream_json, archived_downloads=archived_downloads,
                                   credits_estimate=credits_estimate)  # fmt: skip
        # Built from what was just written rather than read back: this is on the one-start-per-app path.
        return submitting_record(
            run,
            plan,
            inputs_json,
            attempts=attempts,
            created=created,
            now=now,
            credits_estimate=credits_estimate,
            upstream_attempts=upstream_attempts,
        )

    def _next_attempt(
        self,
        c: sqlite3.Connection,
        run: PlannedRun,
        old: RunState,
        remote_id: str | None,
        attempts: int,
        now: str,
        *,
        values: tuple[str, Mapping[str, Any]],
        redo: bool,
        upstream_json: str,
        archived_downloads: Sequence[DownloadRecord] | None,
        credits_estimate: float | None,
    ) -> None:
        """An existing run -> submitting at `attempts`: refused when running, or completed without `redo`; an
        attempt that ended is first archived in `attempts`."""
        inputs_json, plan = values
        if old is RunState.RUNNING or (old is RunState.COMPLETED and not redo):
            raise IllegalTransitionError(
                f"{self._path}: refusing to start run {run.identity} again: it is {old.value}"
                + (f" as remote run {remote_id}" if remote_id else "")
            )
        if old in _ARCHIVED and attempts > 1:
            moved = None if archived_downloads is None else _downloads_json(archived_downloads)
            c.execute(_ARCHIVE, (moved, now, run.identity))
        # indexed columns are left alone unless they changed: each index entry rewritten costs WAL pages
        assigned = (attempts, now, inputs_json, plan["output_labels_json"], plan["needs_json"], upstream_json)
        self._move(c, run.identity, old, RunState.SUBMITTING, at=now, detail=f"attempt {attempts}",
                   assignments=_BEGIN, values=(*assigned, credits_estimate))  # fmt: skip
        refresh_position(c, run.identity, plan, c.execute(SELECT_POSITION, (run.identity,)).fetchone())

    def set_remote_id(
        self,
        identity: str,
        remote_id: str,
        remote: RemoteRun | None = None,
        *,
        durability: Durability = Durability.NOW,
    ) -> None:
        """The start reply arrived: remember the remote id (-> running).

        `Durability.WITH_NEXT_INTENT`: committed with the next transaction (at the latest the app's next start
        intent, so that start cannot be sent before this id is durable) or the group-commit timer. A crash in
        between leaves this run `submitting`, which resume reconciles like any start whose reply was lost.
        SOON is refused: an id must never wait behind an intent."""
        if durability is Durability.SOON:
            raise ValueError("a remote id must be durable before the next start intent: use WITH_NEXT_INTENT")
        now = self._clock()
        detail = f"remote {remote_id}" + (f" {remote.status}" if remote is not None else "")
        if durability is Durability.WITH_NEXT_INTENT:
            with self._mutex:
                self._writable()
                self._group.add_id(identity, (remote_id, detail, now))
            return
        with self._mutex:
            self._group.ids.pop(identity, None)  # superseded by this one
            # on the start path too (the executions API commits each id at once): lean like an intent's commit
            with self._write(intent_of=identity) as c:
                self._remote_id_row(c, identity, remote_id, detail, now)

    # ----------------------------------------------------------------- finishing and other changes

    def finish(
        self,
        identity: str,
        state: RunState,
        *,
        outputs: Sequence[RunOutput] = (),
        error: str | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        remote_duration: float | None = None,
        durability: Durability = Durability.NOW,
    ) -> None:
        """The run reached a finished state (completed, failed, cancelled, timed_out, unknown).

        A weaker `durability` (SOON) is only for a finish whose loss in a crash costs nothing but a status request
        on resume: the run stays `running` with its remote id. Reads of the run commit it first; `close()` too."""
        state = RunState(state)
        if state not in FINISHED_STATES:
            raise ValueError(f"finish() needs a finished state, not {state.value}; use set_state()")
        now = self._clock()
        detail = detail_of(error_code, error)
        row = (identity, state, outputs_json(outputs), error, error_code, request_id, remote_duration, now, detail)
        if durability is not Durability.NOW:
            with self._mutex:
                self._writable()
                self._group.add_finish(identity, row, durability)
            return
        with self._mutex:
            self._group.finishes.pop(identity, None)  # superseded by this one
            with self._write() as c:
                self._finish_row(c, *row)

    def set_state(
        self,
        identity: str,
        state: RunState,
        *,
        error: str | None = None,
        error_code: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Any other move the lifecycle allows (back to pending after a start that created nothing, to unknown
        after a lost start, a note on a completed run)."""
        state = RunState(state)
        now = self._clock()
        with self._write() as c:
            old = self._state_of(c, identity)
            self._move(
                c,
                identity,
                old,
                state,
                at=now,
                detail=detail if detail is not None else detail_of(error_code, error),
                assignments=", error = ?, error_code = ?, finished_at = ?",
                values=(error, error_code, now if state.finished else None),
            )

    def add_download(self, identity: str, download: DownloadRecord) -> None:
        """Record a written output file (replacing any earlier record of the same output index)."""
        with self._write() as c:
            row = c.execute("SELECT downloads_json FROM runs WHERE identity = ?", (identity,)).fetchone()
            if row is None:
                raise ManifestError(f"{self._path}: no run {identity} in the manifest")
            kept = [d for d in json.loads(row[0]) if d.get("output_index") != download.output_index]
            kept.append(dataclasses.asdict(download))
            kept.sort(key=lambda d: d.get("output_index", 0))
            c.execute(
                "UPDATE runs SET downloads_json = ?, updated_at = ? WHERE identity = ?",
                (dumps(kept), self._clock(), identity),
            )

    def clear_downloads(self, identity: str) -> None:
        with self._write() as c:
            self._state_of(c, identity)
            c.execute(
                "UPDATE runs SET downloads_json = '[]', updated_at = ? WHERE identity = ?", (self._clock(), identity)
            )

    def record_webhook(self, request_id: str, run_id: str | None, status: str | None) -> bool:
        """Remember a webhook delivery; False if this request id was seen before (a redelivery)."""
        with self._write() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO webhooks (request_id, run_id, status, received_at) VALUES (?, ?, ?, ?)",
                (request_id, run_id, status, self._clock()),
            )
            return cur.rowcount == 1


def _downloads_json(downloads: Sequence[DownloadRecord]) -> str:
    return dumps([dataclasses.asdict(d) for d in downloads])
