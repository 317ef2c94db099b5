"""Every read of a manifest: runs by identity, remote id or in row order (streamed in pages), counts per step
and state, a run's transition history, and the remote durations the executor learns from."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from lamina_batch.models import PastAttempt, RunRecord, RunState

from .records import SELECT_RUNS, SELECT_RUNS_WITH_ROWID, Transition, load_downloads, load_outputs, record_of
from .store import Store

__all__ = ["Reader"]

_PAGE = 500


class Reader(Store):
    """The reads of `Manifest` (a writer's reads see its own writes still waiting in the group commit)."""

    def get(self, identity: str) -> RunRecord | None:
        self._flush_for(identity)
        with self._read() as c:
            row = c.execute(SELECT_RUNS + " WHERE identity = ?", (identity,)).fetchone()
        return None if row is None else record_of(row)

    def get_many(self, identities: Iterable[str]) -> dict[str, RunRecord]:
        self._flush_for()
        wanted = list(dict.fromkeys(identities))
        found: dict[str, RunRecord] = {}
        for i in range(0, len(wanted), _PAGE):
            chunk = wanted[i : i + _PAGE]
            with self._read() as c:
                rows = c.execute(SELECT_RUNS + f" WHERE identity IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
            for row in rows:
                found[row[0]] = record_of(row)
        return found

    def iter_runs(
        self, step_id: str | None = None, states: Iterable[RunState | str] | None = None
    ) -> Iterator[RunRecord]:
        """Every run ordered by row number, then insertion (step) order; streamed in pages, so it neither
        holds the whole manifest in memory nor keeps a read transaction open between pages."""
        self._flush_for()
        where: list[str] = []
        params: list[Any] = []
        if step_id is not None:
            where.append("step_id = ?")
            params.append(step_id)
        if states is not None:
            values = [RunState(s).value for s in states]
            if not values:
                return
            where.append(f"state IN ({', '.join('?' * len(values))})")
            params.extend(values)
        last: tuple[int, int] | None = None
        while True:
            clauses = list(where)
            page_params = list(params)
            if last is not None:
                # a row-value comparison lets SQLite walk the row_number index (which ends in rowid)
                clauses.append("(row_number, rowid) > (?, ?)")
                page_params.extend(last)
            sql = SELECT_RUNS_WITH_ROWID
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += f" ORDER BY row_number, rowid LIMIT {_PAGE}"
            with self._read() as c:
                rows = c.execute(sql, page_params).fetchall()
            for row in rows:
                yield record_of(row[1:])
            if len(rows) < _PAGE:
                return
            last = (rows[-1][4], rows[-1][0])

    def by_remote_id(self, remote_id: str) -> RunRecord | None:
        """The run that has (or, for an earlier attempt, had) this remote id."""
        self._flush_for()
        with self._read() as c:
            row = c.execute(SELECT_RUNS + " WHERE remote_id = ? LIMIT 1", (remote_id,)).fetchone()
            if row is None:
                row = c.execute(
                    SELECT_RUNS + " WHERE identity = (SELECT identity FROM remote_ids WHERE remote_id = ?)",  # noqa: S608
                    (remote_id,),
                ).fetchone()
        return None if row is None else record_of(row)

    def known_remote_ids(self, app_id: str) -> set[str]:
        """Every remote id this manifest ever recorded for `app_id` (reconcile adopts only the others)."""
        self._flush_for()
        with self._read() as c:
            rows = c.execute(
                "SELECT remote_id FROM remote_ids WHERE app_id = ? "
                "UNION SELECT remote_id FROM runs WHERE app_id = ? AND remote_id IS NOT NULL",
                (app_id, app_id),
            ).fetchall()
        return {r[0] for r in rows}

    def counts(self) -> dict[str, dict[RunState, int]]:
        """Per step (in the order steps first appear), the number of runs in every state (zeros included)."""
        self._flush_for()
        with self._read() as c:
            rows = c.execute("SELECT step_id, state, COUNT(*), MIN(rowid) FROM runs GROUP BY step_id, state").fetchall()
        first: dict[str, int] = {}
        for step, _, _, seq in rows:
            first[step] = min(first.get(step, seq), seq)
        result: dict[str, dict[RunState, int]] = {
            step: dict.fromkeys(RunState, 0) for step in sorted(first, key=first.__getitem__)
        }
        for step, state, n, _ in rows:
            result[step][RunState(state)] = n
        return result

    def transitions(self, identity: str) -> list[Transition]:
        self._flush_for(identity)
        with self._read() as c:
            rows = c.execute(
                "SELECT id, identity, from_state, to_state, at, detail FROM transitions "
                "WHERE identity = ? ORDER BY at, id",
                (identity,),
            ).fetchall()
        return [
            Transition(r[0], r[1], None if r[2] is None else RunState(r[2]), RunState(r[3]), r[4], r[5]) for r in rows
        ]

    def past_attempts(self, identity: str | None = None) -> dict[str, list[PastAttempt]]:
        """Superseded attempts (a retry's or a redo's predecessor) per identity, newest first: `identity`'s, or all."""
        self._flush_for(identity)
        sql = (
            "SELECT identity, attempt, state, outputs_json, downloads_json, remote_id, finished_at, error FROM attempts"
        )
        params: tuple[str, ...] = ()
        if identity is not None:
            sql, params = sql + " WHERE identity = ?", (identity,)
        try:
            with self._read() as c:
                rows = c.execute(sql + " ORDER BY identity, attempt DESC", params).fetchall()
        except sqlite3.OperationalError:  # an empty in-memory manifest of a file not written yet
            return {}
        out: dict[str, list[PastAttempt]] = {}
        for r in rows:
            past = PastAttempt(r[1], RunState(r[2]), load_outputs(r[3]), load_downloads(r[4]), r[5], r[6], r[7])
            out.setdefault(r[0], []).append(past)
        return out

    def recent_durations(self, app_id: str, limit: int) -> list[float]:
        """Remote durations of the app's last `limit` completed runs, oldest first (finish times are kept to the
        millisecond; ties go by insertion order)."""
        self._flush_for()
        with self._read() as c:
            rows = c.execute(
                "SELECT remote_duration FROM runs WHERE app_id = ? AND state = ? "
                "AND remote_duration IS NOT NULL ORDER BY finished_at DESC, rowid DESC LIMIT ?",
                (app_id, RunState.COMPLETED.value, limit),
            ).fetchall()
        return [float(r[0]) for r in reversed(rows)]
