"""A subset of a batch for a smoke run: `--rows 1-5,42` (data-row numbers) and `--limit N` (the first N items after
`where`). Every item is still read, keyed and counted, so a subset's runs have the identities they have in the
full batch and the full run afterwards reuses them; `Tally` counts what was read and what was selected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lamina_batch.errors import ConfigError, Problem

__all__ = ["Picker", "Selection", "Tally", "parse_rows", "rows_note", "subset_text"]

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_rows(text: str) -> tuple[tuple[int, int], ...]:
    """`"1-5,42"` -> ((1, 5), (42, 42)); ConfigError naming the bad part otherwise."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        m = _RANGE.match(part)
        if m is None:
            raise ConfigError(
                Problem(f"invalid row list {text!r}: {part.strip()!r}", path="--rows", hint="use e.g. 1-5,42")
            )
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if first < 1 or last < first:
            raise ConfigError(
                Problem(f"invalid row range {part.strip()!r}", path="--rows", hint="rows count from 1; write low-high")
            )
        ranges.append((first, last))
    return tuple(sorted(ranges))


@dataclass(frozen=True)
class Selection:
    """Which items of the batch to act on: data rows in `rows` (inclusive ranges; None: every row), then at most
    `limit` of them (None: no limit), in batch order."""

    rows: tuple[tuple[int, int], ...] | None = None
    limit: int | None = None

    @classmethod
    def parse(cls, rows: str | None = None, limit: int | None = None) -> Selection:
        """From the command line's `--rows` text and `--limit` number; ConfigError when either is invalid."""
        if limit is not None and limit < 0:
            raise ConfigError(Problem(f"invalid limit {limit}: must be 0 or more", path="--limit"))
        return cls(rows=parse_rows(rows) if rows is not None else None, limit=limit)

    @property
    def everything(self) -> bool:
        return self.rows is None and self.limit is None

    def wants_row(self, number: int) -> bool:
        return self.rows is None or any(first <= number <= last for first, last in self.rows)

    def describe(self) -> str:
        """`rows 1-5,42`, `the first 10 items`, or both, for a summary line."""
        parts = []
        if self.rows is not None:
            parts.append("rows " + ",".join(f"{a}-{b}" if a != b else str(a) for a, b in self.rows))
        if self.limit is not None:
            parts.append(f"the first {self.limit} item{'s' if self.limit != 1 else ''}")
        return " and ".join(parts) or "everything"


class Tally:
    """Counts filled in while a batch is read: data rows, items (row x axes after `where`) and the ones a
    Selection picked, so a summary can say "5 of 600 items". An accumulator, not a value."""

    __slots__ = ("items", "rows", "runs", "selected_items", "selected_runs")

    def __init__(self) -> None:
        self.rows = 0
        self.items = 0
        self.selected_items = 0
        self.runs = 0
        self.selected_runs = 0

    def __repr__(self) -> str:
        return (
            f"Tally(rows={self.rows}, items={self.items}, selected_items={self.selected_items}, "
            f"runs={self.runs}, selected_runs={self.selected_runs})"
        )


class Picker:
    """Applies a Selection to the items of one pass, in order."""

    def __init__(self, selection: Selection | None) -> None:
        self.selection = selection or Selection()
        self.taken = 0

    def pick(self, row_number: int) -> bool:
        sel = self.selection
        if not sel.wants_row(row_number) or (sel.limit is not None and self.taken >= sel.limit):
            return False
        self.taken += 1
        return True


def subset_text(selected: int, items: int, selection: Selection | None = None, rows: int | None = None) -> str:
    """`5 of 600 items`: what a --rows/--limit subset picked of the whole batch, for a summary line; with the
    `selection` and the sheet's `rows`, it also says when `--rows` asked for rows past the last one (`rows_note`)."""
    text = f"{selected} of {items} item{'s' if items != 1 else ''}"
    note = rows_note(selection, rows)
    return text if note is None else f"{text}; {note}"


def rows_note(selection: Selection | None, rows: int | None) -> str | None:
    """`there are 25 data rows, so --rows past 25 picks nothing` when `--rows` names a row past the last (a typo,
    usually); None otherwise."""
    if selection is None or not selection.rows or rows is None or max(b for _, b in selection.rows) <= rows:
        return None
    there = f"there is {rows} data row" if rows == 1 else f"there are {rows} data rows"
    return f"{there}, so --rows past {rows} picks nothing"
