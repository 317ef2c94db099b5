"""The plan compared with the manifest (`plan`: new / reused / running / to retry / kept / waiting for upstream /
orphaned, each run decided by `lifecycle.decide` as `run` decides it, with the reason), the per-step state counts
and failures (`status`), and `cancel` of running runs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .credits import format_credits
from .errors import ApiError
from .lifecycle import COMPLETE, Action, Choices, Decision, Upstream, decide, redo_reason
from .matrix import expand_runs
from .models import DOWNLOAD_FAILED, ItemPlan, PlannedRun, RunRecord, RunState
from .params import normalise, respelled_inputs
from .selection import Selection, Tally, subset_text

if TYPE_CHECKING:
    from .client import LaminaClient
    from .credits import Bill
    from .manifest import Manifest
    from .models import Pipeline

__all__ = [
    "CATEGORIES",
    "NOT_STARTED",
    "FailureEntry",
    "OrphanEntry",
    "PlanEntry",
    "PlanReport",
    "StatusReport",
    "cancel_running",
    "category_of",
    "plan_against_manifest",
    "runs_to_start",
    "starts_planned",
    "status_exit_code",
    "status_report",
]

CATEGORIES = ("new", "reused", "running", "retry", "unknown", "failed_kept", "waiting", "orphaned", "redo")
NOT_STARTED = "not started"
_BATCH = 500  # planned runs looked up in the manifest per query
_UNFINISHED = frozenset({NOT_STARTED, RunState.PENDING.value, RunState.SUBMITTING.value, RunState.RUNNING.value})
# The plan's category of each action (`to_start` counts new + retry).
_CATEGORY = {
    Action.REUSE: "reused",
    Action.FOLLOW: "running",
    Action.RECONCILE: "running",
    Action.START: "new",
    Action.START_AFTER_UPSTREAM: "retry",
    Action.RESTART_AFTER_FAILURE: "retry",
    Action.RESTART_UNKNOWN: "retry",
    Action.KEEP_FAILED: "failed_kept",
    Action.KEEP_UNKNOWN: "unknown",
    Action.WAIT_FOR_UPSTREAM: "waiting",
    Action.SKIP_UPSTREAM_FAILED: "waiting",
    Action.REDO: "redo",
}
# The reason of a run that is new only because its inputs are spelled differently (`Prompt` -> `prompt`).
RENAMED = "inputs renamed"
# Categories whose reasons the plan counts and shows under "why".
_EXPLAINED = frozenset({"new", "retry", "running", "waiting", "redo"})


# The actions that send a start request: what `plan` counts as "would start" and what `run` prices and budgets.
STARTING = frozenset(a for a in Action if a.starts)


class StartCount:
    """Runs this invocation would start, per step, fed the planner's decisions in plan order: at most
    `max_starts` in all (the first ones, as the executor starts them)."""

    def __init__(self, max_starts: int | None = None) -> None:
        self.max_starts = max_starts
        self.by_step: Counter[str] = Counter()
        self.total = 0

    def add(self, step_id: str, action: Action) -> None:
        if action not in STARTING or (self.max_starts is not None and self.total >= self.max_starts):
            return
        self.by_step[step_id] += 1
        self.total += 1


def runs_to_start(decided: Iterable[tuple[str, Action]], *, max_starts: int | None = None) -> dict[str, int]:
    """Per step, the runs an invocation would start, from the planner's (step id, action) decisions of the runs
    it covers (all planned runs, or a subset) in plan order, capped at `max_starts`: what `plan` bills and `run`
    checks against the balance."""
    count = StartCount(max_starts)
    for step_id, action in decided:
        count.add(step_id, action)
    return dict(count.by_step)


def category_of(action: Action) -> str:
    """The plan's category (one of CATEGORIES) of a decided action."""
    return _CATEGORY[action]


@dataclass(frozen=True)
class PlanEntry:
    """What `run` would do with one planned run, and why."""

    identity: str
    step_id: str
    row_number: int
    row_key: str | None
    axes: Mapping[str, str]
    category: str
    reason: str
    state: RunState | None = None
    remote_id: str | None = None
    app_id: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)  # rendered; upstream outputs as placeholders
    needs: Mapping[str, str] = field(default_factory=dict)
    decision: Action | None = None  # the lifecycle's action (the category is what `plan` shows of it)

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "step": self.step_id,
            "app": self.app_id,
            "row_number": self.row_number,
            "row_key": self.row_key,
            "axes": dict(self.axes),
            "action": self.category,
            "reason": self.reason,
            "state": None if self.state is None else self.state.value,
            "remote_id": self.remote_id,
            "inputs": dict(self.inputs),
            "needs": dict(self.needs),
        }


@dataclass(frozen=True)
class OrphanEntry:
    """A manifest run the current pipeline no longer plans (kept as history)."""

    identity: str
    step_id: str
    row_number: int
    row_key: str | None
    state: RunState

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "step": self.step_id,
            "row_number": self.row_number,
            "row_key": self.row_key,
            "state": self.state.value,
        }


@dataclass(frozen=True)
class PlanReport:
    """Per-step counts by category (see CATEGORIES), counts of reasons, and (with details) every entry."""

    pipeline_name: str
    steps: Mapping[str, Mapping[str, int]]
    reasons: Mapping[str, int]
    entries: tuple[PlanEntry, ...] = ()
    orphans: tuple[OrphanEntry, ...] = ()
    shard: tuple[int, int] | None = None
    has_manifest: bool = False
    starts: Mapping[str, int] = field(default_factory=dict)  # runs_to_start: per step, within max_starts
    bill: Bill | None = None  # what those starts cost (credits.bill_of), when asked for
    subset: str | None = None  # with --rows/--limit: "5 of 600 items"
    sheet: str | None = None  # a matrix source fetched by URL (shown without its query)
    sheet_changed: bool | None = None  # since the last run read it; None: no run read it yet

    def total(self, category: str) -> int:
        return sum(c.get(category, 0) for c in self.steps.values())

    @property
    def planned(self) -> int:
        return sum(n for c in self.steps.values() for k, n in c.items() if k != "orphaned")

    @property
    def to_start(self) -> int:
        """Runs that would send a start request (new + to retry + to redo)."""
        return self.total("new") + self.total("retry") + self.total("redo")

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline_name,
            "shard": None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}",
            "manifest": self.has_manifest,
            "planned": self.planned,
            "to_start": self.to_start,
            "totals": {c: self.total(c) for c in CATEGORIES},
            "steps": {s: dict(c) for s, c in self.steps.items()},
            "reasons": dict(self.reasons),
            "runs": [e.to_json() for e in self.entries],
            "orphans": [o.to_json() for o in self.orphans],
            "starts": dict(self.starts),
            "credits": None if self.bill is None else self.bill.to_json(),
            "subset": self.subset,
            "sheet": None if self.sheet is None else {"source": self.sheet, "changed": self.sheet_changed},
        }

    def render_text(self) -> str:
        shard = f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard else ""
        subset = f" (a subset: {self.subset})" if self.subset else ""
        lines = [f"{self.pipeline_name}: {self.planned} runs planned{shard}{subset}"]
        headers: tuple[str, ...] = ("step", "new", "reused", "running", "retry", "unknown", "failed", "waiting")
        headers += ("orphaned",)
        shown: tuple[str, ...] = CATEGORIES[:-1]
        if self.total("redo"):  # the column appears only when `--redo rejected` has something to redo
            headers, shown = (*headers, "redo"), CATEGORIES
        rows: list[tuple[str, ...]] = [headers]
        for step, c in self.steps.items():
            rows.append((step, *(str(c.get(k, 0)) for k in shown)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
        for r in rows:
            cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, len(r))]
            lines.append("  " + "  ".join(cells))
        retry = self.total("retry")
        redo = f", {self.total('redo')} to redo" if self.total("redo") else ""
        summary = f"would start {self.to_start} runs ({self.total('new')} new, {retry} to retry{redo})"
        if self.total("running"):
            summary += f"; {self.total('running')} running remotely would be followed, not started again"
        lines.append(summary)
        if self.sheet is not None:
            lines.append(f"sheet {self.sheet}: {_SHEET_NEWS[self.sheet_changed]}")
        kept = self.total("failed_kept") + self.total("unknown")
        if kept:
            lines.append(
                f"{kept} failed/unknown runs are kept as they are (--retry-failed / --restart-unknown to rerun)"
            )
        waiting = self.total("waiting")
        if waiting:
            lines.append(
                f"{waiting} runs are waiting for upstream: they start once their upstream run completes "
                "(until then they count as failed)"
            )
        renamed = sum(n for reason, n in self.reasons.items() if reason.startswith(RENAMED))
        if renamed:
            lines.append(
                f"{renamed} runs would start again only because inputs were renamed (same parameters, same values): "
                "Lamina takes either spelling, but a run's identity is its inputs as written, so these would be paid "
                "again; keep the old spelling to reuse them"
            )
        if self.reasons:
            lines.append("why:")
            for reason, n in sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {n:>6}  {reason}")
        for e in self.entries:
            if e.category in _EXPLAINED:
                key = f" [{e.row_key}]" if e.row_key is not None else ""
                axes = "".join(f" {k}={v}" for k, v in e.axes.items())
                lines.append(f"  row {e.row_number}{key}{axes} {e.step_id}: {e.category}: {e.reason}")
        if self.orphans:
            lines.append(f"orphaned (kept as history): {len(self.orphans)}")
        if sum(self.starts.values()) < self.to_start:
            lines.append(f"this invocation would start {sum(self.starts.values())} of them (max_starts)")
        if self.bill is not None:
            lines.extend(self.bill.render_lines())
        return "\n".join(lines)


_SHEET_NEWS = {
    True: "changed since the last run",
    False: "unchanged since the last run",
    None: "fetched; no run has read it yet",
}


def _row_slot(step_id: str, item_id: str) -> tuple[str, str]:
    # An item's id is its key value (+ axes), else its row's values (+ axes, occurrence): stable when only the
    # templates change, so a run with a new identity in a known slot was changed, not added.
    return step_id, item_id


def _batches(runs: Iterable[PlannedRun], size: int) -> Iterator[list[PlannedRun]]:
    batch: list[PlannedRun] = []
    for run in runs:
        batch.append(run)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _planned_runs(pipeline: Pipeline, shard: tuple[int, int] | None) -> Iterator[PlannedRun]:
    for plan in expand_runs(pipeline, shard=shard):
        yield from plan.runs


def _item_batches(
    pipeline: Pipeline,
    shard: tuple[int, int] | None,
    size: int,
    selection: Selection | None = None,
    tally: Tally | None = None,
) -> Iterator[list[ItemPlan]]:
    """Whole items (a run's upstream is in its own item) in batches of about `size` runs."""
    batch: list[ItemPlan] = []
    runs = 0
    for plan in expand_runs(pipeline, shard=shard, selection=selection, tally=tally):
        batch.append(plan)
        runs += len(plan.runs)
        if runs >= size:
            yield batch
            batch, runs = [], 0
    if batch:
        yield batch


def _expected(decision: Decision, step_id: str, state: RunState | None) -> Upstream:
    """What `plan` expects a run to leave its downstream runs: a run it would start or follow completes; one it
    keeps, or that waits for its own upstream, does not."""
    action = decision.action
    if action in (Action.KEEP_FAILED, Action.KEEP_UNKNOWN):
        return Upstream.failed(step_id, state or RunState.FAILED)
    if action in (Action.SKIP_UPSTREAM_FAILED, Action.WAIT_FOR_UPSTREAM):
        return Upstream.failed(step_id, RunState.FAILED)
    return COMPLETE


def _upstream_of(run: PlannedRun, expected: Mapping[str, Upstream]) -> Upstream:
    for step_id in run.needs:
        up = expected.get(step_id, COMPLETE)
        if up is not COMPLETE:
            return up
    return COMPLETE


def plan_against_manifest(
    pipeline: Pipeline,
    manifest: Manifest | None,
    *,
    retry_failed: bool = False,
    restart_unknown: bool = False,
    shard: tuple[int, int] | None = None,
    details: bool = False,
    max_starts: int | None = None,
    redo_rejected: bool = False,
    rejected: Mapping[str, int] | None = None,
    selection: Selection | None = None,
) -> PlanReport:
    """What `run` would do now, without a request: streamed over the plan; entries only when `details`; `starts`
    per step within `max_starts`. With `redo_rejected`, completed runs whose current attempt is in `rejected`
    (identity -> rejected attempt) are redone, and so are the completed runs downstream of a run it would start."""
    choices = Choices(retry_failed=retry_failed, restart_unknown=restart_unknown, redo_rejected=redo_rejected)
    steps: dict[str, Counter[str]] = {s.id: Counter() for s in pipeline.steps}
    reasons: Counter[str] = Counter()
    entries: list[PlanEntry] = []
    planned: set[str] = set()
    previous = _previous_slots(manifest)
    starts = StartCount(max_starts)
    tally = Tally()
    for run, known, decision in _decided(pipeline, manifest, choices, shard, rejected, selection, tally):
        planned.add(run.identity)
        category = category_of(decision.action)
        reason = _why_new(run, previous) if known is None and decision.action is Action.START else decision.reason
        steps.setdefault(run.step_id, Counter())[category] += 1
        starts.add(run.step_id, decision.action)
        if category in _EXPLAINED:
            reasons[reason] += 1
        if details:
            entries.append(_entry(run, known, category, reason, decision.action))
    if selection is not None and manifest is not None:
        # runs of the rows a subset leaves out are not orphans: the full batch still plans them
        planned.update(r.identity for plan in expand_runs(pipeline, shard=shard) for r in plan.runs)
    orphans = _orphans(manifest, planned, steps, details=details)
    return PlanReport(
        pipeline_name=pipeline.name,
        steps={s: {c: counts.get(c, 0) for c in CATEGORIES} for s, counts in steps.items()},
        reasons=dict(reasons),
        entries=tuple(entries),
        orphans=tuple(orphans),
        shard=shard,
        has_manifest=manifest is not None,
        starts=dict(starts.by_step),
        subset=None if selection is None else subset_text(tally.selected_items, tally.items, selection, tally.rows),
    )


def starts_planned(
    pipeline: Pipeline,
    manifest: Manifest | None,
    *,
    retry_failed: bool = False,
    restart_unknown: bool = False,
    shard: tuple[int, int] | None = None,
    max_starts: int | None = None,
    redo_rejected: bool = False,
    rejected: Mapping[str, int] | None = None,
    selection: Selection | None = None,
) -> dict[str, int]:
    """Per step, the runs `run` would start now (`runs_to_start` over every planned run's decision, redos
    included, within the `--rows/--limit` subset): what `run` checks against the balance before its first start.
    Sends nothing."""
    choices = Choices(retry_failed=retry_failed, restart_unknown=restart_unknown, redo_rejected=redo_rejected)
    decided = (
        (run.step_id, d.action) for run, _, d in _decided(pipeline, manifest, choices, shard, rejected, selection)
    )
    return runs_to_start(decided, max_starts=max_starts)


def _decided(
    pipeline: Pipeline,
    manifest: Manifest | None,
    choices: Choices,
    shard: tuple[int, int] | None,
    rejected: Mapping[str, int] | None = None,
    selection: Selection | None = None,
    tally: Tally | None = None,
) -> Iterator[tuple[PlannedRun, RunRecord | None, Decision]]:
    """Every planned run in plan order with its manifest record and `decide`'s decision, as `plan` expects it:
    a run it would start or follow is expected to complete for its downstream runs. Under `--redo rejected`
    (`choices.redo_rejected`), a completed run is redone when its current attempt is in `rejected` or an upstream
    run of its item would be at a newer attempt than the one it consumed."""
    rejected = rejected or {}
    for batch in _item_batches(pipeline, shard, _BATCH, selection, tally):
        ids = (r.identity for plan in batch for r in plan.runs)
        found = manifest.get_many(ids) if manifest is not None else {}
        for plan in batch:
            expected: dict[str, Upstream] = {}
            attempt_of: dict[str, int] = {}  # step id -> the attempt its run of this item will be at
            for run in plan.runs:
                known = found.get(run.identity)
                redo = None
                if choices.redo_rejected and known is not None and known.state is RunState.COMPLETED:
                    ups = {s: attempt_of[s] for s in run.needs if s in attempt_of}
                    redo = redo_reason(known, rejected.get(run.identity) == max(known.attempts, 1), ups)
                decision = decide(known, _upstream_of(run, expected), choices, redo=redo)
                attempt_of[run.step_id] = (known.attempts if known is not None else 0) + decision.action.starts
                expected[run.step_id] = _expected(decision, run.step_id, None if known is None else known.state)
                yield run, known, decision


@dataclass(frozen=True)
class _Before:
    """What `plan` keeps of a manifest run to say why its row would run again: its identity and upstream, the
    input names as written and a digest of the inputs with spelling set aside (not the inputs: 100k rows)."""

    identity: str
    needs: Mapping[str, str]
    names: tuple[str, ...]
    spelling_free: bytes | None


def _previous_slots(manifest: Manifest | None) -> dict[tuple[str, str], _Before]:
    """A run whose identity is new but whose (step, item) was run before was *changed*."""
    previous: dict[tuple[str, str], _Before] = {}
    if manifest is None:
        return previous
    names: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per spelling, shared by every record
    for rec in manifest.iter_runs():
        spelled = tuple(rec.inputs)
        before = _Before(rec.identity, dict(rec.needs), names.setdefault(spelled, spelled), _spelling_free(rec.inputs))
        previous[_row_slot(rec.step_id, rec.item_id)] = before
    return previous


def _spelling_free(inputs: Mapping[str, Any]) -> bytes | None:
    """A digest of `inputs` keyed by their names with case, spaces and punctuation ignored (params.normalise), so
    `Prompt` and `prompt` (or `Aspect Ratio` and `aspect_ratio`) meet; None when two names would."""
    folded = {normalise(name): value for name, value in inputs.items()}
    if len(folded) != len(inputs):
        return None
    text = json.dumps(folded, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _entry(run: PlannedRun, known: RunRecord | None, category: str, reason: str, action: Action) -> PlanEntry:
    return PlanEntry(
        run.identity,
        run.step_id,
        run.item.row_number,
        run.item.key,
        run.item.axes,
        category,
        reason,
        None if known is None else known.state,
        None if known is None else known.remote_id,
        run.app_id,
        run.inputs,
        run.needs,
        action,
    )


def _orphans(
    manifest: Manifest | None, planned: set[str], steps: dict[str, Counter[str]], *, details: bool
) -> list[OrphanEntry]:
    """Manifest runs the plan no longer has (kept as history): counted per step, listed with `details`."""
    orphans: list[OrphanEntry] = []
    if manifest is None:
        return orphans
    for rec in manifest.iter_runs():
        if rec.identity in planned:
            continue
        steps.setdefault(rec.step_id, Counter())["orphaned"] += 1
        if details:
            orphans.append(OrphanEntry(rec.identity, rec.step_id, rec.row_number, rec.row_key, rec.state))
    return orphans


def _why_new(run: PlannedRun, previous: Mapping[tuple[str, str], _Before]) -> str:
    old = previous.get(_row_slot(run.step_id, run.item.item_id)) if previous else None
    if old is None or old.identity == run.identity:
        return "new row"
    if dict(old.needs) != dict(run.needs):
        changed = sorted(s for s in run.needs if old.needs.get(s) != run.needs[s])
        return f"upstream changed ({', '.join(changed) or 'needs'})"
    renamed = _renamed(old, run.inputs)
    if renamed:
        return f"{RENAMED} ({', '.join(f'{a} -> {b}' for a, b in renamed)})"
    return "inputs changed since the last run of this row"


def _renamed(old: _Before, inputs: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """The (old, new) spellings when `inputs` are the old ones with only their names respelled (as
    params.respelled_inputs judges it), else None."""
    if old.spelling_free is None or old.spelling_free != _spelling_free(inputs):
        return None
    # Equal digests: the old inputs are these values under the old names.
    value_of = {normalise(name): value for name, value in inputs.items()}
    before = {name: value_of[normalise(name)] for name in old.names}
    return respelled_inputs(before, inputs)


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class FailureEntry:
    """One planned run that ended badly, with its row and reason."""

    step_id: str
    row_number: int
    row_key: str | None
    state: RunState
    error: str | None
    error_code: str | None
    identity: str
    remote_id: str | None = None


@dataclass(frozen=True)
class StatusReport:
    """Per step, the number of planned runs in every state (`not started` for runs the manifest lacks)."""

    pipeline_name: str
    steps: Mapping[str, Mapping[str, int]]
    failures: tuple[FailureEntry, ...] = field(default_factory=tuple)
    # completed runs whose files could not all be written: failed for the exit code until a resume fetches them
    download_failures: tuple[FailureEntry, ...] = field(default_factory=tuple)
    credits: Mapping[str, float] = field(default_factory=dict)  # per step: what its runs cost (RunRecord.credits)
    # review verdicts of the completed runs' current attempts: approved / rejected / unreviewed ({}: none given)
    verdicts: Mapping[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        """Runs whose current attempt is rejected (no newer attempt yet): what `--fail-on-rejected` fails on."""
        return self.verdicts.get("rejected", 0)

    def total(self, state: str) -> int:
        return sum(c.get(state, 0) for c in self.steps.values())

    @property
    def planned(self) -> int:
        return sum(sum(c.values()) for c in self.steps.values())

    @property
    def all_completed(self) -> bool:
        return self.total(RunState.COMPLETED.value) == self.planned and not self.download_failures

    def to_json(self) -> dict[str, Any]:
        """What `status --json` prints: the same counts and failures as the table."""

        def entry(f: FailureEntry) -> dict[str, Any]:
            return {
                "step": f.step_id,
                "row_number": f.row_number,
                "row_key": f.row_key,
                "state": f.state.value,
                "error": f.error,
                "error_code": f.error_code,
                "identity": f.identity,
                "remote_id": f.remote_id,
            }

        return {
            "pipeline": self.pipeline_name,
            "planned": self.planned,
            "steps": {step: dict(c) for step, c in self.steps.items()},
            "failures": [entry(f) for f in self.failures],
            "download_failures": [entry(f) for f in self.download_failures],
            "credits": {"by_step": dict(self.credits), "total": sum(self.credits.values())} if self.credits else None,
            "verdicts": dict(self.verdicts),
        }

    @property
    def any_bad(self) -> bool:
        return any(self.total(s.value) for s in RunState if s.bad)

    @property
    def any_unfinished(self) -> bool:
        return any(self.total(s) for s in _UNFINISHED)

    def render_text(self) -> str:
        order = [RunState.COMPLETED.value, RunState.RUNNING.value, RunState.SUBMITTING.value]
        order += [RunState.PENDING.value, NOT_STARTED]
        order += [s.value for s in RunState if s.bad]
        shown = [s for s in order if self.total(s)]
        lines = [f"{self.pipeline_name}: {self.planned} runs planned"]
        for step, c in self.steps.items():
            parts = [f"{c.get(s, 0)} {s}" for s in shown if c.get(s, 0)]
            lines.append(f"  {step}: {', '.join(parts) or 'nothing planned'}")
        if self.failures:
            lines.append(f"failures ({len(self.failures)}):")
            for f in self.failures:
                key = f" [{f.row_key}]" if f.row_key is not None else ""
                code = f" ({f.error_code})" if f.error_code else ""
                lines.append(
                    f"  row {f.row_number}{key} {f.step_id}: {f.state.value}{code}: {f.error or 'no reason given'}"
                )
        if self.download_failures:
            lines.append(f"download failures ({len(self.download_failures)}; run again to fetch them):")
            for f in self.download_failures:
                key = f" [{f.row_key}]" if f.row_key is not None else ""
                lines.append(f"  row {f.row_number}{key} {f.step_id}: {f.error or 'download failed'}")
        if self.credits:
            spent = ", ".join(f"{step} {format_credits(v)}" for step, v in self.credits.items())
            lines.append(f"credits: {spent}; total {format_credits(sum(self.credits.values()))}")
        if self.verdicts.get("approved") or self.verdicts.get("rejected"):
            v = self.verdicts
            lines.append(
                f"review: {v.get('approved', 0)} approved, {v.get('rejected', 0)} rejected, "
                f"{v.get('unreviewed', 0)} unreviewed"
                + (" (`run --redo rejected` makes new attempts)" if v.get("rejected") else "")
            )
        return "\n".join(lines)


def status_report(
    pipeline: Pipeline,
    manifest: Manifest,
    *,
    shard: tuple[int, int] | None = None,
    verdicts: Mapping[tuple[str, int], str] | None = None,
) -> StatusReport:
    """Counts by state per step over the planned runs, and every failure with its row and reason; with `verdicts`
    ((identity, attempt) -> approved/rejected), the verdict counts of the completed runs' current attempts."""
    steps: dict[str, Counter[str]] = {s.id: Counter() for s in pipeline.steps}
    reviewed: Counter[str] = Counter()
    failures: list[FailureEntry] = []
    downloads: list[FailureEntry] = []
    spent: dict[str, float] = {}
    for batch in _batches(_planned_runs(pipeline, shard), _BATCH):
        found = manifest.get_many(r.identity for r in batch)
        for run in batch:
            rec = found.get(run.identity)
            counts = steps.setdefault(run.step_id, Counter())
            if rec is None:
                counts[NOT_STARTED] += 1
                continue
            counts[rec.state.value] += 1
            if rec.state is RunState.COMPLETED and rec.error_code == DOWNLOAD_FAILED:
                downloads.append(_failure_entry(run, rec))
            cost = rec.credits
            if cost is not None:
                spent[rec.step_id] = spent.get(rec.step_id, 0.0) + cost
            if verdicts is not None and rec.state is RunState.COMPLETED:
                reviewed[verdicts.get((rec.identity, max(rec.attempts, 1)), "unreviewed")] += 1
            if rec.state.bad:
                failures.append(_failure_entry(run, rec))
    return StatusReport(
        pipeline.name,
        {s: dict(c) for s, c in steps.items()},
        tuple(failures),
        tuple(downloads),
        spent,
        dict(reviewed),
    )


def _failure_entry(run: PlannedRun, rec: RunRecord) -> FailureEntry:
    return FailureEntry(
        rec.step_id,
        run.item.row_number,
        run.item.key,
        rec.state,
        rec.error,
        rec.error_code,
        rec.identity,
        rec.remote_id,
    )


def status_exit_code(report: StatusReport) -> int:
    """0 all planned runs completed, 3 some not finished yet, 1 some failed/cancelled/timed out/unknown."""
    if report.all_completed:
        return 0
    if report.any_unfinished:
        return 3
    return 1


# --------------------------------------------------------------------------- cancel


async def cancel_running(pipeline: Pipeline, manifest: Manifest, client: LaminaClient) -> list[tuple[str, str]]:
    """Cancel every remote run the manifest still has running; returns (identity, outcome) per run."""
    live: Sequence[RunRecord] = list(manifest.iter_runs(states=[RunState.RUNNING, RunState.SUBMITTING]))
    results: list[tuple[str, str]] = []
    for rec in live:
        if rec.remote_id is None:
            results.append((rec.identity, "start reply was lost: nothing to cancel yet (`run` reconciles it first)"))
            continue
        if not client.supports_cancel:
            results.append((rec.identity, f"{rec.remote_id}: this API has no cancel endpoint; left running"))
            continue
        try:
            reply = await client.cancel(rec.remote_id)
        except ApiError as e:
            results.append((rec.identity, f"{rec.remote_id}: cancel failed: {e}"))
            continue
        status = "cancelled" if reply is None else reply.status
        if status == "cancelled":
            manifest.finish(
                rec.identity,
                RunState.CANCELLED,
                error=f"cancelled by `lamina-batch cancel` ({pipeline.name})",
                error_code="CANCELLED",
            )
            results.append((rec.identity, f"{rec.remote_id}: cancelled"))
        else:
            results.append((rec.identity, f"{rec.remote_id}: already {status}; the next `run` records it"))
    return results
