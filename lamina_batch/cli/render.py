"""Text the commands print: the progress display of a running batch, the `run` summary line, and tables.

(`plan` and `status` text is still `PlanReport.render_text` / `StatusReport.render_text` in planner.py; it moves
here when the planner is rebuilt.)
"""

from __future__ import annotations

import sys
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
    """Renders executor events: tqdm bars per step on a terminal, a summary line every ~10 s elsewhere."""

    def __init__(self, out: Out, totals: Mapping[str, int], *, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled and not out.quiet
        self.tty = sys.stderr.isatty()
        self.totals = totals
        self.done: dict[str, dict[str, int]] = {step: {} for step in totals}
        self.bars: dict[str, Any] = {}
        self.last_line = time.monotonic()
        self.started = time.monotonic()
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
        if isinstance(event, ev.RunFinished | ev.RunReused) and step in self.done:
            state = str(getattr(event, "state", RunState.COMPLETED))
            counts = self.done[step]
            counts[state] = counts.get(state, 0) + 1
            bar = self.bars.get(step)
            if bar is not None:
                bar.update(1)
                bad = sum(v for k, v in counts.items() if k != RunState.COMPLETED)
                bar.set_postfix_str(f"ok {counts.get(RunState.COMPLETED, 0)} bad {bad}", refresh=False)
        self.tick()

    def tick(self, *, force: bool = False) -> None:
        if not self.enabled or self.bars:
            return
        now = time.monotonic()
        if force or now - self.last_line >= SUMMARY_EVERY:
            self.last_line = now
            self.out.err(f"[{now - self.started:6.0f}s] {self.summary()}")

    def summary(self) -> str:
        parts = []
        for step, counts in self.done.items():
            ok = counts.get(RunState.COMPLETED, 0)
            bad = sum(v for k, v in counts.items() if k != RunState.COMPLETED)
            parts.append(f"{step} {ok + bad}/{self.totals.get(step, 0)} done ({bad} bad)")
        return "; ".join(parts)

    def close(self) -> None:
        """Close the bars (once; later calls do nothing)."""
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        self.enabled = False


def run_line(result: BatchResult) -> str:
    """`NAME: N runs: 40 completed, 2 failed; 42 started now` (and failed downloads), the end of every `run`."""
    counts = {str(k): v for k, v in result.counts.items() if v}
    total = sum(counts.values()) + result.not_started
    parts = [f"{v} {k}" for k, v in sorted(counts.items())]
    if result.not_started:
        parts.append(f"{result.not_started} not started")
    line = f"{result.pipeline_name}: {total} runs: {', '.join(parts) or 'nothing to do'}; {result.starts} started now"
    if result.download_failures:
        line += f"; {result.download_failures} downloads failed"
    return line


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns two spaces apart, a dashed rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
