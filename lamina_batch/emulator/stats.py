"""What the emulator counts for tests and benchmarks: every request, every start by its inputs, webhook attempts,
credits spent, kills and OAuth events; written on the emulator's loop, read from any thread."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from lamina_batch.emulator.oauth import OAuthStats

__all__ = ["EmulatorStats", "RequestLogEntry", "WebhookAttempt"]


@dataclass(frozen=True)
class RequestLogEntry:
    """One request as the emulator saw it; `status` 0 and `dropped` when closed without a reply."""

    time: float
    method: str
    path: str
    status: int
    dropped: bool


@dataclass(frozen=True)
class WebhookAttempt:
    """One webhook POST attempt; `status` 0 on a connection error."""

    time: float
    run_id: str
    url: str
    attempt: int
    status: int
    ok: bool


class EmulatorStats:
    """Counters for tests and benchmarks; written on the emulator's loop, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RequestLogEntry] = []
        self._starts_by_inputs: Counter[tuple[str, str]] = Counter()
        self._webhook_log: list[WebhookAttempt] = []
        self.starts = 0
        self.peak_active = 0
        self.sent_429 = 0
        self.webhooks_sent = 0
        self.webhooks_delivered = 0
        self.webhooks_failed = 0
        self.webhooks_dropped = 0
        self.webhooks_settled = 0  # runs whose delivery is over: delivered, given up after retries, or dropped
        self.credits_spent = 0.0
        self.kills = 0  # SIGKILLs sent by `Emulator.kill_on_start`
        self.estimates_served = 0
        self.insufficient_credits = 0  # starts refused with 402: the balance could not cover them
        self.oauth = OAuthStats()

    @property
    def requests(self) -> list[RequestLogEntry]:
        with self._lock:
            return list(self._requests)

    def api_requests(self) -> list[RequestLogEntry]:
        """Requests to /v1 or /api paths (what Lamina's rate limit counts)."""
        return [r for r in self.requests if r.path.startswith(("/v1/", "/api/"))]

    @property
    def starts_by_inputs(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self._starts_by_inputs)

    def duplicate_starts(self) -> dict[tuple[str, str], int]:
        """(app_id, canonical inputs JSON) -> count, for inputs started more than once."""
        return {k: n for k, n in self.starts_by_inputs.items() if n > 1}

    @property
    def webhook_log(self) -> list[WebhookAttempt]:
        with self._lock:
            return list(self._webhook_log)

    def _log(self, entry: RequestLogEntry) -> None:
        with self._lock:
            self._requests.append(entry)

    def _start(self, app_id: str, inputs_json: str, credits: float) -> None:
        with self._lock:
            self.starts += 1
            self.credits_spent += credits
            self._starts_by_inputs[(app_id, inputs_json)] += 1

    def _webhook(self, attempt: WebhookAttempt) -> None:
        with self._lock:
            self._webhook_log.append(attempt)
            self.webhooks_sent += 1
            if attempt.ok:
                self.webhooks_delivered += 1
            else:
                self.webhooks_failed += 1
