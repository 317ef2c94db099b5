"""Credits: each app's cost estimate (one request per app, cached beside the manifest for an hour), the bill of what
an invocation would start (runs x expected per step, against the balance), and why costs are unknown when they are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import write_text_atomic
from .errors import ApiError

if TYPE_CHECKING:
    from .client import LaminaClient
    from .models import Pipeline

__all__ = [
    "CACHE_TTL",
    "Bill",
    "Estimate",
    "Estimates",
    "StepBill",
    "bill_of",
    "cache_path",
    "estimate_inputs",
    "fetch_estimates",
    "format_credits",
    "load_cached",
    "origin_of",
    "unknown",
]

CACHE_TTL = 3600.0  # seconds an estimate is reused by `plan` (`--refresh-estimates` asks again)
_CACHE_VERSION = 1

NO_KEY = "no API key"
OFFLINE = "--offline"
NO_ESTIMATE_API = "the executions API has no estimate"


@dataclass(frozen=True)
class Estimate:
    """One app's estimate: credits per run (expected, and the min-max range), the balance when it was asked (None
    where the API does not say) and whether one run is affordable, and when it was fetched (epoch seconds)."""

    expected: float
    min: float
    max: float
    balance: float | None
    affordable: bool | None
    fetched_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "min": self.min,
            "max": self.max,
            "balance": self.balance,
            "affordable": self.affordable,
            "fetched_at": self.fetched_at,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Estimate:
        """An estimate from the cache; ValueError/TypeError/KeyError when the entry is not one."""

        def num(name: str) -> float:
            value = doc[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(name)
            return float(value)

        balance = doc.get("balance")
        affordable = doc.get("affordable")
        return cls(
            expected=num("expected"),
            min=num("min"),
            max=num("max"),
            balance=None if balance is None else num("balance"),
            affordable=affordable if isinstance(affordable, bool) else None,
            fetched_at=num("fetched_at"),
        )


@dataclass(frozen=True)
class Estimates:
    """What is known of the apps' costs: an estimate per app; for the others why not (per app); `reason` when
    nothing could be asked at all (no API key, `--offline`, the executions API). `requests`: estimate requests
    this invocation sent (the rest came from the cache)."""

    by_app: Mapping[str, Estimate] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    reason: str | None = None
    requests: int = 0

    @property
    def balance(self) -> float | None:
        """The balance of the newest estimate that states one."""
        stated = [e for e in self.by_app.values() if e.balance is not None]
        return max(stated, key=lambda e: e.fetched_at).balance if stated else None

    def why_unknown(self, apps: Iterable[str]) -> str | None:
        """Why the cost of runs of `apps` is not known, or None when every one has an estimate."""
        if self.reason is not None:
            return self.reason
        for app in apps:
            if app not in self.by_app:
                return self.failed.get(app, "no estimate")
        return None


def unknown(reason: str) -> Estimates:
    """Estimates that are all unknown, for `reason`."""
    return Estimates(reason=reason)


@dataclass(frozen=True)
class StepBill:
    """One step's share of the bill: the runs it would start and what one run of its app costs (None: unknown)."""

    step_id: str
    app_id: str
    runs: int
    estimate: Estimate | None

    @property
    def expected(self) -> float | None:
        return None if self.estimate is None else self.runs * self.estimate.expected

    def to_json(self) -> dict[str, Any]:
        e = self.estimate
        return {
            "step": self.step_id,
            "app": self.app_id,
            "runs": self.runs,
            "per_run": None if e is None else {"expected": e.expected, "min": e.min, "max": e.max},
            "expected": self.expected,
            "min": None if e is None else self.runs * e.min,
            "max": None if e is None else self.runs * e.max,
        }


@dataclass(frozen=True)
class Bill:
    """What the runs an invocation would start cost: per step, in total, against the balance. `unknown` says why
    the total is not known (then `expected` is None)."""

    steps: tuple[StepBill, ...]
    balance: float | None
    unknown: str | None = None

    @property
    def runs(self) -> int:
        return sum(s.runs for s in self.steps)

    @property
    def expected(self) -> float | None:
        if self.unknown is not None:
            return None
        return sum(s.runs * s.estimate.expected for s in self.steps if s.estimate is not None)

    @property
    def range(self) -> tuple[float, float] | None:
        if self.unknown is not None:
            return None
        lo = sum(s.runs * s.estimate.min for s in self.steps if s.estimate is not None)
        hi = sum(s.runs * s.estimate.max for s in self.steps if s.estimate is not None)
        return lo, hi

    @property
    def affordable(self) -> bool | None:
        """Whether the expected total fits the balance (None when either is unknown)."""
        total = self.expected
        if total is None or self.balance is None:
            return None
        return total <= self.balance

    def to_json(self) -> dict[str, Any]:
        span = self.range
        return {
            "known": self.unknown is None,
            "unknown_reason": self.unknown,
            "steps": [s.to_json() for s in self.steps],
            "runs": self.runs,
            "expected": self.expected,
            "min": None if span is None else span[0],
            "max": None if span is None else span[1],
            "balance": self.balance,
            "affordable": self.affordable,
        }

    def render_lines(self) -> list[str]:
        """The bill as `plan` prints it."""
        if self.unknown is not None and all(s.estimate is None for s in self.steps):
            return [f"credits: unknown ({self.unknown})"]
        lines = ["credits:"]
        for s in self.steps:
            e = s.estimate
            if e is None:
                lines.append(f"  {s.step_id}: {s.runs} runs x unknown")
                continue
            n = format_credits
            each = "" if e.min == e.max or not s.runs else f" ({n(s.runs * e.min)}-{n(s.runs * e.max)})"
            lines.append(f"  {s.step_id}: {s.runs} runs x {n(e.expected)} = {n(s.runs * e.expected)}{each}")
        total, span = self.expected, self.range
        if total is None or span is None:
            lines.append(f"  total: unknown ({self.unknown})")
        else:
            rng = "" if span[0] == span[1] else f" (range {format_credits(span[0])}-{format_credits(span[1])})"
            lines.append(f"  total: {format_credits(total)} expected{rng}")
        if self.balance is None:
            lines.append("  balance: not stated by the API")
        else:
            verdict = {True: "affordable", False: "NOT affordable", None: "affordability unknown"}[self.affordable]
            lines.append(f"  balance: {format_credits(self.balance)} ({verdict})")
        return lines


def bill_of(pipeline: Pipeline, starts: Mapping[str, int], estimates: Estimates) -> Bill:
    """The bill of starting `starts[step_id]` runs of each step (`planner.runs_to_start`), priced by `estimates`."""
    steps = tuple(StepBill(s.id, s.app, starts.get(s.id, 0), estimates.by_app.get(s.app)) for s in pipeline.steps)
    used = [s.app_id for s in steps if s.runs]
    return Bill(steps, estimates.balance, estimates.why_unknown(used))


def format_credits(value: float) -> str:
    """A credits figure as people write it: 24, 2.5 (every message, table and report cell)."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- asking the API, and the cache


def estimate_inputs(pipeline: Pipeline, shard: tuple[int, int] | None = None) -> dict[str, dict[str, Any] | None]:
    """The inputs each app's estimate is asked with (DESIGN §8: `{"inputs": ...}`): those of the first item's run
    of the first step using the app, when that step has no upstream (its inputs are all known before the batch);
    else None (no body: an app-wide estimate, as Lamina's SDK asks)."""
    from .matrix import expand_runs

    apps: dict[str, dict[str, Any] | None] = dict.fromkeys((s.app for s in pipeline.steps), None)
    first = next(iter(expand_runs(pipeline, shard=shard)), None)
    if first is None:
        return apps
    seen: set[str] = set()
    for run in first.runs:
        if run.app_id in seen:
            continue
        seen.add(run.app_id)
        if not run.needs:
            apps[run.app_id] = dict(run.inputs)
    return apps


def cache_path(manifest: Path) -> Path:
    """The estimates' side file beside a manifest: `plan` never creates or locks a manifest (DESIGN §8)."""
    return manifest.with_name(manifest.name + ".estimates.json")


def origin_of(base_url: str, *, emulator: bool) -> str:
    """The server an estimate belongs to (an in-process emulator's port changes every time: `emulator`)."""
    return "emulator" if emulator else base_url.rstrip("/")


def load_cached(path: Path, origin: str, *, now: float, ttl: float = CACHE_TTL) -> dict[str, Estimate]:
    """The cached estimates of `origin` younger than `ttl`; an unreadable or foreign file is no cache."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != _CACHE_VERSION or doc.get("origin") != origin:
        return {}
    apps = doc.get("apps")
    out: dict[str, Estimate] = {}
    if not isinstance(apps, dict):
        return out
    for app_id, entry in apps.items():
        try:
            estimate = Estimate.from_json(entry)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if 0 <= now - estimate.fetched_at < ttl:
            out[str(app_id)] = estimate
    return out


def save_cache(path: Path, origin: str, estimates: Mapping[str, Estimate]) -> None:
    """Write the estimates for `origin` (atomically); a folder we cannot write to just means no cache."""
    doc = {"version": _CACHE_VERSION, "origin": origin, "apps": {a: e.to_json() for a, e in estimates.items()}}
    try:
        write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    except OSError:
        return


async def fetch_estimates(
    client: LaminaClient,
    inputs: Mapping[str, Mapping[str, Any] | None],
    *,
    cache: Path | None = None,
    origin: str = "",
    refresh: bool = False,
    now: Callable[[], float] = time.time,
) -> Estimates:
    """One estimate per app in `inputs` (app -> the inputs to ask with), taken from the cache when it is younger
    than an hour (unless `refresh`), else asked (one request per app); what was asked is written to the cache.
    An app whose estimate fails is listed in `failed` with why; nothing raises for an estimate."""
    if not client.supports_estimate:
        return unknown(NO_ESTIMATE_API)
    cached = {} if cache is None or refresh else load_cached(cache, origin, now=now())
    by_app: dict[str, Estimate] = {}
    failed: dict[str, str] = {}
    asked = 0
    for app_id, app_inputs in inputs.items():
        if app_id in cached:
            by_app[app_id] = cached[app_id]
            continue
        asked += 1
        try:
            figures = await client.estimate_cost(app_id, app_inputs)
        except ApiError as e:
            failed[app_id] = f"estimate for {app_id} failed: {e.message}"
            continue
        if figures is None:
            return unknown(NO_ESTIMATE_API)
        by_app[app_id] = Estimate(
            expected=figures["expected"],
            min=figures["min"],
            max=figures["max"],
            balance=figures["balance"],
            affordable=figures["affordable"],
            fetched_at=now(),
        )
    if cache is not None and asked and len(by_app) > len(cached):
        merged = {**load_cached(cache, origin, now=now()), **by_app}
        save_cache(cache, origin, merged)
    return Estimates(by_app, failed, None, asked)
