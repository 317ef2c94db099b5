"""The library side of `review`'s scripted forms: `--approve/--reject ROW[:STEP] [--note]`, `--list [--json]`,
`--import verdicts.json`, and the rejected runs a redo starts again. Functions raise; the CLI prints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina_batch.errors import ConfigError, ManifestError, Problem
from lamina_batch.manifest import Manifest
from lamina_batch.models import RunRecord, RunState
from lamina_batch.reports.common import axes_label, row_label
from lamina_batch.templates import did_you_mean
from lamina_batch.verdicts import Verdict, VerdictStore, export_document, parse_document

__all__ = [
    "ImportSummary",
    "ReviewEntry",
    "current_verdicts",
    "export_verdicts",
    "import_verdicts",
    "list_reviews",
    "mark",
    "rejected_runs",
    "render_review_list",
    "resolve_target",
]


@dataclass(frozen=True)
class ReviewEntry:
    """One completed run and the verdict in force for its current attempt (None: not reviewed yet)."""

    record: RunRecord
    attempt: int
    verdict: Verdict | None

    def to_json(self) -> dict[str, Any]:
        rec, v = self.record, self.verdict
        return {
            "identity": rec.identity,
            "step": rec.step_id,
            "row_number": rec.row_number,
            "row_key": rec.row_key,
            "axes": dict(rec.axes),
            "attempt": self.attempt,
            "verdict": v.verdict if v else None,
            "note": v.note if v else None,
            "at": v.at if v else None,
        }


@dataclass(frozen=True)
class ImportSummary:
    """What `import_verdicts` did: recorded (of which `stale` concern an attempt that is no longer current),
    `duplicates` already recorded, and entries `skipped` (no such run, or an attempt that never happened)."""

    recorded: int
    duplicates: int
    stale: int
    skipped: tuple[str, ...]


def _open_runs(manifest: Path, pipeline_name: str) -> Manifest:
    return Manifest.open(manifest, pipeline_name=pipeline_name, writer=False, create=False)


def current_verdicts(records: Iterable[RunRecord], store: VerdictStore) -> list[ReviewEntry]:
    """Every completed run among `records` with the verdict in force for its current attempt."""
    latest = store.latest()
    out = []
    for rec in records:
        if rec.state is RunState.COMPLETED:
            attempt = max(rec.attempts, 1)
            out.append(ReviewEntry(rec, attempt, latest.get((rec.identity, attempt))))
    return out


def list_reviews(manifest: Path, pipeline_name: str) -> list[ReviewEntry]:
    """`review --list`: every completed run in row order with its verdict (None when not reviewed yet)."""
    with (
        _open_runs(manifest, pipeline_name) as m,
        VerdictStore.open(manifest, pipeline_name=pipeline_name, writable=False) as store,
    ):
        return current_verdicts(m.iter_runs(states=[RunState.COMPLETED]), store)


def render_review_list(entries: Sequence[ReviewEntry]) -> str:
    """The `--list` table for people: row, step, attempt, verdict, note; then the counts."""
    lines = []
    counts = {"approved": 0, "rejected": 0, "unreviewed": 0}
    for e in entries:
        rec = e.record
        verdict = e.verdict.verdict if e.verdict else "unreviewed"
        counts[verdict] += 1
        where = f"{row_label(rec)} {axes_label(rec.axes)}".strip()
        note = f"  {e.verdict.note}" if e.verdict and e.verdict.note else ""
        lines.append(f"#{rec.row_number:<5} {where:<32} {rec.step_id:<12} attempt {e.attempt:<3} {verdict}{note}")
    lines.append(
        f"{len(entries)} completed runs: {counts['approved']} approved, {counts['rejected']} rejected, "
        f"{counts['unreviewed']} unreviewed"
    )
    return "\n".join(lines)


def resolve_target(records: Sequence[RunRecord], target: str) -> list[RunRecord]:
    """The completed runs `ROW[:STEP]` names: ROW is the row's key value or `#N` (data row N); with axes it is
    every combination of that row; without STEP, every step. ConfigError (exit 2) naming what exists."""
    keys = {r.row_key for r in records if r.row_key}
    row, step = target, None
    if target not in keys and ":" in target:  # a key may itself hold a colon: the whole text wins
        row, _, step = target.rpartition(":")
    if row.startswith("#"):
        if not row[1:].isdigit():
            raise _target_error(target, f"{row!r} is not a row number", "write #N, e.g. #12")
        number = int(row[1:])
        matched = [r for r in records if r.row_number == number]
    else:
        matched = [r for r in records if r.row_key == row]
    if not matched:
        if row.startswith("#"):
            hint = f"rows run from #{min(r.row_number for r in records)}" if records else None
        elif not keys:
            hint = "this pipeline has no matrix.key; name the row by number, e.g. #12"
        else:
            hint = did_you_mean(row, sorted(keys)) or f"keys such as {', '.join(sorted(keys)[:3])}, or #N"
        raise _target_error(target, f"no row {row!r} in the manifest", hint)
    if step is not None:
        steps = sorted({r.step_id for r in records})
        if step not in steps:
            raise _target_error(target, f"no step {step!r}", did_you_mean(step, steps) or f"steps: {', '.join(steps)}")
        matched = [r for r in matched if r.step_id == step]
    done = [r for r in matched if r.state is RunState.COMPLETED]
    if not done:
        states = ", ".join(sorted({r.state.value for r in matched}))
        raise _target_error(target, f"nothing to review there yet (runs are {states})", "only completed runs are")
    return done


def _target_error(target: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(Problem(message, path=f"review {target}", hint=hint))


def mark(manifest: Path, pipeline_name: str, target: str, verdict: str, note: str | None = None) -> list[Verdict]:
    """`review --approve/--reject ROW[:STEP] [--note]`: record the verdict for every completed run it names."""
    with _open_runs(manifest, pipeline_name) as m:
        records = list(m.iter_runs())
    runs = resolve_target(records, target)
    with VerdictStore.open(manifest, pipeline_name=pipeline_name) as store:
        entries = [(r.identity, max(r.attempts, 1), verdict, note, None) for r in runs]
        return [v for v in store.record_many(entries, source="cli") if v is not None]


def import_verdicts(manifest: Path, pipeline_name: str, source: Path) -> ImportSummary:
    """`review --import verdicts.json`: record the file's verdicts (PLAN contract 9). Entries for runs this
    manifest does not have are skipped and named; the same file imported twice records nothing new."""
    try:
        raw = Path(source).read_bytes()
    except OSError as e:
        raise ConfigError(Problem(f"cannot read it ({e.strerror})", file=str(source))) from None
    doc = parse_document(raw, source=str(source))
    if doc.pipeline != pipeline_name:
        raise ConfigError(
            Problem(
                f"exported from pipeline '{doc.pipeline}', not '{pipeline_name}'",
                file=str(source),
                path="pipeline",
                hint="import it into the pipeline whose gallery it came from",
            )
        )
    with _open_runs(manifest, pipeline_name) as m:
        known = m.get_many(v.identity for v in doc.verdicts)
    entries, skipped, stale = [], [], 0
    for v in doc.verdicts:
        rec = known.get(v.identity)
        where = f"verdicts[{v.index}] ({v.row_key or (f'#{v.row_number}' if v.row_number else v.identity)})"
        if rec is None:
            skipped.append(f"{where}: no such run in {manifest}")
            continue
        if v.attempt > max(rec.attempts, 1):
            skipped.append(f"{where}: attempt {v.attempt} never happened (the run is at {rec.attempts})")
            continue
        stale += v.attempt < max(rec.attempts, 1)
        entries.append((v.identity, v.attempt, v.verdict, v.note, v.at))
    with VerdictStore.open(manifest, pipeline_name=pipeline_name) as store:
        done = store.record_many(entries, source="import", skip_duplicates=True)
    duplicates = sum(1 for d in done if d is None)
    return ImportSummary(len(done) - duplicates, duplicates, stale, tuple(skipped))


def export_verdicts(manifest: Path, pipeline_name: str) -> dict[str, Any]:
    """Every verdict in force for a completed run's current attempt, as a verdicts.json document."""
    entries = [e for e in list_reviews(manifest, pipeline_name) if e.verdict is not None]
    return export_document(pipeline_name, ((e.verdict, e.record) for e in entries if e.verdict is not None))


def rejected_runs(manifest: Path, pipeline_name: str) -> list[RunRecord]:
    """The completed runs whose current attempt is rejected: what `run --redo rejected` starts again."""
    if not Path(manifest).is_file():
        raise ManifestError(f"no manifest at {manifest} yet; run the pipeline first")
    return [
        e.record
        for e in list_reviews(manifest, pipeline_name)
        if e.verdict is not None and e.verdict.verdict == "rejected"
    ]
