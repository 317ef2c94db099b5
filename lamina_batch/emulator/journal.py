"""The emulator's runs kept in a file (JSON lines, `EmulatorConfig.state_file`), so an in-process emulator started
again (a resumed `run --emulator`) still knows the runs of the one before it, never reuses their ids, and serves
on the same port when it is free (so stored output URLs still resolve)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Journal", "JournaledRun"]


@dataclass(frozen=True)
class JournaledRun:
    """A run's fixed facts as the journal keeps them (times are epoch seconds; its status follows the clock)."""

    run_id: str
    app_id: str
    inputs: dict[str, Any]
    output_indexes: tuple[int, ...]
    created: float
    start_at: float
    end_at: float
    fail_message: str | None
    cancelled_at: float | None = None


class Journal:
    """Append-only: one line per run created (written and fsynced before the start is answered, so a client
    never holds a run id the journal lacks) and one per cancel. A torn last line (a kill mid-write) is skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> list[JournaledRun]:
        """Every run in the file, cancels applied, in creation order ([] when there is no file yet)."""
        runs: dict[str, JournaledRun] = {}
        for entry in self._entries():
            if "cancel" in entry:
                old = runs.get(str(entry["cancel"]))
                if old is not None and isinstance(entry.get("at"), int | float):
                    runs[old.run_id] = dataclasses.replace(old, cancelled_at=float(entry["at"]))
                continue
            try:
                run = JournaledRun(
                    run_id=str(entry["id"]),
                    app_id=str(entry["app"]),
                    inputs=dict(entry["inputs"]),
                    output_indexes=tuple(int(i) for i in entry["outputs"]),
                    created=float(entry["created"]),
                    start_at=float(entry["start"]),
                    end_at=float(entry["end"]),
                    fail_message=entry.get("fail"),
                )
            except (KeyError, TypeError, ValueError):
                continue  # not a line this journal wrote
            runs[run.run_id] = run
        return list(runs.values())

    def created(self, run: JournaledRun) -> None:
        self._append(
            {
                "id": run.run_id,
                "app": run.app_id,
                "inputs": run.inputs,
                "outputs": list(run.output_indexes),
                "created": run.created,
                "start": run.start_at,
                "end": run.end_at,
                "fail": run.fail_message,
            }
        )

    def cancelled(self, run_id: str, at: float) -> None:
        self._append({"cancel": run_id, "at": at})

    def listening(self, port: int) -> None:
        """The port this emulator serves on: the next one tries it first, so the output URLs a client stored
        (`http://127.0.0.1:PORT/files/...`) still resolve."""
        self._append({"port": port})

    def last_port(self) -> int | None:
        port = None
        for entry in self._entries():
            value = entry.get("port")
            if isinstance(value, int) and 0 < value < 65536:
                port = value
        return port

    def _append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _entries(self) -> Iterator[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill mid-write: that run was never answered
            if isinstance(entry, dict):
                yield entry
