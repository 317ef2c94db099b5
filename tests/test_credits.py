"""Credits: estimates per app (one request each, cached beside the manifest, refreshed), the bill `plan` prints, the
balance check and budget of `run`, and the estimate's failure paths; the CLI ones as real processes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import assert_exactly_once, cli_env, manifest_path, manifest_states, run_cli, write_pipeline

from lamina_batch.client import LaminaClient
from lamina_batch.credits import (
    CACHE_TTL,
    NO_ESTIMATE_API,
    Estimate,
    Estimates,
    bill_of,
    cache_path,
    fetch_estimates,
    load_cached,
)
from lamina_batch.emulator import Emulator
from lamina_batch.models import Rate
from lamina_batch.spec import load_pipeline

HERO, BANNER = "app_7Hk2", "app_9Qx1"  # the demo catalogue: 4 (3-6) and 6 credits a run


def _estimate(expected: float, lo: float, hi: float, balance: float | None = 100.0) -> Estimate:
    return Estimate(expected, lo, hi, balance, None, 1000.0)


def _plan(pipeline: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", "plan", str(pipeline), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _estimates_asked(emu: Emulator) -> int:
    return sum(1 for r in emu.stats.requests if r.path.endswith("/estimate"))


# --------------------------------------------------------------------------- the bill


def test_bill_multiplies_runs_by_expected_with_range_total_and_balance(tmp_path: Path) -> None:
    """A step's bill is its runs x expected credits (and the min-max range); the total is held to the balance."""
    pipeline = load_pipeline(write_pipeline(tmp_path, 3))
    estimates = Estimates({HERO: _estimate(4, 3, 6, 40), BANNER: _estimate(6, 6, 6, 40)})
    bill = bill_of(pipeline, {"hero": 3, "banner": 2}, estimates)
    assert bill.expected == 24
    assert bill.range == (21, 30)
    assert bill.balance == 40
    assert bill.affordable
    text = "\n".join(bill.render_lines())
    assert "hero: 3 runs x 4 = 12 (9-18)" in text
    assert "banner: 2 runs x 6 = 12" in text
    assert "total: 24 expected (range 21-30)" in text
    assert "balance: 40 (affordable)" in text
    poorer = bill_of(
        pipeline, {"hero": 3, "banner": 2}, Estimates({HERO: _estimate(4, 3, 6, 20), BANNER: _estimate(6, 6, 6, 20)})
    )
    assert poorer.affordable is False
    assert "NOT affordable" in "\n".join(poorer.render_lines())


def test_bill_without_an_estimate_for_a_starting_step_is_unknown_and_says_why(tmp_path: Path) -> None:
    """One starting step without an estimate makes the total unknown, with the failure as the reason."""
    pipeline = load_pipeline(write_pipeline(tmp_path, 3))
    estimates = Estimates({HERO: _estimate(4, 3, 6)}, {BANNER: "estimate for app_9Qx1 failed: boom"})
    bill = bill_of(pipeline, {"hero": 3, "banner": 3}, estimates)
    assert bill.expected is None
    assert bill.affordable is None
    assert "total: unknown (estimate for app_9Qx1 failed: boom)" in "\n".join(bill.render_lines())
    # a step that starts nothing does not need a price
    assert bill_of(pipeline, {"hero": 3}, estimates).expected == 12


# --------------------------------------------------------------------------- estimates over HTTP, and the cache


def test_estimates_ask_once_per_app_then_come_from_the_cache_until_refreshed(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """One estimate request per app; a second call within the hour reads the side file; `refresh` asks again."""
    emu = make_emulator(credits=50)
    cache = cache_path(tmp_path / "p.lamina.sqlite")
    inputs: dict[str, dict[str, Any] | None] = {HERO: {"Prompt": "a mug"}, BANNER: None}

    async def fetch(refresh: bool) -> Estimates:
        async with LaminaClient(emu.base_url, emu.key) as client:
            return await fetch_estimates(client, inputs, cache=cache, origin="o", refresh=refresh)

    first = asyncio.run(fetch(False))
    assert first.requests == 2
    assert _estimates_asked(emu) == 2
    assert (first.by_app[HERO].expected, first.by_app[HERO].min, first.by_app[HERO].max) == (4, 3, 6)
    assert first.by_app[BANNER].expected == 6
    assert first.balance == 50
    again = asyncio.run(fetch(False))
    assert again.requests == 0
    assert _estimates_asked(emu) == 2
    assert again.by_app == first.by_app
    fresh = asyncio.run(fetch(True))
    assert fresh.requests == 2
    assert _estimates_asked(emu) == 4


def test_cached_estimates_expire_after_an_hour_and_belong_to_their_origin(tmp_path: Path) -> None:
    """The side file's estimates are reused for an hour, and only for the server they came from."""
    cache = tmp_path / "m.estimates.json"
    entry = _estimate(4, 3, 6).to_json()
    cache.write_text(json.dumps({"version": 1, "origin": "https://a", "apps": {HERO: entry}}))
    assert HERO in load_cached(cache, "https://a", now=1000.0 + CACHE_TTL - 1)
    assert load_cached(cache, "https://a", now=1000.0 + CACHE_TTL + 1) == {}
    assert load_cached(cache, "https://b", now=1001.0) == {}
    cache.write_text("{not json")
    assert load_cached(cache, "https://a", now=1001.0) == {}


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(503, json={"error": "down", "code": "RESOURCE_UNAVAILABLE", "retryable": True}),
        httpx.Response(200, json={"data": {"estimatedCredits": "soon"}}),
        httpx.Response(200, content=b"<html>gateway</html>"),
    ],
    ids=["5xx", "malformed", "not-json"],
)
def test_an_estimate_that_fails_leaves_that_app_unknown_with_why(reply: httpx.Response) -> None:
    """A 5xx (after the client's retries), a malformed or non-JSON estimate: that app's credits read unknown."""
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return reply

    async def no_sleep(_: float) -> None:
        return None

    async def go() -> Estimates:
        transport = httpx.MockTransport(handle)
        async with LaminaClient(
            "https://lamina.test", "lma_test", "runs", Rate(1000, 1), transport, sleep=no_sleep
        ) as c:
            return await fetch_estimates(c, {HERO: None})

    result = asyncio.run(go())
    assert HERO not in result.by_app
    why = result.why_unknown([HERO])
    assert why is not None
    assert why.startswith(f"estimate for {HERO} failed")
    assert sent
    assert all(p == f"/v1/apps/{HERO}/estimate" for p in sent)


def test_executions_dialect_has_no_estimate_and_sends_nothing() -> None:
    """On the executions API the credits are unknown for that reason, without a request."""
    sent: list[httpx.Request] = []

    async def go() -> Estimates:
        transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500))
        async with LaminaClient("https://lamina.test", "lma_test", "executions", transport=transport) as c:
            return await fetch_estimates(c, {HERO: None})

    result = asyncio.run(go())
    assert result.why_unknown([HERO]) == NO_ESTIMATE_API
    assert not sent


# --------------------------------------------------------------------------- the CLI: plan


def test_plan_prints_the_bill_per_step_and_carries_it_in_json(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """`plan` shows runs x expected (range) per step, the total and the balance; `--json` the same figures; a
    second plan reuses the cached estimates, `--refresh-estimates` asks again."""
    emu = make_emulator(credits=100)
    pipeline = write_pipeline(tmp_path, 3)
    env = cli_env(emu)
    res = _plan(pipeline, env)
    assert res.returncode == 0, res.stderr
    assert "hero: 3 runs x 4 = 12 (9-18)" in res.stdout
    assert "banner: 3 runs x 6 = 18" in res.stdout
    assert "total: 30 expected (range 27-36)" in res.stdout
    assert "balance: 100 (affordable)" in res.stdout
    assert _estimates_asked(emu) == 2
    doc = json.loads(_plan(pipeline, env, "--json").stdout)["credits"]
    assert _estimates_asked(emu) == 2  # cached beside the manifest
    assert (doc["expected"], doc["min"], doc["max"], doc["balance"], doc["affordable"]) == (30, 27, 36, 100, True)
    assert [(s["step"], s["runs"], s["expected"]) for s in doc["steps"]] == [("hero", 3, 12), ("banner", 3, 18)]
    capped = json.loads(_plan(pipeline, env, "--json", "--max-starts", "2").stdout)
    # the first two starts in plan order: row 1's hero and its banner
    assert capped["starts"] == {"hero": 1, "banner": 1}
    assert capped["credits"]["expected"] == 10
    _plan(pipeline, env, "--refresh-estimates")
    assert _estimates_asked(emu) == 4
    assert not manifest_path(pipeline).exists()  # plan never creates the manifest
    assert emu.stats.starts == 0


def test_plan_without_a_key_or_offline_sends_nothing_and_says_unknown(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """Without an API key, or with --offline, `plan` sends no request and prints "credits: unknown (why)"."""
    emu = make_emulator(credits=100)
    pipeline = write_pipeline(tmp_path, 2)
    env = cli_env(emu)
    offline = _plan(pipeline, env, "--offline")
    assert offline.returncode == 0
    assert "credits: unknown (--offline)" in offline.stdout
    keyless = {k: v for k, v in env.items() if k != "LAMINA_API_KEY"}
    res = _plan(pipeline, keyless)
    assert res.returncode == 0, res.stderr
    assert "credits: unknown (no API key)" in res.stdout
    assert emu.stats.requests == []


# --------------------------------------------------------------------------- the CLI: run


def test_run_refuses_an_unaffordable_batch_before_any_start(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """Expected cost over the balance: exit 2 naming both figures and the fixes, and not one start."""
    emu = make_emulator(credits=20)
    pipeline = write_pipeline(tmp_path, 3)  # 3 x 4 + 3 x 6 = 30 expected
    res = run_cli(pipeline, cli_env(emu))
    assert res.returncode == 2, res.stderr
    assert "30 credits" in res.stderr
    assert "balance of 20" in res.stderr
    assert "top up" in res.stderr
    assert "--max-starts" in res.stderr
    assert "where" in res.stderr
    assert "--shard" in res.stderr
    assert "Traceback" not in res.stderr
    assert emu.stats.starts == 0
    # what fits the balance is allowed: the budget caps this invocation at 20
    capped = run_cli(pipeline, cli_env(emu), "--max-credits", "20")
    assert capped.returncode == 3, capped.stderr
    assert emu.credits_remaining is not None
    assert emu.credits_remaining >= 0


def test_budget_stops_part_way_and_the_resume_continues_within_a_new_budget(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """--max-credits never lets the starts' expected credits pass N: exit 3 part-way; each resume has its own
    budget; the manifest keeps the estimate every run was started under."""
    emu = make_emulator()
    pipeline = write_pipeline(tmp_path, 6, banner=False, concurrency=4)  # hero: 4 credits a run
    env = cli_env(emu)
    first = run_cli(pipeline, env, "--max-credits", "10")
    assert first.returncode == 3, first.stderr
    assert "max_credits" in first.stderr
    assert "--max-credits" in first.stderr
    assert emu.stats.starts == 2  # 8 committed; a third would make 12
    second = run_cli(pipeline, env, "--max-credits", "10")
    assert second.returncode == 3, second.stderr
    assert emu.stats.starts == 4
    last = run_cli(pipeline, env)
    assert last.returncode == 0, last.stderr
    assert_exactly_once(emu, 6)
    with sqlite3.connect(manifest_path(pipeline)) as db:
        rows = db.execute("SELECT credits_estimate, credits_earlier FROM runs").fetchall()
    assert rows == [(4.0, 0.0)] * 6
    status = subprocess.run(
        [sys.executable, "-m", "lamina_batch", "status", str(pipeline)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "credits: hero 24; total 24" in status.stdout


@pytest.mark.parametrize("bad", ["0", "-5", "lots", "nan"])
def test_max_credits_must_be_a_positive_number(
    bad: str, tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """--max-credits that is not a positive number: exit 2, one line naming the flag, nothing sent."""
    emu = make_emulator()
    pipeline = write_pipeline(tmp_path, 2)
    res = run_cli(pipeline, cli_env(emu), f"--max-credits={bad}")
    assert res.returncode == 2
    assert "--max-credits" in res.stderr
    assert "positive number" in res.stderr
    assert emu.stats.requests == []


def test_an_estimate_that_fails_refuses_under_a_budget_and_goes_on_without_one(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """Estimates failing: with max_credits `run` exits 2 before any start; without it says the cost is unknown
    and runs the batch."""
    emu = make_emulator()
    emu.fail_estimates("malformed")
    pipeline = write_pipeline(tmp_path, 2, banner=False)
    env = cli_env(emu)
    refused = run_cli(pipeline, env, "--max-credits", "100")
    assert refused.returncode == 2, refused.stderr
    assert "cost is unknown" in refused.stderr
    assert "max_credits" in refused.stderr
    assert emu.stats.starts == 0
    ran = run_cli(pipeline, env)
    assert ran.returncode == 0, ran.stderr
    assert "cost is unknown" in ran.stderr
    assert manifest_states(pipeline) == {"completed": 2}
