"""The app catalogue on the wire: app list/detail JSON, start-input validation (an input names a parameter by
its key, else its name, else its id, as Lamina resolves them), cost estimates, generated text outputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from lamina_batch.emulator.config import AppDef, ParamDef

FAIL_MARKER = "[[fail]]"


def canonical_inputs(inputs: Mapping[str, Any]) -> str:
    """The one JSON spelling of a set of inputs, used to count duplicate starts."""
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def app_summary(app: AppDef) -> dict[str, Any]:
    return {
        "appId": app.app_id,
        "name": app.name,
        "description": app.description,
        "isPublic": app.is_public,
        "parameterCount": len(app.parameters),
        "credits": _number(app.credits),  # an extra field a list item may carry: the app's credits per run
    }


def app_detail(app: AppDef) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    for p in app.parameters:
        d: dict[str, Any] = {"id": p.param_id(app.app_id)}
        if p.key is not None:
            d["key"] = p.key
        d.update(name=p.name, type=p.type, required=p.required)
        if p.options:
            d["options"] = list(p.options)
        if p.accept:
            d["accept"] = list(p.accept)
        if p.default is not None:
            d["default"] = p.default
        params.append(d)
    return {
        "appId": app.app_id,
        "name": app.name,
        "description": app.description,
        "isPublic": app.is_public,
        "parameters": params,
        "outputs": [{"index": o.index, "label": o.label, "type": o.type} for o in app.outputs],
    }


def _is_http_url(v: str) -> bool:
    try:
        parts = urlsplit(v)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


@lru_cache(maxsize=256)
def _lookup(app: AppDef) -> tuple[dict[str, ParamDef], dict[str, ParamDef], dict[str, ParamDef]]:
    by_key = {p.key: p for p in reversed(app.parameters) if p.key is not None}
    by_name = {p.name: p for p in reversed(app.parameters)}
    by_id = {p.param_id(app.app_id): p for p in reversed(app.parameters)}
    return by_key, by_name, by_id


def resolve_parameter(app: AppDef, spelling: str) -> ParamDef | None:
    """The parameter an input keyed `spelling` sets: by key, else name, else id (case-sensitive)."""
    by_key, by_name, by_id = _lookup(app)
    return by_key.get(spelling) or by_name.get(spelling) or by_id.get(spelling)


def _known(app: AppDef) -> str:
    return ", ".join(f"{p.key} ({p.name})" if p.key else p.name for p in app.parameters)


def validate_start_body(
    app: AppDef, body: Any, *, inputs_required: bool = True
) -> tuple[dict[str, Any], list[str] | None, list[dict[str, str]]]:
    """Check a start/estimate body; returns (inputs keyed by parameter name, output labels or None, problems).

    With `inputs_required=False` (an estimate) an empty body or one without `inputs` is an app-wide estimate."""
    problems: list[dict[str, str]] = []
    if not inputs_required and (body is None or body == {}):
        return {}, None, []
    if not isinstance(body, dict):
        return {}, None, [{"field": "body", "message": 'must be a JSON object {"inputs": {...}}'}]
    for k in body:
        if k not in ("inputs", "outputs"):
            problems.append({"field": str(k), "message": "unknown top-level field"})
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        problems.append({"field": "inputs", "message": "must be an object of parameter key, name or id -> value"})
        return {}, None, problems
    resolved = _resolve_inputs(app, inputs, problems)
    for p in app.parameters:
        if p.default is None and p.name not in resolved:
            problems.append({"field": p.name, "message": "is required (no default)"})
    labels: list[str] | None = None
    if "outputs" in body:
        raw = body["outputs"]
        known_labels = [o.label for o in app.outputs]
        if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
            problems.append({"field": "outputs", "message": "must be a non-empty list of output labels"})
        else:
            for x in raw:
                if x not in known_labels:
                    problems.append(
                        {"field": "outputs", "message": f"unknown output {x!r} (known: {', '.join(known_labels)})"}
                    )
            labels = [lb for lb in known_labels if lb in raw]
    return resolved, labels, problems


def _resolve_inputs(app: AppDef, inputs: Mapping[str, Any], problems: list[dict[str, str]]) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # parameter name -> the input that set it
    for name, value in inputs.items():
        p = resolve_parameter(app, name)
        if p is None:
            problems.append({"field": name, "message": f"unknown parameter (known: {_known(app)})"})
            continue
        if p.name in spelled:
            problems.append({"field": name, "message": f"sets the same parameter ({p.name}) as {spelled[p.name]!r}"})
            continue
        spelled[p.name] = name
        if not isinstance(value, str):
            problems.append({"field": name, "message": "must be a string"})
        elif p.type == "options" and value not in p.options:
            problems.append({"field": name, "message": f"must be one of: {', '.join(p.options)}"})
        elif p.type == "url" and value and not _is_http_url(value):
            problems.append({"field": name, "message": "must be a public http(s) URL"})
        elif value == "" and p.default is None:
            problems.append({"field": name, "message": "is required (no default) and may not be empty"})
        resolved[p.name] = value
    return resolved


def _number(x: float) -> float | int:
    """Whole numbers as JSON integers (4, not 4.0), as the API writes credits."""
    return int(x) if float(x).is_integer() else x


def estimate_body(app: AppDef, balance: float | None) -> dict[str, Any]:
    """The estimate reply's data (the shape of Lamina's SDK `CostEstimate`): per-run credits with their range,
    split over the app's nodes (one per output), and the balance (null when the emulator's is unlimited)."""
    lo, hi = app.credits_min_max
    nodes = app.outputs
    n = _number
    share = round(app.credits / len(nodes), 4) if nodes else app.credits
    breakdown = [
        {
            "nodeId": o.output_id(app.app_id),
            "nodeType": "aiDesignerNode" if o.type == "image" else "textGenerationNode",
            # the last node takes the rounding remainder, so the breakdown adds up to `expected`
            "credits": n(share if i < len(nodes) - 1 else round(app.credits - share * (len(nodes) - 1), 4)),
        }
        for i, o in enumerate(nodes)
    ]
    return {
        "appId": app.app_id,
        "name": app.name,
        "estimatedCredits": {"expected": n(app.credits), "min": n(lo), "max": n(hi)},
        "breakdown": breakdown,
        "currentBalance": None if balance is None else n(balance),
        "affordable": balance is None or balance >= app.credits,
    }


def has_fail_marker(inputs: Mapping[str, Any]) -> bool:
    return any(isinstance(v, str) and FAIL_MARKER in v for v in inputs.values())


_OPENERS = (
    "Meet {name}",
    "Say hello to {name}",
    "Introducing {name}",
    "This is {name}",
)
_TONES = {
    "friendly": "made for everyday moments and easy to love",
    "premium": "crafted with care from considered materials for those who notice the details",
    "playful": "ready to brighten your day with a little fun",
}


def generated_text(app: AppDef, inputs: Mapping[str, Any], label: str) -> str:
    """A deterministic stand-in for generated copy, built from the inputs."""
    merged = {p.name: p.default for p in app.parameters if p.default is not None}
    merged.update({k: v for k, v in inputs.items() if isinstance(v, str)})
    name = merged.get("Product Name") or merged.get("Prompt") or next(iter(merged.values()), "it")
    digest = hashlib.sha256(f"{app.app_id}/{label}/{canonical_inputs(inputs)}".encode()).digest()
    opener = _OPENERS[digest[0] % len(_OPENERS)].format(name=name)
    tone = _TONES.get(str(merged.get("Tone", "")), "designed to do one thing well")
    return f"{opener}: {tone}."


def list_apps(apps: Iterable[AppDef], query: Mapping[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """`GET /v1/apps`: the app summaries matching `search`, at most `limit`; or the problem with the query."""
    found = list(apps)
    q = query.get("search", "").strip().lower()
    if q:
        found = [a for a in found if q in f"{a.app_id} {a.name} {a.description or ''}".lower()]
    if "limit" in query:
        try:
            limit = int(query["limit"])
        except ValueError:
            limit = 0
        if limit < 1:
            return [], "limit must be a positive integer"
        found = found[:limit]
    return [app_summary(a) for a in found], None
