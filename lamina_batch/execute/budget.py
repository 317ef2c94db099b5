"""The credits budget of one invocation (`max_credits`): the credits committed by the starts it made (expected
estimate per run, the actual cost where the API reports one) and the rule that no start may take them past it.
"""

from __future__ import annotations

from collections.abc import Mapping

from lamina_batch.credits import format_credits
from lamina_batch.events import StopReason

from .context import Guards

__all__ = ["CreditBudget"]


class CreditBudget:
    """Credits committed in this invocation. `price(app)` is the expected cost of one run of an app (None when
    unknown); with a limit, `fits(app)` refuses a start that would take the committed credits past it and stops
    new starts (MAX_CREDITS: in-flight runs finish, exit 3, resumable)."""

    def __init__(self, limit: float | None, prices: Mapping[str, float], guards: Guards) -> None:
        self.limit = limit
        self._prices = dict(prices)
        self._guards = guards
        self.committed = 0.0

    def price(self, app_id: str) -> float | None:
        return self._prices.get(app_id)

    def fits(self, app_id: str) -> bool:
        """Whether one more run of `app_id` stays within the limit; False stops new starts."""
        if self.limit is None:
            return True
        cost = self._prices.get(app_id, 0.0)
        if self.committed + cost <= self.limit + 1e-9:
            return True
        self._guards.soft_stop(
            StopReason.MAX_CREDITS,
            f"max_credits reached: {format_credits(self.committed)} of {format_credits(self.limit)} credits committed, "
            f"the next run of {app_id} needs {format_credits(cost)}",
        )
        return False

    def commit(self, cost: float) -> None:
        self.committed += cost
