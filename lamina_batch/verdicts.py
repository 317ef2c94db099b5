"""Review verdicts: the `verdicts` table in the manifest file (approve/reject per run attempt, history kept, latest
wins, undo), written on its own connection so it is safe beside a running batch, and the verdicts.json format
(export and parsing) shared by the static gallery and `review --import`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from lamina_batch.errors import ConfigError, ManifestError, ManifestLockedError, Problem
from lamina_batch.models import RunRecord

__all__ = [
    "MAX_NOTE_CHARS",
    "VERDICT_VALUES",
    "ParsedVerdict",
    "Verdict",
    "VerdictDocument",
    "VerdictStore",
    "copy_verdicts",
    "create_verdicts_table",
    "export_document",
    "normalise_time",
    "parse_document",
    "rejected_attempts",
]

VERDICT_VALUES = ("approved", "rejected")
MAX_NOTE_CHARS = 2000
BUSY_TIMEOUT_MS = 5000
# A verdicts.json is small (one line per reviewed image); anything bigger is not one.
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024


def create_verdicts_table(conn: sqlite3.Connection) -> None:
    """The DDL of the verdicts table, for a numbered manifest migration (run inside its transaction).

    One row per decision, never updated except to mark it undone: the history is the table. The verdict in
    force for a (run, attempt) is its latest row (by `at`, then `id`) that is not undone."""
    conn.execute(
        """CREATE TABLE verdicts (
            id INTEGER PRIMARY KEY,
            identity TEXT NOT NULL,
            attempt INTEGER NOT NULL CHECK (attempt >= 1),
            verdict TEXT NOT NULL CHECK (verdict IN ('approved', 'rejected')),
            note TEXT,
            at TEXT NOT NULL,
            source TEXT NOT NULL,
            undone_at TEXT
        )"""
    )
    conn.execute("CREATE INDEX verdicts_run ON verdicts (identity, attempt)")


def utcnow() -> str:
    """Now as ISO-8601 UTC with milliseconds and `Z`, the manifest's own timestamp format."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def normalise_time(text: str) -> str:
    """An ISO-8601 time with an offset, as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` (so times compare as strings).
    ValueError when it is not one (a time without an offset is ambiguous, so it is refused too)."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return parsed.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Verdict:
    """One recorded decision about one attempt of one run. `undone_at` is set once it was undone."""

    id: int
    identity: str
    attempt: int
    verdict: str  # approved | rejected
    note: str | None
    at: str
    source: str  # review | gallery | cli | import
    undone_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "attempt": self.attempt,
            "verdict": self.verdict,
            "note": self.note,
            "at": self.at,
            "source": self.source,
        }


_SELECT = "SELECT id, identity, attempt, verdict, note, at, source, undone_at FROM verdicts"
_SAME = "SELECT 1 FROM verdicts WHERE identity = ? AND attempt = ? AND verdict = ? AND note IS ? AND at = ?"


def _verdict(row: Sequence[Any]) -> Verdict:
    return Verdict(int(row[0]), str(row[1]), int(row[2]), str(row[3]), row[4], str(row[5]), str(row[6]), row[7])


def _clean_note(note: str | None) -> str | None:
    if note is None:
        return None
    # Control characters would only garble the terminal of whoever lists the verdicts later.
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in note).strip()
    return text[:MAX_NOTE_CHARS] or None


def _check(verdict: str, attempt: int) -> None:
    if verdict not in VERDICT_VALUES:
        raise ValueError(f"verdict must be one of {', '.join(VERDICT_VALUES)}, not {verdict!r}")
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, not {attempt}")


class VerdictStore:
    """The verdicts table of one manifest file, on a connection of its own.

    It never takes the batch's writer lock: SQLite's own write lock (a few milliseconds per batch commit) is
    all a verdict waits for. Every write is one transaction committed with synchronous=FULL, so a verdict
    whose call returned survives a kill -9 of the process that wrote it."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, writable: bool, has_table: bool) -> None:
        self._path = path
        self._conn = conn
        self._writable = writable
        self._has_table = has_table
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, manifest: Path | str, *, pipeline_name: str | None = None, writable: bool = True) -> VerdictStore:
        """Open the verdicts of the manifest at `manifest` (which must exist).

        A writable store of a manifest from before verdicts existed first upgrades the file, as any batch of
        this version would (briefly taking the writer lock; ManifestError if an older batch holds it). A
        read-only store never changes the file and simply has no verdicts then."""
        path = Path(manifest)
        if not path.is_file():
            raise ManifestError(f"no manifest at {path} yet; run the pipeline first")
        if writable and not _has_verdicts_table(path):
            _upgrade(path, pipeline_name)
        try:
            if writable:
                conn = sqlite3.connect(
                    str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
                )
            else:
                # the manifest's own read-only open: falls back to immutable on read-only media, as status does
                from lamina_batch.manifest.files import read_only

                conn = read_only(path)[0]
        except sqlite3.Error as e:
            raise ManifestError(f"{path}: cannot open the manifest ({e})") from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if writable:
                # per connection: the batch's own FULL does not cover commits made here
                conn.execute("PRAGMA synchronous = FULL")
            else:
                conn.execute("PRAGMA query_only = ON")
            has_table = _check_manifest(conn, path, pipeline_name)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ManifestError(f"{path} is not a lamina-batch manifest ({e})") from e
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, writable=writable, has_table=has_table)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> VerdictStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VerdictStore({str(self._path)!r}, {'writable' if self._writable else 'read-only'})"

    @property
    def path(self) -> Path:
        return self._path

    # ----------------------------------------------------------------- writes

    def record(
        self,
        identity: str,
        attempt: int,
        verdict: str,
        note: str | None = None,
        *,
        source: str = "review",
        at: str | None = None,
    ) -> Verdict:
        """Record one verdict, durable when this returns. ValueError for a verdict or attempt out of range."""
        (recorded,) = self.record_many([(identity, attempt, verdict, note, at)], source=source)
        assert recorded is not None
        return recorded

    def record_many(
        self,
        entries: Iterable[tuple[str, int, str, str | None, str | None]],
        *,
        source: str,
        skip_duplicates: bool = False,
    ) -> list[Verdict | None]:
        """(identity, attempt, verdict, note, at) tuples in one transaction; `at=None` means now. With
        `skip_duplicates`, an entry equal to one already recorded (same run, attempt, verdict, note and time)
        is not written again and comes back as None (an import read twice records nothing new)."""
        rows = []
        for identity, attempt, verdict, note, at in entries:
            _check(verdict, attempt)
            rows.append((identity, attempt, verdict, _clean_note(note), normalise_time(at) if at else utcnow()))
        out: list[Verdict | None] = []
        with self._write() as c:
            for identity, attempt, verdict, note, at in rows:
                if skip_duplicates and c.execute(_SAME, (identity, attempt, verdict, note, at)).fetchone():
                    out.append(None)
                    continue
                cur = c.execute(
                    "INSERT INTO verdicts (identity, attempt, verdict, note, at, source) VALUES (?, ?, ?, ?, ?, ?) "
                    "RETURNING id",
                    (identity, attempt, verdict, note, at, source),
                )
                out.append(Verdict(int(cur.fetchone()[0]), identity, attempt, verdict, note, at, source))
        return out

    def undo(self, identity: str, attempt: int) -> tuple[Verdict | None, Verdict | None]:
        """Undo the verdict in force for this run attempt (it stays in the history, marked undone); returns
        (the verdict undone or None when there was none, the verdict in force now or None)."""
        with self._write() as c:
            rows = c.execute(
                _SELECT + " WHERE identity = ? AND attempt = ? AND undone_at IS NULL ORDER BY at, id",
                (identity, attempt),
            ).fetchall()
            if not rows:
                return None, None
            undone = _verdict(rows[-1])
            now = utcnow()
            c.execute("UPDATE verdicts SET undone_at = ? WHERE id = ?", (now, undone.id))
        current = _verdict(rows[-2]) if len(rows) > 1 else None
        return Verdict(**{**undone.__dict__, "undone_at": now}), current

    # ----------------------------------------------------------------- reads

    def latest(self) -> dict[tuple[str, int], Verdict]:
        """The verdict in force for every (identity, attempt) that has one."""
        found: dict[tuple[str, int], Verdict] = {}
        for v in self._query(_SELECT + " WHERE undone_at IS NULL ORDER BY identity, attempt, at, id"):
            found[(v.identity, v.attempt)] = v
        return found

    def rejected(self) -> dict[str, int]:
        """identity -> the newest attempt whose verdict in force is `rejected` (what `--redo rejected` weighs
        against the run's current attempt)."""
        out: dict[str, int] = {}
        for (identity, attempt), v in self.latest().items():
            if v.verdict == "rejected" and attempt > out.get(identity, 0):
                out[identity] = attempt
        return out

    def history(self, identity: str) -> list[Verdict]:
        """Every verdict ever recorded for a run, undone ones included, oldest first."""
        return list(self._query(_SELECT + " WHERE identity = ? ORDER BY attempt, at, id", (identity,)))

    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Verdict]:
        with self._lock:
            if self._closed:
                raise ManifestError(f"{self._path}: verdicts already closed")
            if not self._has_table:
                return iter(())
            try:
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise ManifestError(f"{self._path}: cannot read verdicts ({e})") from e
        return (_verdict(r) for r in rows)

    def _write(self) -> _Transaction:
        if not self._writable:
            raise ManifestError(f"{self._path}: verdicts opened read-only")
        return _Transaction(self)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock; rolled back on any exception."""

    def __init__(self, store: VerdictStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        store._lock.acquire()
        if store._closed:
            store._lock.release()
            raise ManifestError(f"{store._path}: verdicts already closed")
        try:
            store._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            store._lock.release()
            raise ManifestError(f"{store._path}: cannot write verdicts ({e})") from e
        return store._conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn = self._store._conn
        try:
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as e:
                    conn.execute("ROLLBACK")
                    raise ManifestError(f"{self._store._path}: cannot write verdicts ({e})") from e
            else:
                conn.execute("ROLLBACK")
        finally:
            self._store._lock.release()


def rejected_attempts(manifest: Path | str, pipeline_name: str | None = None) -> dict[str, int]:
    """`VerdictStore.rejected()` of the manifest at `manifest` read-only; empty when there is no manifest yet."""
    if not Path(manifest).is_file():
        return {}
    with VerdictStore.open(manifest, pipeline_name=pipeline_name, writable=False) as store:
        return store.rejected()


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _has_verdicts_table(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise ManifestError(f"{path}: cannot open the manifest ({e})") from e
    try:
        return "verdicts" in _tables(conn)
    except sqlite3.DatabaseError as e:
        raise ManifestError(f"{path} is not a lamina-batch manifest ({e})") from e
    finally:
        conn.close()


def _check_manifest(conn: sqlite3.Connection, path: Path, pipeline_name: str | None) -> bool:
    """Raise unless this is a manifest (of `pipeline_name`, when given); True when it has the verdicts table."""
    tables = _tables(conn)
    if "meta" not in tables or "runs" not in tables:
        raise ManifestError(f"{path} is not a lamina-batch manifest (no runs table)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'pipeline_name'").fetchone()
    if pipeline_name is not None and row is not None and row[0] != pipeline_name:
        raise ManifestError(
            f"{path} belongs to pipeline '{row[0]}', not '{pipeline_name}'; pass --manifest with the right file"
        )
    return "verdicts" in tables


def _upgrade(path: Path, pipeline_name: str | None) -> None:
    """Migrate an older manifest exactly as a batch of this version would when it opens the file."""
    from lamina_batch.manifest import Manifest  # the manifest's migrations create the table

    try:
        Manifest.open(path, pipeline_name=pipeline_name, writer=True, create=False).close()
    except ManifestLockedError as e:
        raise ManifestError(
            f"{path} is in use by a batch of an older lamina-batch ({e}); verdicts need a newer manifest, so "
            "review it once that batch has finished"
        ) from None
    if not _has_verdicts_table(path):
        raise ManifestError(f"{path}: this manifest has no verdicts table after upgrading")


# --------------------------------------------------------------------------- verdicts.json (PLAN contract 9)


@dataclass(frozen=True)
class ParsedVerdict:
    """One entry of a verdicts.json; `index` is its position in the file (for messages)."""

    index: int
    identity: str
    attempt: int
    verdict: str
    note: str | None
    at: str
    step: str | None = None
    row_number: int | None = None
    row_key: str | None = None


@dataclass(frozen=True)
class VerdictDocument:
    pipeline: str
    exported_at: str | None
    verdicts: tuple[ParsedVerdict, ...]


def export_document(
    pipeline: str, entries: Iterable[tuple[Verdict, RunRecord | None]], *, exported_at: str | None = None
) -> dict[str, Any]:
    """verdicts.json as a dict: `{"pipeline", "exported_at", "verdicts": [...]}`, one entry per verdict with
    the run's step, row number and key (from its record, when known) so a person can read the file."""
    out: list[dict[str, Any]] = []
    for v, rec in entries:
        out.append(
            {
                "identity": v.identity,
                "attempt": v.attempt,
                "verdict": v.verdict,
                "note": v.note,
                "at": v.at,
                "step": rec.step_id if rec is not None else None,
                "row_number": rec.row_number if rec is not None else None,
                "row_key": rec.row_key if rec is not None else None,
            }
        )
    return {"pipeline": pipeline, "exported_at": exported_at or utcnow(), "verdicts": out}


def _problem(source: str, path: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(Problem(message, file=source, path=path, hint=hint))


_KINDS = {str: "text", int: "a whole number"}


def _field(entry: Mapping[str, Any], name: str, kind: type, where: str, source: str) -> Any:
    value = entry.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        got = "missing" if name not in entry else f"got {json.dumps(value)[:40]}"
        raise _problem(source, f"{where}.{name}", f"must be {_KINDS.get(kind, kind.__name__)} ({got})")
    return value


def _parse_entry(i: int, entry: Any, source: str) -> ParsedVerdict:
    where = f"verdicts[{i}]"
    if not isinstance(entry, dict):
        raise _problem(source, where, "must be an object")
    identity = _field(entry, "identity", str, where, source)
    attempt = _field(entry, "attempt", int, where, source)
    verdict = _field(entry, "verdict", str, where, source)
    if verdict not in VERDICT_VALUES:
        raise _problem(source, f"{where}.verdict", f"unknown verdict {verdict!r}", "approved or rejected")
    if attempt < 1:
        raise _problem(source, f"{where}.attempt", f"must be 1 or more, not {attempt}")
    note = entry.get("note")
    if note is not None and not isinstance(note, str):
        raise _problem(source, f"{where}.note", "must be text or null")
    try:
        at = normalise_time(_field(entry, "at", str, where, source))
    except ValueError:
        raise _problem(source, f"{where}.at", f"not an ISO-8601 time with offset: {entry['at']!r}") from None
    row_number = entry.get("row_number")
    row_key = entry.get("row_key")
    step = entry.get("step")
    return ParsedVerdict(
        i,
        identity,
        attempt,
        verdict,
        note,
        at,
        step=step if isinstance(step, str) else None,
        row_number=row_number if isinstance(row_number, int) and not isinstance(row_number, bool) else None,
        row_key=row_key if isinstance(row_key, str) else None,
    )


def parse_document(text: str | bytes, *, source: str) -> VerdictDocument:
    """Parse a verdicts.json; any shape error is a ConfigError naming `source` and the entry's path."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise _problem(source, "", f"larger than {MAX_DOCUMENT_BYTES >> 20} MiB; not a verdicts file")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise _problem(source, "", f"not valid JSON ({e})", "export it again from the gallery") from None
    if not isinstance(data, dict) or not isinstance(data.get("verdicts"), list):
        raise _problem(source, "verdicts", "a verdicts file is an object with a `verdicts` list")
    pipeline = data.get("pipeline")
    if not isinstance(pipeline, str) or not pipeline:
        raise _problem(source, "pipeline", "missing: the file must name the pipeline it was exported from")
    exported_at = data.get("exported_at")
    entries = tuple(_parse_entry(i, e, source) for i, e in enumerate(data["verdicts"]))
    return VerdictDocument(pipeline, exported_at if isinstance(exported_at, str) else None, entries)


def copy_verdicts(src: sqlite3.Connection, dest: sqlite3.Connection) -> int:
    """For `merge`: union the verdict rows of a source manifest into `dest` (inside the caller's transaction).
    A row equal to one already there (same run, attempt, verdict, note, time and undo) is not copied twice.
    Returns how many rows were added."""
    if "verdicts" not in _tables(src):
        return 0
    before = dest.total_changes
    dest.executemany(
        "INSERT INTO verdicts (identity, attempt, verdict, note, at, source, undone_at) "
        "SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.identity = ?1 "
        "AND v.attempt = ?2 AND v.verdict = ?3 AND v.note IS ?4 AND v.at = ?5 AND v.undone_at IS ?7)",
        src.execute("SELECT identity, attempt, verdict, note, at, source, undone_at FROM verdicts ORDER BY id"),
    )
    return dest.total_changes - before
