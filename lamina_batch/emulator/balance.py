"""The emulator's credit balance: what each start takes, top-ups, and the estimate endpoint's reply (with the
test-only faults that make it fail)."""

from __future__ import annotations

from typing import Any

from lamina_batch.emulator.catalogue import estimate_body
from lamina_batch.emulator.config import AppDef

__all__ = ["ESTIMATE_FAULTS", "Balance"]

ESTIMATE_FAULTS = ("500", "malformed")


class Balance:
    """`remaining` credits (None: unlimited). Single-threaded: only the emulator's loop touches it."""

    def __init__(self, credits: float | None) -> None:
        self.remaining = credits
        self.estimate_fault: str | None = None  # test-only: one of ESTIMATE_FAULTS, or None

    def top_up(self, credits: float) -> float:
        """Add to a finite balance (as a user buying credits would); returns the new balance."""
        if not credits > 0:
            raise ValueError(f"a top-up must be a positive number of credits, got {credits!r}")
        if self.remaining is None:
            raise ValueError("this emulator's balance is unlimited (credits: null): there is nothing to top up")
        self.remaining += credits
        return self.remaining

    def charge(self, app: AppDef) -> str | None:
        """Take a start's credits; the refusal message instead when the balance cannot cover it."""
        if self.remaining is None:
            return None
        if self.remaining < app.credits:
            return f"Insufficient credits: this run needs {app.credits:g}, {self.remaining:g} left"
        self.remaining -= app.credits
        return None

    def estimate(self, app: AppDef) -> dict[str, Any] | None:
        """The estimate reply's `data` (malformed under that fault); None under the "500" fault."""
        if self.estimate_fault == "500":
            return None
        if self.estimate_fault == "malformed":
            return {"appId": app.app_id, "estimatedCredits": "soon"}
        return estimate_body(app, self.remaining)
