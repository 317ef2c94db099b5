"""Rows of the `runs` table <-> `RunRecord` values: JSON columns, the columns a planned run fills in, and the
SQL built from the column list (module constants, never user input)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lamina_batch.models import DownloadRecord, PlannedRun, RunOutput, RunRecord, RunState

from .schema import RUN_COLUMNS

__all__ = [
    "INSERT_RUN",
    "SELECT_POSITION",
    "SELECT_RUNS",
    "SELECT_RUNS_WITH_ROWID",
    "Transition",
    "detail_of",
    "dumps",
    "insert_run",
    "load_downloads",
    "load_outputs",
    "loads",
    "outputs_json",
    "plan_values",
    "record_of",
    "refresh_position",
]

COLS = ", ".join(RUN_COLUMNS)
INSERT_RUN = f"INSERT INTO runs ({COLS}) VALUES ({', '.join(':' + c for c in RUN_COLUMNS)})"  # noqa: S608
SELECT_RUNS = f"SELECT {COLS} FROM runs"  # noqa: S608
# INDEXED BY: walking row order and filtering keeps each page cheap; a step/state index would need a sort
SELECT_RUNS_WITH_ROWID = f"SELECT rowid, {COLS} FROM runs INDEXED BY runs_row_number"  # noqa: S608
_POSITION = ("row_number", "row_key", "item_id", "row_json", "axes_json")
SELECT_POSITION = f"SELECT {', '.join(_POSITION)} FROM runs WHERE identity = ?"  # noqa: S608
_UPDATE_POSITION = f"UPDATE runs SET {', '.join(col + ' = ?' for col in _POSITION)} WHERE identity = ?"  # noqa: S608


@dataclass(frozen=True)
class Transition:
    """One row of the append-only state history of a run."""

    id: int
    identity: str
    from_state: RunState | None
    to_state: RunState
    at: str
    detail: str | None


# default=str: a value we cannot represent must not abort a batch mid-way; its text is still useful.
# One shared encoder: json.dumps with options builds a new encoder per call, a third of a plan write.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_OUTPUT_FIELDS = frozenset(f.name for f in dataclasses.fields(RunOutput))
_DOWNLOAD_FIELDS = frozenset(f.name for f in dataclasses.fields(DownloadRecord))


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def loads(text: str) -> Any:
    # most JSON columns of most runs are empty; skipping the parser for them halves the cost of a record
    if text == "{}":
        return {}
    if text == "[]":
        return []
    return json.loads(text)


def outputs_json(outputs: Iterable[RunOutput]) -> str:
    return dumps([dataclasses.asdict(o) for o in outputs])


def load_outputs(text: str) -> tuple[RunOutput, ...]:
    if text == "[]":
        return ()
    return tuple(RunOutput(**{k: v for k, v in d.items() if k in _OUTPUT_FIELDS}) for d in json.loads(text))


def load_downloads(text: str) -> tuple[DownloadRecord, ...]:
    if text == "[]":
        return ()
    return tuple(DownloadRecord(**{k: v for k, v in d.items() if k in _DOWNLOAD_FIELDS}) for d in json.loads(text))


def record_of(row: Sequence[Any]) -> RunRecord:
    """The record of one `runs` row selected in RUN_COLUMNS order."""
    labels = json.loads(row[9]) if row[9] is not None else None
    return RunRecord(
        identity=row[0],
        step_id=row[1],
        app_id=row[2],
        row_number=row[3],
        row_key=row[4],
        item_id=row[5],
        row=loads(row[6]),
        axes=loads(row[7]),
        inputs=loads(row[8]),
        output_labels=tuple(labels) if labels is not None else None,
        needs=loads(row[10]),
        state=RunState(row[11]),
        remote_id=row[12],
        attempts=row[13],
        created_at=row[14],
        updated_at=row[15],
        submitted_at=row[16],
        finished_at=row[17],
        remote_duration=row[18],
        outputs=load_outputs(row[19]),
        error=row[20],
        error_code=row[21],
        request_id=row[22],
        downloads=load_downloads(row[23]),
        credits_estimate=row[24],
        credits_actual=row[25],
        credits_earlier=row[26] or 0.0,
        upstream_attempts=loads(row[27]) if row[27] is not None else {},
    )


def plan_values(run: PlannedRun) -> dict[str, Any]:
    """The columns that describe where a run sits in the plan (refreshed when rows move)."""
    return {
        "step_id": run.step_id,
        "app_id": run.app_id,
        "row_number": run.item.row_number,
        "row_key": run.item.key,
        "item_id": run.item.item_id,
        "row_json": dumps(dict(run.item.row)),
        "axes_json": dumps(dict(run.item.axes)),
        "output_labels_json": dumps(list(run.output_labels)) if run.output_labels is not None else None,
        "needs_json": dumps(dict(run.needs)),
    }


def insert_run(
    c: sqlite3.Connection,
    plan: Mapping[str, Any],
    identity: str,
    *,
    inputs_json: str,
    state: RunState,
    now: str,
    credits_estimate: float | None = None,
    upstream_attempts_json: str = "{}",
) -> None:
    """A new `runs` row in `state` (pending, or submitting for a first start intent)."""
    submitting = state is RunState.SUBMITTING
    values: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    values.update(plan)
    values.update(
        identity=identity,
        inputs_json=inputs_json,
        state=state.value,
        attempts=1 if submitting else 0,
        created_at=now,
        updated_at=now,
        submitted_at=now if submitting else None,
        outputs_json="[]",
        downloads_json="[]",
        credits_estimate=credits_estimate,
        credits_earlier=0.0,
        upstream_attempts_json=upstream_attempts_json,
    )
    c.execute(INSERT_RUN, values)


def refresh_position(c: sqlite3.Connection, identity: str, plan: Mapping[str, Any], current: Sequence[Any]) -> None:
    """Rows can move (inserted, reordered, non-input columns edited) without changing a run's identity;
    keep where the run sits now, for reports, writing only when something changed."""
    wanted = tuple(plan[col] for col in _POSITION)
    if tuple(current) != wanted:
        c.execute(_UPDATE_POSITION, (*wanted, identity))


def detail_of(error_code: str | None, error: str | None) -> str | None:
    """A transition's detail for an error: `CODE: message`, capped."""
    text = ": ".join(x for x in (error_code, error) if x)
    return text[:500] or None


def submitting_record(
    run: PlannedRun,
    plan: Mapping[str, Any],
    inputs_json: str,
    *,
    attempts: int,
    created: str,
    now: str,
    credits_estimate: float | None,
    upstream_attempts: Mapping[str, int] | None,
) -> RunRecord:
    """The record of a run just moved to submitting, built from what was written (no read back: this is on the
    one-start-per-app path)."""
    return RunRecord(
        identity=run.identity,
        step_id=plan["step_id"],
        app_id=plan["app_id"],
        row_number=plan["row_number"],
        row_key=plan["row_key"],
        item_id=plan["item_id"],
        row=loads(plan["row_json"]),
        axes=loads(plan["axes_json"]),
        inputs=loads(inputs_json),
        output_labels=tuple(run.output_labels) if run.output_labels is not None else None,
        needs=loads(plan["needs_json"]),
        state=RunState.SUBMITTING,
        attempts=attempts,
        created_at=created,
        updated_at=now,
        submitted_at=now,
        credits_estimate=credits_estimate,
        upstream_attempts=dict(upstream_attempts or {}),
    )
