"""Helpers the manifest's tests share: planned runs, a deterministic clock, a child process, raw reads."""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lamina_batch.manifest import Manifest
from lamina_batch.models import MatrixItem, PlannedRun, RunState

__all__ = ["NAME", "REPO", "child", "make_run", "running", "state_on_disk", "ticking_clock"]

REPO = Path(__file__).resolve().parents[1]
NAME = "catalogue-hero"


def make_run(
    n: int = 1,
    *,
    step: str = "hero",
    app: str = "app_7Hk2",
    key: str | None = None,
    axes: dict[str, str] | None = None,
    identity: str | None = None,
) -> PlannedRun:
    item = MatrixItem(
        row_number=n,
        row={"sku": f"SKU{n}", "name": f"Mug {n}"},
        axes=axes if axes is not None else {"aspect": "1:1"},
        key=key,
        item_id=f"item{n}",
    )
    return PlannedRun(
        identity=identity or f"{step}-{n}",
        step_id=step,
        app_id=app,
        item=item,
        inputs={"Prompt": f"photo of mug {n}", "Aspect Ratio": "1:1"},
        output_labels=("Hero Image",) if step == "hero" else None,
        needs={} if step == "hero" else {"hero": f"hero-{n}"},
    )


def running(m: Manifest, run: PlannedRun, remote_id: str | None = None) -> None:
    """Intent, then remote id: `run` is running as a batch would leave it."""
    m.begin_attempt(run, run.inputs)
    m.set_remote_id(run.identity, remote_id or f"r-{run.identity}")


def ticking_clock(start: int = 0) -> Callable[[], str]:
    """A deterministic clock: one millisecond later on every call."""
    counter = itertools.count(start)
    return lambda: f"2025-01-01T00:00:{next(counter) / 1000:06.3f}Z"


def child(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def state_on_disk(mpath: Path, identity: str) -> tuple[RunState, str | None]:
    """(state, remote id) of a run as another connection reads the file: what a crash would leave."""
    raw = sqlite3.connect(mpath)
    try:
        row = raw.execute("SELECT state, remote_id FROM runs WHERE identity = ?", (identity,)).fetchone()
    finally:
        raw.close()
    return RunState(row[0]), row[1]
