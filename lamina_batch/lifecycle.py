"""The run lifecycle, declared once: the manifest states' legal moves as one table (`MOVES`) with one function
that refuses any other (`check_move`), and the one decision `plan` and `run` share about a planned run (`decide`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .errors import IllegalTransitionError
from .models import RunRecord, RunState

__all__ = [
    "COMPLETE",
    "MOVES",
    "RUN_FAILED",
    "START_UNKNOWN",
    "TEMPLATE_ERROR",
    "UPSTREAM_FAILED",
    "Action",
    "Choices",
    "Decision",
    "Upstream",
    "UpstreamState",
    "check_move",
    "decide",
    "redo_reason",
]

# Error codes the executor writes into a run's record (beside the API's own codes).
UPSTREAM_FAILED = "UPSTREAM_FAILED"  # never started: an upstream run of its row did not complete
RUN_FAILED = "RUN_FAILED"  # the remote run failed
TEMPLATE_ERROR = "TEMPLATE_ERROR"  # its inputs did not render with the upstream's real outputs
START_UNKNOWN = "START_UNKNOWN"  # the start reply was lost and reconciling could not tell

_P, _S, _R, _C = RunState.PENDING, RunState.SUBMITTING, RunState.RUNNING, RunState.COMPLETED
_F, _X, _T, _U = RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT, RunState.UNKNOWN

# from-state (None: not in the manifest yet) -> {to-state: the move's name}. Anything else is refused, so a
# completed or running run is never started again (that would pay twice) and a result is never overwritten.
MOVES: Final[Mapping[RunState | None, Mapping[RunState, str]]] = {
    None: {_P: "planned", _S: "start intent (write-ahead, before the request)"},
    _P: {_S: "start intent", _F: "cannot start (upstream failed, or inputs do not render)"},
    _S: {
        _R: "remote id recorded",
        _P: "nothing was created (not sent, or reconciled: no such run)",
        _F: "start refused (nothing was created)",
        _U: "start reply lost and reconciling could not tell",
    },
    _R: {_C: "completed", _F: "failed remotely", _X: "cancelled", _T: "timed out"},
    # A download that failed is noted on the completed run. A redo (`run --redo rejected`: a verdict rejected the
    # attempt, or an upstream run it consumed was redone) is the one deliberate new payment for a completed run.
    _C: {_C: "download failed", _S: "redo (a new attempt: rejected, or its upstream was redone)"},
    _F: {_S: "start again", _F: "cannot start (upstream failed, or inputs do not render)"},
    _X: {_S: "start again", _F: "cannot start (upstream failed, or inputs do not render)"},
    _T: {_S: "start again", _F: "cannot start (upstream failed, or inputs do not render)"},
    _U: {
        _S: "start again (--restart-unknown)",
        _P: "released to start again",
        _F: "cannot start (upstream failed, or inputs do not render)",
    },
}


def check_move(old: RunState | None, new: RunState) -> str:
    """The name of the move `old` -> `new`; IllegalTransitionError if the lifecycle has no such move."""
    try:
        return MOVES[old][new]
    except KeyError:
        before = "absent" if old is None else old.value
        raise IllegalTransitionError(f"a run cannot go from {before} to {new.value}") from None


# --------------------------------------------------------------------------- the decision


class Action(enum.Enum):
    """What one invocation does with one planned run."""

    REUSE = "reuse"  # completed earlier: nothing sent (its files are re-verified)
    FOLLOW = "follow"  # has a remote id: waited for, never started again
    RECONCILE = "reconcile"  # intent without remote id: find out from the runs list first
    START = "start"  # never started
    START_AFTER_UPSTREAM = "start-after-upstream"  # never started because its upstream failed; now it can
    RESTART_AFTER_FAILURE = "restart-after-failure"  # failed/cancelled/timed out, --retry-failed
    RESTART_UNKNOWN = "restart-unknown"  # outcome unknown, --restart-unknown
    KEEP_FAILED = "keep-failed"  # failed/cancelled/timed out, kept (reported, not run again)
    KEEP_UNKNOWN = "keep-unknown"  # outcome unknown, kept
    WAIT_FOR_UPSTREAM = "wait-for-upstream"  # an upstream run has not finished (a stop came first)
    SKIP_UPSTREAM_FAILED = "skip-upstream-failed"  # an upstream run ended badly: recorded UPSTREAM_FAILED
    REDO = "redo"  # completed, but rejected (or its upstream was redone), `--redo rejected`: a new attempt

    @property
    def starts(self) -> bool:
        """True when the run is started (a new attempt), provided its upstream completes."""
        return self in _STARTS


_STARTS = frozenset(
    {Action.START, Action.START_AFTER_UPSTREAM, Action.RESTART_AFTER_FAILURE, Action.RESTART_UNKNOWN, Action.REDO}
)


class UpstreamState(enum.Enum):
    """Where a run's upstream runs (those of its row it `needs`) stand when it is decided."""

    COMPLETE = "complete"  # all completed, or the run has none
    FAILED = "failed"  # one ended failed/cancelled/timed out/unknown (or never started: its own upstream failed)
    UNFINISHED = "unfinished"  # one has not finished in this invocation (a stop came first)


@dataclass(frozen=True)
class Upstream:
    """The upstream of one run: its state and, unless complete, the first step that is not (and how it ended)."""

    state: UpstreamState = UpstreamState.COMPLETE
    step_id: str | None = None
    ended: RunState | None = None

    @classmethod
    def failed(cls, step_id: str, ended: RunState) -> Upstream:
        return cls(UpstreamState.FAILED, step_id, ended)

    @classmethod
    def unfinished(cls, step_id: str) -> Upstream:
        return cls(UpstreamState.UNFINISHED, step_id)


COMPLETE: Final = Upstream()


@dataclass(frozen=True)
class Choices:
    """The user's restart choices for one invocation (`--retry-failed`, `--restart-unknown`, `--redo rejected`)."""

    retry_failed: bool = False
    restart_unknown: bool = False
    redo_rejected: bool = False


@dataclass(frozen=True)
class Decision:
    """An action and why, in the words `plan` shows."""

    action: Action
    reason: str


def decide(record: RunRecord | None, upstream: Upstream, choices: Choices, *, redo: str | None = None) -> Decision:
    """What happens to a planned run given its manifest record, its upstream and the user's choices.

    `redo` says why a completed run's current attempt is out of date (`redo_reason`: rejected by a verdict, or an
    upstream run it consumed has a newer attempt); only with `--redo rejected` and a complete upstream is it
    started again. Nothing else ever starts a completed run again.

    Pure: `plan` calls it with the upstream it expects (an upstream it would run is expected to complete) and
    `run` with the upstream as it ended, so both say the same. A run with a remote id or a start intent is
    followed or reconciled whatever its upstream says: it may exist remotely. A run that failed only because its
    upstream did (UPSTREAM_FAILED) is not a failure of its own: it starts once its upstream completes.
    """
    state = None if record is None else record.state
    if record is not None and state is RunState.COMPLETED:
        if redo is not None and choices.redo_rejected and upstream.state is UpstreamState.COMPLETE:
            return Decision(Action.REDO, f"{redo}: a new attempt (--redo rejected)")
        return Decision(Action.REUSE, "completed earlier")
    if record is not None and state in (RunState.RUNNING, RunState.SUBMITTING):
        if record.remote_id:
            return Decision(Action.FOLLOW, f"running remotely as {record.remote_id}: followed, never started again")
        return Decision(
            Action.RECONCILE, "start reply was lost: reconciled first (adopt the remote run, or start again)"
        )
    blocked = record is not None and state is RunState.FAILED and record.error_code == UPSTREAM_FAILED
    if state is not None and state.bad and not blocked:
        kept = _kept(state, choices)
        if kept is not None:
            return kept
    if upstream.state is UpstreamState.UNFINISHED:
        return Decision(Action.WAIT_FOR_UPSTREAM, f"waiting for upstream: {upstream.step_id} has not finished")
    if upstream.state is UpstreamState.FAILED:
        ended = upstream.ended.value if upstream.ended is not None else "failed"
        return Decision(Action.SKIP_UPSTREAM_FAILED, f"waiting for upstream: {upstream.step_id} {ended}")
    if state is None:
        return Decision(Action.START, "new row")
    if state is RunState.PENDING:
        return Decision(Action.START, "planned earlier, not started yet")
    if blocked:
        reason = "never started (its upstream had failed): starts once the upstream completes"
        return Decision(Action.START_AFTER_UPSTREAM, reason)
    if state is RunState.UNKNOWN:
        return Decision(Action.RESTART_UNKNOWN, "unknown: restarting (--restart-unknown)")
    return Decision(Action.RESTART_AFTER_FAILURE, f"{state.value}: retrying (--retry-failed)")


def redo_reason(record: RunRecord, rejected: bool, upstream_attempts: Mapping[str, int]) -> str | None:
    """Why a completed run's current attempt is out of date, or None: its latest verdict rejected it, or an
    upstream run it consumed (step id -> that run's attempt now, or the one it is about to get) has a newer attempt
    than the one recorded as consumed. A run recorded before attempts were tracked is never stale."""
    if record.state is not RunState.COMPLETED:
        return None
    if rejected:
        return "rejected"
    newer = sorted(
        step
        for step, attempt in upstream_attempts.items()
        if step in record.upstream_attempts and attempt > record.upstream_attempts[step]
    )
    if newer:
        return f"upstream {', '.join(newer)} redone"
    return None


def _kept(state: RunState, choices: Choices) -> Decision | None:
    """A run's own bad end stays as it is unless the user chose to start such runs again."""
    if state is RunState.UNKNOWN:
        if choices.restart_unknown:
            return None
        return Decision(Action.KEEP_UNKNOWN, "outcome unknown: kept (use --restart-unknown to start it again)")
    if choices.retry_failed:
        return None
    return Decision(Action.KEEP_FAILED, f"{state.value}: kept (use --retry-failed to run it again)")
