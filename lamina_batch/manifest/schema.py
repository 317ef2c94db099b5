"""The manifest's SQLite schema: its tables, the migrations from every earlier version, and the header checks
(schema version, pipeline name) every open makes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from lamina_batch.errors import ManifestError

__all__ = [
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "apply_migrations",
    "check_header",
    "not_a_manifest",
    "read_header",
]

SCHEMA_VERSION = 4

RUN_COLUMNS = (
    "identity",
    "step_id",
    "app_id",
    "row_number",
    "row_key",
    "item_id",
    "row_json",
    "axes_json",
    "inputs_json",
    "output_labels_json",
    "needs_json",
    "state",
    "remote_id",
    "attempts",
    "created_at",
    "updated_at",
    "submitted_at",
    "finished_at",
    "remote_duration",
    "outputs_json",
    "error",
    "error_code",
    "request_id",
    "downloads_json",
    "credits_estimate",
    "credits_actual",
    "credits_earlier",
    "upstream_attempts_json",
)


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """The core: meta, runs and the transition history."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        """CREATE TABLE runs (
            identity TEXT PRIMARY KEY,
            step_id TEXT NOT NULL,
            app_id TEXT NOT NULL,
            row_number INTEGER NOT NULL,
            row_key TEXT,
            item_id TEXT NOT NULL,
            row_json TEXT NOT NULL,
            axes_json TEXT NOT NULL,
            inputs_json TEXT NOT NULL,
            output_labels_json TEXT,
            needs_json TEXT NOT NULL,
            state TEXT NOT NULL,
            remote_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            submitted_at TEXT,
            finished_at TEXT,
            remote_duration REAL,
            outputs_json TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            error_code TEXT,
            request_id TEXT,
            downloads_json TEXT NOT NULL DEFAULT '[]'
        )"""
    )
    conn.execute("CREATE INDEX runs_step_state ON runs (step_id, state)")
    conn.execute("CREATE INDEX runs_remote_id ON runs (remote_id)")
    conn.execute("CREATE INDEX runs_item_id ON runs (item_id)")
    conn.execute("CREATE INDEX runs_row_number ON runs (row_number)")
    conn.execute(
        """CREATE TABLE transitions (
            id INTEGER PRIMARY KEY,
            identity TEXT NOT NULL REFERENCES runs (identity),
            from_state TEXT,
            to_state TEXT NOT NULL,
            at TEXT NOT NULL,
            detail TEXT
        )"""
    )
    conn.execute("CREATE INDEX transitions_identity ON transitions (identity)")


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Webhook dedup, and every remote id ever assigned (reconcile must not adopt an old attempt's run)."""
    conn.execute(
        """CREATE TABLE webhooks (
            request_id TEXT PRIMARY KEY,
            run_id TEXT,
            status TEXT,
            received_at TEXT NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE remote_ids (
            remote_id TEXT PRIMARY KEY,
            identity TEXT NOT NULL,
            app_id TEXT NOT NULL,
            at TEXT NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX remote_ids_app ON remote_ids (app_id)")
    conn.execute("CREATE INDEX runs_app_state ON runs (app_id, state)")
    conn.execute(
        "INSERT OR IGNORE INTO remote_ids (remote_id, identity, app_id, at) "
        "SELECT remote_id, identity, app_id, updated_at FROM runs WHERE remote_id IS NOT NULL"
    )


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Review verdicts per run attempt (verdicts.py owns the table and writes it on its own connection)."""
    from lamina_batch.verdicts import create_verdicts_table

    create_verdicts_table(conn)


def _migrate_to_4(conn: sqlite3.Connection) -> None:
    """Credits per run and earlier attempts kept on a redo.

    runs.credits_estimate: the expected credits the current attempt was started under (the budget counts it);
    runs.credits_actual: what the API reported it cost, where it does; runs.credits_earlier: what earlier
    attempts of this identity cost (a redo or a retry is a second payment). runs.upstream_attempts_json: the
    attempt number of every upstream run this one consumed, so a redone upstream makes it stale. The attempts
    table keeps each superseded attempt's remote run, outputs, files and cost (newest attempt stays in runs).
    """
    conn.execute("ALTER TABLE runs ADD COLUMN credits_estimate REAL")
    conn.execute("ALTER TABLE runs ADD COLUMN credits_actual REAL")
    conn.execute("ALTER TABLE runs ADD COLUMN credits_earlier REAL NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE runs ADD COLUMN upstream_attempts_json TEXT NOT NULL DEFAULT '{}'")
    conn.execute(
        """CREATE TABLE attempts (
            identity TEXT NOT NULL REFERENCES runs (identity),
            attempt INTEGER NOT NULL,
            state TEXT NOT NULL,
            remote_id TEXT,
            inputs_json TEXT NOT NULL,
            outputs_json TEXT NOT NULL DEFAULT '[]',
            downloads_json TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            error_code TEXT,
            credits REAL,
            submitted_at TEXT,
            finished_at TEXT,
            archived_at TEXT NOT NULL,
            PRIMARY KEY (identity, attempt)
        )"""
    )


# version N -> the function that upgrades a version N-1 file to N
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_to_1,
    2: _migrate_to_2,
    3: _migrate_to_3,
    4: _migrate_to_4,
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


def apply_migrations(conn: sqlite3.Connection, current: int, *, pipeline_name: str | None) -> None:
    """Upgrade `current` -> SCHEMA_VERSION in one transaction (a crash leaves the old version intact)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        if pipeline_name is not None:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('pipeline_name', ?)", (pipeline_name,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def not_a_manifest(path: Path, why: object) -> ManifestError:
    return ManifestError(f"{path} is not a lamina-batch manifest ({why})")


def read_header(conn: sqlite3.Connection, path: Path) -> tuple[int, str | None]:
    """(schema version, pipeline name); version 0 means an empty database (nothing created yet)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        if tables:
            raise not_a_manifest(path, "it is an SQLite database without lamina-batch tables")
        return 0, None
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    try:
        version = int(meta["schema_version"])
    except (KeyError, ValueError):
        raise not_a_manifest(path, "no schema version recorded") from None
    return version, meta.get("pipeline_name")


def check_header(path: Path, version: int, name: str | None, expected: str | None) -> None:
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has manifest schema version {version}, but this lamina-batch only knows up to "
            f"version {SCHEMA_VERSION}; upgrade lamina-batch to use it"
        )
    if expected is not None and name is not None and name != expected:
        raise ManifestError(
            f"{path} belongs to pipeline '{name}', not '{expected}'; pass --manifest with another file, "
            "or delete it to start over"
        )
