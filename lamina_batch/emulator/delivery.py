"""The emulator's outgoing webhooks: one signed POST per finished run, retried on the configured delays, each
attempt counted in the stats (Lamina's delivery as lamina-api.md describes it)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from lamina_batch.emulator.config import EmulatorConfig
from lamina_batch.emulator.signing import KeyRing
from lamina_batch.emulator.stats import EmulatorStats, WebhookAttempt

__all__ = ["WebhookSender"]


class WebhookSender:
    """Delivers a run's terminal body to its webhook URL; lives on the emulator's loop."""

    def __init__(
        self,
        config: EmulatorConfig,
        keyring: KeyRing,
        stats: EmulatorStats,
        fault_rng: random.Random,
    ) -> None:
        self._config = config
        self._keyring = keyring
        self._stats = stats
        self._fault_rng = fault_rng
        self._tasks: set[asyncio.Task[None]] = set()
        self._http_ready: asyncio.Future[httpx.AsyncClient] | None = None

    def send(
        self,
        loop: asyncio.AbstractEventLoop,
        run_id: str,
        url: str,
        finished_at: float,
        body: Callable[[float], dict[str, Any]],
    ) -> None:
        """Schedule the delivery of `run_id`'s terminal body (`body(now)`) to `url`; the stats tell how it went."""
        task = loop.create_task(self._deliver(run_id, url, finished_at, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http_ready is not None:
            client = await self._http_ready
            await client.aclose()

    async def _client(self) -> httpx.AsyncClient:
        # building an httpx client loads CA certificates (~0.1 s): do it off the loop, once
        if self._http_ready is None:
            loop = asyncio.get_running_loop()
            self._http_ready = loop.run_in_executor(None, lambda: httpx.AsyncClient(timeout=10.0))
        return await asyncio.shield(self._http_ready)

    async def _deliver(
        self, run_id: str, url: str, finished_at: float, body: Callable[[float], dict[str, Any]]
    ) -> None:
        try:
            await self._attempts(run_id, url, finished_at, body)
        finally:
            self._stats.webhooks_settled += 1

    async def _attempts(
        self, run_id: str, url: str, finished_at: float, body: Callable[[float], dict[str, Any]]
    ) -> None:
        if self._config.p_webhook_drop and self._fault_rng.random() < self._config.p_webhook_drop:
            self._stats.webhooks_dropped += 1
            return
        http = await self._client()
        now = max(time.time(), finished_at)
        raw = json.dumps({"data": body(now)}, separators=(",", ":")).encode()
        delays = self._config.webhook_retry_delays
        for attempt in range(len(delays) + 1):
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "X-Lamina-Webhook-Signature": self._keyring.active.sign(ts, raw),
                "X-Lamina-Webhook-Timestamp": str(ts),
                "X-Lamina-Webhook-Request-Id": run_id,
                "X-Lamina-Webhook-User-Id": self._config.webhook_user_id,
            }
            try:
                resp = await http.post(url, content=raw, headers=headers)
                status = resp.status_code
            except httpx.HTTPError:
                status = 0
            ok = 200 <= status < 300
            self._stats._webhook(WebhookAttempt(time.time(), run_id, url, attempt + 1, status, ok))
            if ok or attempt == len(delays):
                return
            await asyncio.sleep(delays[attempt])
