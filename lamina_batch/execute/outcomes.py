"""Values the parts of the executor hand each other: how a run ended for this invocation (`Outcome`), a start to
follow (`Started`), a start to try again (`TryAgain`) and a run past its timeout (`TimedOut`)."""

from __future__ import annotations

from dataclasses import dataclass

from lamina_batch.models import RemoteRun, RunOutput, RunState

__all__ = [
    "IN_FLIGHT_RUNNING",
    "IN_FLIGHT_SUBMITTING",
    "NOT_STARTED",
    "Outcome",
    "StartResult",
    "Started",
    "TimedOut",
    "TryAgain",
]


@dataclass(frozen=True)
class Outcome:
    """How one run ended for this invocation. `state` None: not finished here (`in_flight`: left running or
    submitting, else never started)."""

    state: RunState | None
    outputs: tuple[RunOutput, ...] = ()
    in_flight: RunState | None = None


NOT_STARTED = Outcome(None)
IN_FLIGHT_SUBMITTING = Outcome(None, in_flight=RunState.SUBMITTING)
IN_FLIGHT_RUNNING = Outcome(None, in_flight=RunState.RUNNING)


@dataclass(frozen=True)
class Started:
    """A remote run of ours to follow: its id, when its start intent was committed (epoch s), its first reply."""

    remote_id: str
    submitted_at: float
    first: RemoteRun | None


@dataclass(frozen=True)
class TryAgain:
    """Nothing was created (the request was never sent, or was refused before creating anything): start again
    after `delay` seconds."""

    delay: float


# What starting a run comes to: a run to follow, or how it ended without one.
StartResult = Started | Outcome


@dataclass(frozen=True)
class TimedOut:
    """The run passed its timeout; `remote` is the cancel reply, if a cancel was sent and answered."""

    remote: RemoteRun | None = None
