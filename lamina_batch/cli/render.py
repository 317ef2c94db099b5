"""Text the commands print: the progress display of a running batch, the `run` summary line, and tables.

(`plan` and `status` text is still `PlanReport.render_text` / `StatusReport.render_text` in planner.py; it moves
here when the planner is rebuilt.)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lamina_batch.cli.common import Out
from lamina_batch.models import RunState

if TYPE_CHECKING:
    from lamina_batch.batch import BatchResult
    from lamina_batch.events import Event

SUMMARY_EVERY = 10.0  # seconds between summary lines when stderr is not a terminal


class Progress:
    """Renders executor events: tqdm bars per step on a terminal; elsewhere (CI logs) a summary line every
    `interval` seconds on a timer of its own (`start_timer`), whether or not a run finished meanwhile."""

    def __init__(self, out: Out, totals: Mapping[str, int], *, enabled: bool, interval: float = SUMMARY_EVERY) -> None:
        self.out = out
        self.enabled = enabled and not out.quiet
        self.tty = sys.stderr.isatty()
        self.totals = totals
        self.interval = interval
        self.done: dict[str, dict[str, int]] = {step: {} for step in totals}
        self.in_flight: dict[str, set[str]] = {step: set() for step in totals}
        self.starts = 0
        self.bars: dict[str, Any] = {}
        self.last_line = time.monotonic()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if self.enabled and self.tty and totals:
            from tqdm import tqdm

            width = max(len(step) for step in totals)
            for pos, step in enumerate(totals):
                self.bars[step] = tqdm(
                    total=totals[step],
                    desc=step.ljust(width),
                    position=pos,
                    unit="run",
                    dynamic_ncols=True,
                    file=sys.stderr,
                    leave=True,
                )

    def start_timer(self) -> None:
        """On a non-terminal, print the summary line every `interval` seconds until `close()`."""
        if not self.enabled or self.bars or self._timer is not None or self.interval <= 0:
            return
        self._timer = threading.Thread(target=self._beat, name="lamina-progress", daemon=True)
        self._timer.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick(force=True)

    def __call__(self, event: Event) -> None:
        from lamina_batch import events as ev

        if isinstance(event, ev.Notice):
            if self.bars:
                from tqdm import tqdm

                tqdm.write(event.message, file=sys.stderr)
            elif not self.out.quiet:
                self.out.err(event.message)
            return
        step = getattr(event, "step_id", None)
        with self._lock:
            if isinstance(event, ev.RunStarted | ev.RunAdopted) and step in self.in_flight:
                self.in_flight[step].add(event.identity)
                self.starts += isinstance(event, ev.RunStarted)
            if isinstance(event, ev.RunFinished | ev.RunReused) and step in self.done:
                self.in_flight[step].discard(event.identity)
                state = str(getattr(event, "state", RunState.COMPLETED))
                counts = self.done[step]
                counts[state] = counts.get(state, 0) + 1
                bar = self.bars.get(step)
                if bar is not None:
                    bar.update(1)
                    bad = sum(v for k, v in counts.items() if k != RunState.COMPLETED)
                    bar.set_postfix_str(f"ok {counts.get(RunState.COMPLETED, 0)} bad {bad}", refresh=False)
        if self._timer is None:
            self.tick()

    def tick(self, *, force: bool = False) -> None:
        if not self.enabled or self.bars:
            return
        now = time.monotonic()
        if force or now - self.last_line >= self.interval:
            self.last_line = now
            self.out.err(f"[{now - self.started:6.0f}s] {self.summary(now - self.started)}")

    def summary(self, elapsed: float | None = None) -> str:
        """`hero 3/24 done (0 failed), 8 in flight, 13 queued; ...; 2.0 starts/min; ETA 1m20s`."""
        with self._lock:
            parts = []
            finished = remaining = 0
            for step, counts in self.done.items():
                ok = counts.get(RunState.COMPLETED, 0)
                bad = sum(v for k, v in counts.items() if k != RunState.COMPLETED)
                total = self.totals.get(step, 0)
                flying = len(self.in_flight.get(step, ()))
                queued = max(0, total - ok - bad - flying)
                finished += ok + bad
                remaining += max(0, total - ok - bad)
                parts.append(f"{step} {ok + bad}/{total} done ({bad} failed), {flying} in flight, {queued} queued")
            line = "; ".join(parts)
            if elapsed is not None and elapsed > 0:
                line += f"; {self.starts / elapsed * 60:.1f} starts/min"
                if finished and remaining:
                    line += f"; ETA {_duration(elapsed / finished * remaining)}"
            return line

    def close(self) -> None:
        """Stop the timer and close the bars (once; later calls do nothing)."""
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        self.enabled = False


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def run_line(result: BatchResult) -> str:
    """`NAME: N runs: 40 completed, 2 failed; 42 started now` (and failed downloads), the end of every `run`."""
    counts = {str(k): v for k, v in result.counts.items() if v}
    total = sum(counts.values()) + result.not_started
    parts = [f"{v} {k}" for k, v in sorted(counts.items())]
    if result.not_started:
        parts.append(f"{result.not_started} not started")
    subset = f" (a subset: {result.subset})" if result.subset else ""
    line = (
        f"{result.pipeline_name}: {total} runs{subset}: {', '.join(parts) or 'nothing to do'}; "
        f"{result.starts} started now"
    )
    if result.download_failures:
        line += f"; {result.download_failures} downloads failed"
    return line


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns two spaces apart, a dashed rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
