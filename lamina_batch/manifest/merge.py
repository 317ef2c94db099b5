"""`merge_manifests`: shard manifests combined into one new file, written atomically under the destination's
writer lock; where shards hold the same run, the more advanced state wins. Where sources ran the same identity as
different remote runs (overlapping shards: paid more than once), the runs that lost are named in the summary and
kept in the merged history (a transition note each, and their remote ids)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina_batch.errors import ManifestError
from lamina_batch.times import utcnow_iso
from lamina_batch.verdicts import copy_verdicts

from .api import Manifest
from .files import connect, fsync_dir
from .lock import acquire_lock
from .records import SELECT_RUNS, dumps
from .schema import RUN_COLUMNS, apply_migrations

__all__ = ["DroppedRun", "MergeSummary", "merge_manifests"]


@dataclass(frozen=True)
class DroppedRun:
    """A remote run a source recorded for an identity whose merged row kept another remote run."""

    identity: str
    remote_id: str
    state: str  # its state in that source
    source: str  # the source manifest's path
    kept: str | None  # the remote run the merged manifest keeps for the identity


@dataclass(frozen=True)
class MergeSummary:
    """What `merge_manifests` wrote. `conflicts`: rows dropped because another source had the same identity.
    `run_more_than_once`: identities that sources ran as different remote runs (each one paid for);
    `dropped`: those remote runs that the merged rows do not keep (noted in their history)."""

    runs: int
    conflicts: int
    sources: int
    transitions: int = 0
    webhooks: int = 0
    run_more_than_once: int = 0
    dropped: tuple[DroppedRun, ...] = ()


_RANK = (
    "CASE {} WHEN 'completed' THEN 5 WHEN 'running' THEN 4 WHEN 'submitting' THEN 3 WHEN 'pending' THEN 1 ELSE 2 END"
)
_RANK_NEW, _RANK_OLD = _RANK.format("excluded.state"), _RANK.format("runs.state")
_MERGE_UPSERT = " ".join(
    [
        f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",  # noqa: S608
        "ON CONFLICT (identity) DO UPDATE SET",
        ", ".join(f"{col} = excluded.{col}" for col in RUN_COLUMNS[1:]),
        f"WHERE {_RANK_NEW} > {_RANK_OLD} OR ({_RANK_NEW} = {_RANK_OLD}",
        "AND COALESCE(excluded.updated_at, '') > COALESCE(runs.updated_at, ''))",
    ]
)
_MERGE_TRANSITIONS = (
    "INSERT INTO transitions (identity, from_state, to_state, at, detail) "
    "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM transitions t WHERE t.identity = ?1 "
    "AND t.from_state IS ?2 AND t.to_state = ?3 AND t.at = ?4 AND t.detail IS ?5)"
)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def merge_manifests(sources: Sequence[Path | str], dest: Path | str) -> MergeSummary:
    """Combine shard manifests into `dest`, written atomically. Where an identity is in several sources the
    more advanced state wins (completed > running > submitting > failed/cancelled/timed_out/unknown > pending,
    then the later updated_at); transitions, remote ids and webhook deliveries are unioned."""
    dest = Path(dest)
    paths = [Path(s) for s in sources]
    if not paths:
        raise ManifestError("merge needs at least one source manifest")
    for p in paths:
        if _same_file(p, dest):
            raise ManifestError(f"{dest} is also a source; write the merge to a new file")
    opened: list[Manifest] = []
    try:
        for p in paths:
            opened.append(Manifest.open(p, pipeline_name=None, writer=False, create=False))
        name = opened[0].pipeline_name
        for p, m in zip(paths[1:], opened[1:], strict=True):
            if m.pipeline_name != name:
                raise ManifestError(
                    f"{p} belongs to pipeline '{m.pipeline_name}', but {paths[0]} to '{name}'; "
                    "only shards of one pipeline can be merged"
                )
        # hold dest's writer lock while replacing it, so no batch is writing the file we swap out
        lock = acquire_lock(dest)
        try:
            return _build_merge(opened, dest, name)
        finally:
            lock.close()
    finally:
        for m in opened:
            m.close()


def _build_merge(sources: Sequence[Manifest], dest: Path, name: str | None) -> MergeSummary:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = connect(str(tmp))
        try:
            # a crash mid-build only loses the temp file, so the build itself needs no journal
            conn.execute("PRAGMA journal_mode = MEMORY")
            conn.execute("PRAGMA synchronous = OFF")
            apply_migrations(conn, 0, pipeline_name=name)
            total = transitions = 0
            # every remote run a source's rows hold, to find the identities run more than once (not in the file)
            conn.execute("CREATE TEMP TABLE seen (identity TEXT, remote_id TEXT, state TEXT, source INTEGER)")
            conn.execute("BEGIN IMMEDIATE")
            for index, src in enumerate(sources):
                with src._read() as s:
                    runs_in, moves = _copy_source(s, conn, index)
                total += runs_in
                transitions += moves
            more_than_once, dropped = _overlaps(conn, [str(m.path) for m in sources])
            transitions += len(dropped)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('merged_from', ?)",
                (dumps([str(m.path) for m in sources]),),
            )
            conn.execute("COMMIT")
            runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            webhooks = conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0]
        finally:
            conn.close()
        _replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return MergeSummary(
        runs=runs,
        conflicts=total - runs,
        sources=len(sources),
        transitions=transitions,
        webhooks=webhooks,
        run_more_than_once=more_than_once,
        dropped=dropped,
    )


def _copy_source(s: sqlite3.Connection, conn: sqlite3.Connection, index: int) -> tuple[int, int]:
    """One source's rows into the merge being built: (its runs, the transitions added)."""
    total = s.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    conn.executemany(
        f"INSERT INTO temp.seen VALUES (?, ?, ?, {index})",  # noqa: S608
        s.execute("SELECT identity, remote_id, state FROM runs WHERE remote_id IS NOT NULL"),
    )
    conn.executemany(_MERGE_UPSERT, s.execute(SELECT_RUNS + " ORDER BY row_number, rowid"))
    before = conn.total_changes
    conn.executemany(
        _MERGE_TRANSITIONS,
        s.execute("SELECT identity, from_state, to_state, at, detail FROM transitions ORDER BY id"),
    )
    transitions = conn.total_changes - before
    conn.executemany(
        "INSERT OR IGNORE INTO remote_ids (remote_id, identity, app_id, at) VALUES (?, ?, ?, ?)",
        s.execute("SELECT remote_id, identity, app_id, at FROM remote_ids"),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO webhooks (request_id, run_id, status, received_at) VALUES (?, ?, ?, ?)",
        s.execute("SELECT request_id, run_id, status, received_at FROM webhooks"),
    )
    # earlier attempts (kept on a redo or a retry): the same identity and attempt in two sources is one attempt
    conn.executemany(
        f"INSERT OR IGNORE INTO attempts ({_ATTEMPT_COLUMNS}) VALUES ({', '.join('?' * 13)})",  # noqa: S608
        s.execute(f"SELECT {_ATTEMPT_COLUMNS} FROM attempts"),  # noqa: S608
    )
    copy_verdicts(s, conn)
    return total, transitions


_ATTEMPT_COLUMNS = (
    "identity, attempt, state, remote_id, inputs_json, outputs_json, downloads_json, error, error_code, credits, "
    "submitted_at, finished_at, archived_at"
)


def _overlaps(conn: sqlite3.Connection, paths: Sequence[str]) -> tuple[int, tuple[DroppedRun, ...]]:
    """(identities run as more than one remote run, the remote runs the merged rows dropped), each dropped run
    noted in its identity's history and kept among the remote ids (a resume never adopts it as unaccounted)."""
    more_than_once = conn.execute(
        "SELECT COUNT(*) FROM (SELECT identity FROM temp.seen GROUP BY identity HAVING COUNT(DISTINCT remote_id) > 1)"
    ).fetchone()[0]
    rows = conn.execute(
        "SELECT s.identity, s.remote_id, s.state, MIN(s.source), r.remote_id, r.state, r.app_id "
        "FROM temp.seen s JOIN runs r ON r.identity = s.identity "
        "WHERE s.remote_id IS NOT r.remote_id GROUP BY s.identity, s.remote_id ORDER BY r.row_number, s.identity"
    ).fetchall()
    at = utcnow_iso()
    dropped: list[DroppedRun] = []
    for identity, remote_id, state, source, kept, kept_state, app_id in rows:
        run = DroppedRun(identity, remote_id, state, paths[source], kept)
        dropped.append(run)
        detail = f"merge: dropped remote run {remote_id} ({state} in {run.source}); kept {kept or 'none'}"
        conn.execute(
            "INSERT INTO transitions (identity, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)",
            (identity, state, kept_state, at, detail),
        )
        conn.execute(
            "INSERT OR IGNORE INTO remote_ids (remote_id, identity, app_id, at) VALUES (?, ?, ?, ?)",
            (remote_id, identity, app_id, at),
        )
    conn.execute("DROP TABLE temp.seen")
    return more_than_once, tuple(dropped)


def _replace(tmp: Path, dest: Path) -> None:
    """Put the built file in place of `dest` durably."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    # a stale WAL beside the old file would be replayed into the new one: drop it first
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest.with_name(dest.name + suffix))
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
