"""The app catalogue on the wire: app list/detail JSON, start-input validation, generated text outputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from lamina_batch.emulator.config import AppDef

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
    }


def app_detail(app: AppDef) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    for p in app.parameters:
        d: dict[str, Any] = {
            "id": p.param_id(app.app_id),
            "key": p.key,
            "name": p.name,
            "type": p.type,
            "required": p.required,
        }
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


def validate_start_body(app: AppDef, body: Any) -> tuple[dict[str, Any], list[str] | None, list[dict[str, str]]]:
    """Check a start/estimate body; returns (inputs, output labels or None, problems)."""
    problems: list[dict[str, str]] = []
    if not isinstance(body, dict):
        return {}, None, [{"field": "body", "message": 'must be a JSON object {"inputs": {...}}'}]
    for k in body:
        if k not in ("inputs", "outputs"):
            problems.append({"field": str(k), "message": "unknown top-level field"})
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        problems.append({"field": "inputs", "message": "must be an object of parameter name -> value"})
        return {}, None, problems
    by_name = {p.name: p for p in app.parameters}
    for name, value in inputs.items():
        p = by_name.get(name)
        if p is None:
            known = ", ".join(sorted(by_name))
            problems.append({"field": name, "message": f"unknown parameter (known: {known})"})
            continue
        if not isinstance(value, str):
            problems.append({"field": name, "message": "must be a string"})
        elif p.type == "options" and value not in p.options:
            problems.append({"field": name, "message": f"must be one of: {', '.join(p.options)}"})
        elif p.type == "url" and value and not _is_http_url(value):
            problems.append({"field": name, "message": "must be a public http(s) URL"})
        elif value == "" and p.default is None:
            problems.append({"field": name, "message": "is required (no default) and may not be empty"})
    for p in app.parameters:
        if p.default is None and p.name not in inputs:
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
    return dict(inputs), labels, problems


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
