"""Emulator configuration: `EmulatorConfig`, `Faults`, the app definitions, and the YAML loader.

YAML format (every key optional; see `example-config.yaml` beside this file)::

    seed: 1                      # RNG seed for durations, ids, faults, webhook keys
    key: lma_emulator            # the one API key accepted
    duration: [2, 5]             # run duration in seconds: a number or [lo, hi]
    queued: 0.3                  # seconds a run stays `queued` before `running`
    rate_limit: 100              # requests per window per client IP (null = off)
    rate_window: 60
    credits: null                # the balance; each start takes its app's credits (null = unlimited);
                                 # a start it cannot cover is 402 INSUFFICIENT_CREDITS
    webhook_retry_delays: [5, 30, 120]
    p_webhook_drop: 0.0          # share of webhook deliveries silently lost (never sent, never retried)
    webhook_rotated: false       # publish two signing keys, sign with the newer one
    webhook_user_id: user_emulator
    outage_drop: false           # during an outage drop connections instead of answering 503
    include_builtin_apps: true   # keep the demo catalogue next to `apps`
    oauth: {access_ttl: 3600}    # off when absent: OAuth logins with rotating refresh tokens (emulator/oauth.py)
    faults: {p429: 0, p500: 0, p503: 0, p_drop: 0, p_slow: 0, slow_seconds: 2,
             p_lost_start_reply: 0, p_start_500_after_create: 0, p_fail: 0}
    apps:
      - appId: app_Demo1
        name: Demo
        description: optional text
        credits: 2               # per run; or {expected: 2, min: 1, max: 3} for the estimate's range
        duration: 1.5            # optional per-app override
        parameters:
          - {name: Prompt, type: text}                      # no `default` key = must supply
                                                            # `key` defaults to snake_case of the name
                                                            # (`key: null`: an older app without keys)
          - {name: Size, type: options, options: [S, M], default: S}
          - {name: Photo, type: url, accept: [image], default: ""}
        outputs:
          - {label: Result, type: image}                    # image | text
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from lamina_batch.emulator.oauth import OAuthConfig, parse_oauth_config

_NS = uuid.UUID("6f1c1e0a-2b7d-4c1e-9a55-6c616d696e61")
NO_DEFAULT: Any = None  # marker meaning "no default": a parameter with default None must be supplied

PARAM_TYPES = ("text", "options", "url")
OUTPUT_TYPES = ("image", "text")


@dataclass(frozen=True)
class Faults:
    """Seeded fault rates (0..1) applied to API requests (not to /files)."""

    p429: float = 0.0
    p500: float = 0.0
    p503: float = 0.0
    p_drop: float = 0.0  # close the connection without a reply, before handling
    p_slow: float = 0.0  # delay the reply by `slow_seconds`
    slow_seconds: float = 2.0
    p_lost_start_reply: float = 0.0  # create the run, then close the connection without replying
    p_start_500_after_create: float = 0.0  # create the run, then answer 500
    p_fail: float = 0.0  # share of runs that end `failed`


def snake_key(name: str) -> str:
    """The snake_case key Lamina gives a parameter: "Aspect Ratio" -> "aspect_ratio"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class ParamDef:
    """One app input parameter; `default is None` means the caller must supply it; `key is None` models an
    older app definition without keys (inputs then go by name or id)."""

    name: str
    type: str = "text"
    required: bool = False
    default: str | None = NO_DEFAULT
    options: tuple[str, ...] = ()
    accept: tuple[str, ...] = ()
    key: str | None = None

    def param_id(self, app_id: str) -> str:
        return str(uuid.uuid5(_NS, f"{app_id}/{self.name}"))


@dataclass(frozen=True)
class OutputDef:
    """One labelled output of an app."""

    index: int
    label: str
    type: str = "image"

    def output_id(self, app_id: str) -> str:
        return _output_id(app_id, self.index, self.label)


@lru_cache(maxsize=4096)
def _output_id(app_id: str, index: int, label: str) -> str:
    # cached: every status reply names every output
    digest = hashlib.sha256(f"{app_id}/{index}/{label}".encode()).hexdigest()
    return f"aiDesignerNode-{digest[:12]}"


@dataclass(frozen=True)
class AppDef:
    """An app in the catalogue. A run costs `credits` (the estimate's `expected`), whatever its inputs or
    output selection; `credits_range` is the estimate's (min, max), by default (credits, credits)."""

    app_id: str
    name: str
    description: str | None
    parameters: tuple[ParamDef, ...]
    outputs: tuple[OutputDef, ...]
    credits: float = 1.0
    duration: float | tuple[float, float] | None = None  # None = the config's duration
    is_public: bool = True
    credits_range: tuple[float, float] | None = None

    @property
    def credits_min_max(self) -> tuple[float, float]:
        return self.credits_range if self.credits_range is not None else (self.credits, self.credits)


def _p(name: str, type_: str = "text", **kw: Any) -> ParamDef:
    return ParamDef(name=name, type=type_, key=snake_key(name), **kw)


BUILTIN_APPS: tuple[AppDef, ...] = (
    AppDef(
        "app_7Hk2",
        "Product Hero",
        "A studio hero shot of a product from a prompt.",
        (
            _p("Prompt", required=True),
            _p("Aspect Ratio", "options", options=("1:1", "4:3", "3:4", "16:9", "9:16"), default="1:1"),
            _p("Reference Image", "url", accept=("image",), default=""),
        ),
        (OutputDef(0, "Hero Image", "image"),),
        credits=4,
        credits_range=(3, 6),
    ),
    AppDef(
        "app_9Qx1",
        "Lifestyle Banner",
        "A lifestyle banner around a product image and a headline.",
        (
            _p("Product Image", "url", required=False, accept=("image",)),
            _p("Headline", default=""),
            _p("Aspect Ratio", "options", options=("16:9", "3:1", "1:1"), default="16:9"),
        ),
        (OutputDef(0, "Banner", "image"),),
        credits=6,
    ),
    AppDef(
        "app_3Vr8",
        "Colour Variants",
        "Front and back views of a product in a colour.",
        (
            _p("Prompt", required=True),
            _p("Colour", default="natural"),
            _p("Style", "options", options=("photo", "illustration", "flat"), default="photo"),
        ),
        (OutputDef(0, "Front", "image"), OutputDef(1, "Back", "image")),
        credits=8,
        credits_range=(6, 12),
    ),
    AppDef(
        "app_5Tx4",
        "Product Copy",
        "A short product description.",
        (
            _p("Product Name", required=True),
            _p("Tone", "options", options=("friendly", "premium", "playful"), default="friendly"),
        ),
        (OutputDef(0, "Description", "text"),),
        credits=1,
    ),
)


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator does; immutable (runtime controls live on `Emulator`)."""

    host: str = "127.0.0.1"
    port: int = 0
    key: str = field(default="lma_emulator", repr=False)
    seed: int = 0
    duration: float | tuple[float, float] = (2.0, 5.0)
    queued: float = 0.3
    rate_limit: int | None = 100
    rate_window: float = 60.0
    credits: float | None = None
    faults: Faults = field(default_factory=Faults)
    apps: tuple[AppDef, ...] = BUILTIN_APPS
    webhook_retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0)
    p_webhook_drop: float = 0.0
    webhook_rotated: bool = False
    webhook_user_id: str = "user_emulator"
    outage_drop: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    oauth: OAuthConfig | None = None  # None: only the static key is accepted
    # where output URLs point (`{files_base_url}/files/{run}/{n}.png`); None: this emulator serves them. Tests point
    # them at a hostile file server (a drip, a stall) to exercise downloads.
    files_base_url: str | None = None
    # runs kept in this file (emulator/journal.py): a new emulator on it knows the runs of the one before
    state_file: Path | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> EmulatorConfig:
        """Load a YAML config file; `overrides` (e.g. port, seed from the command line) win."""
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"{p}: cannot read: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ValueError(f"{p}: the top level must be a mapping")
        kwargs = _parse_doc(doc, str(p))
        kwargs.update(overrides)
        return cls(**kwargs)


_TOP_KEYS = {
    "host",
    "port",
    "key",
    "seed",
    "duration",
    "queued",
    "rate_limit",
    "rate_window",
    "credits",
    "faults",
    "apps",
    "include_builtin_apps",
    "webhook_retry_delays",
    "p_webhook_drop",
    "webhook_rotated",
    "webhook_user_id",
    "outage_drop",
    "oauth",
    "files_base_url",
}


class _Err:
    def __init__(self, file: str) -> None:
        self.file = file

    def __call__(self, where: str, message: str) -> ValueError:
        return ValueError(f"{self.file}: {where}: {message}")


def _num(v: Any, where: str, err: _Err, *, lo: float = 0.0, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise err(where, f"must be a number, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise err(where, f"must be between {lo} and {hi}" if hi is not None else f"must be >= {lo}")
    return float(v)


def _duration(v: Any, where: str, err: _Err) -> float | tuple[float, float]:
    if isinstance(v, list):
        if len(v) != 2:
            raise err(where, "must be a number or a [lo, hi] pair")
        lo, hi = _num(v[0], where, err), _num(v[1], where, err)
        if hi < lo:
            raise err(where, "hi must be >= lo")
        return (lo, hi)
    return _num(v, where, err)


def _str(v: Any, where: str, err: _Err) -> str:
    if not isinstance(v, str) or not v:
        raise err(where, f"must be a non-empty string, got {v!r}")
    return v


def _parse_doc(doc: dict[str, Any], file: str) -> dict[str, Any]:
    err = _Err(file)
    unknown = sorted(set(map(str, doc)) - _TOP_KEYS)
    if unknown:
        raise err(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    out: dict[str, Any] = {}
    for k in ("host", "key", "webhook_user_id", "files_base_url"):
        if k in doc:
            out[k] = _str(doc[k], k, err)
    for k in ("port", "seed"):
        if k in doc:
            v = doc[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise err(k, f"must be a non-negative integer, got {v!r}")
            out[k] = v
    if "duration" in doc:
        out["duration"] = _duration(doc["duration"], "duration", err)
    if "queued" in doc:
        out["queued"] = _num(doc["queued"], "queued", err)
    if "rate_limit" in doc:
        v = doc["rate_limit"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise err("rate_limit", f"must be a positive integer or null, got {v!r}")
        out["rate_limit"] = v
    if "rate_window" in doc:
        out["rate_window"] = _num(doc["rate_window"], "rate_window", err, lo=0.001)
    if "credits" in doc:
        v = doc["credits"]
        out["credits"] = None if v is None else _num(v, "credits", err)
    if "p_webhook_drop" in doc:
        out["p_webhook_drop"] = _num(doc["p_webhook_drop"], "p_webhook_drop", err, hi=1.0)
    for k in ("webhook_rotated", "outage_drop"):
        if k in doc:
            if not isinstance(doc[k], bool):
                raise err(k, f"must be true or false, got {doc[k]!r}")
            out[k] = doc[k]
    if "webhook_retry_delays" in doc:
        v = doc["webhook_retry_delays"]
        if not isinstance(v, list):
            raise err("webhook_retry_delays", "must be a list of seconds")
        out["webhook_retry_delays"] = tuple(_num(x, f"webhook_retry_delays[{i}]", err) for i, x in enumerate(v))
    if "faults" in doc:
        out["faults"] = _parse_faults(doc["faults"], err)
    if "oauth" in doc:
        out["oauth"] = parse_oauth_config(doc["oauth"], err)
    include_builtin = doc.get("include_builtin_apps", True)
    if not isinstance(include_builtin, bool):
        raise err("include_builtin_apps", "must be true or false")
    apps: list[AppDef] = list(BUILTIN_APPS) if include_builtin else []
    if "apps" in doc:
        if not isinstance(doc["apps"], list):
            raise err("apps", "must be a list of apps")
        for i, a in enumerate(doc["apps"]):
            app = _parse_app(a, f"apps[{i}]", err)
            if any(x.app_id == app.app_id for x in apps):
                raise err(f"apps[{i}].appId", f"duplicate app id {app.app_id!r}")
            apps.append(app)
    out["apps"] = tuple(apps)
    return out


def _parse_faults(v: Any, err: _Err) -> Faults:
    if not isinstance(v, dict):
        raise err("faults", "must be a mapping")
    names = set(Faults.__dataclass_fields__)
    kw: dict[str, float] = {}
    for k, x in v.items():
        if k not in names:
            raise err(f"faults.{k}", f"unknown fault (known: {', '.join(sorted(names))})")
        kw[k] = _num(x, f"faults.{k}", err, hi=None if k == "slow_seconds" else 1.0)
    return Faults(**kw)


_APP_KEYS = {"appId", "name", "description", "credits", "duration", "parameters", "outputs", "isPublic"}
_PARAM_KEYS = {"name", "type", "required", "default", "options", "accept", "key"}


def _parse_app(a: Any, where: str, err: _Err) -> AppDef:
    if not isinstance(a, dict):
        raise err(where, "must be a mapping")
    unknown = sorted(set(map(str, a)) - _APP_KEYS)
    if unknown:
        raise err(f"{where}.{unknown[0]}", "unknown key")
    app_id = _str(a.get("appId"), f"{where}.appId", err)
    name = _str(a.get("name"), f"{where}.name", err)
    desc = a.get("description")
    if desc is not None and not isinstance(desc, str):
        raise err(f"{where}.description", "must be a string")
    params_raw = a.get("parameters", [])
    if not isinstance(params_raw, list):
        raise err(f"{where}.parameters", "must be a list")
    params: list[ParamDef] = []
    for j, pr in enumerate(params_raw):
        pw = f"{where}.parameters[{j}]"
        param = _parse_param(pr, pw, err)
        if any(p.name == param.name for p in params):
            raise err(f"{pw}.name", f"duplicate parameter {param.name!r}")
        if param.key is not None and any(p.key == param.key for p in params):
            raise err(f"{pw}.key", f"duplicate key {param.key!r}")
        params.append(param)
    outs_raw = a.get("outputs", [{"label": "Image", "type": "image"}])
    if not isinstance(outs_raw, list) or not outs_raw:
        raise err(f"{where}.outputs", "must be a non-empty list")
    outs: list[OutputDef] = []
    for j, o in enumerate(outs_raw):
        ow = f"{where}.outputs[{j}]"
        if not isinstance(o, dict):
            raise err(ow, "must be a mapping")
        label = _str(o.get("label"), f"{ow}.label", err)
        otype = o.get("type", "image")
        if otype not in OUTPUT_TYPES:
            raise err(f"{ow}.type", f"must be one of {', '.join(OUTPUT_TYPES)}")
        outs.append(OutputDef(j, label, otype))
    credits, credits_range = _credits(a.get("credits", 1), f"{where}.credits", err)
    duration = _duration(a["duration"], f"{where}.duration", err) if "duration" in a else None
    is_public = a.get("isPublic", True)
    return AppDef(app_id, name, desc, tuple(params), tuple(outs), credits, duration, bool(is_public), credits_range)


def _parse_param(pr: Any, pw: str, err: _Err) -> ParamDef:
    if not isinstance(pr, dict):
        raise err(pw, "must be a mapping")
    bad = sorted(set(map(str, pr)) - _PARAM_KEYS)
    if bad:
        raise err(f"{pw}.{bad[0]}", "unknown key")
    pname = _str(pr.get("name"), f"{pw}.name", err)
    ptype = pr.get("type", "text")
    if ptype not in PARAM_TYPES:
        raise err(f"{pw}.type", f"must be one of {', '.join(PARAM_TYPES)}")
    options = pr.get("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise err(f"{pw}.options", "must be a list of strings")
    if ptype == "options" and not options:
        raise err(f"{pw}.options", "an options parameter needs a non-empty list")
    default = pr.get("default", NO_DEFAULT)
    if default is not None and not isinstance(default, str):
        raise err(f"{pw}.default", "must be a string")
    if ptype == "options" and default not in (None, *options):
        raise err(f"{pw}.default", "must be one of the options")
    accept = pr.get("accept", [])
    if not isinstance(accept, list):
        raise err(f"{pw}.accept", "must be a list")
    required = pr.get("required", default is None)
    if not isinstance(required, bool):
        raise err(f"{pw}.required", "must be true or false")
    key: str | None = snake_key(pname)
    if "key" in pr:
        key = None if pr["key"] is None else _str(pr["key"], f"{pw}.key", err)
    return ParamDef(pname, ptype, required, default, tuple(options), tuple(map(str, accept)), key)


def _credits(v: Any, where: str, err: _Err) -> tuple[float, tuple[float, float] | None]:
    """A run's credits: a number, or {expected, min, max} (min <= expected <= max)."""
    if not isinstance(v, dict):
        return _num(v, where, err), None
    unknown = sorted(set(map(str, v)) - {"expected", "min", "max"})
    if unknown or "expected" not in v:
        raise err(where, "must be a number or {expected: N, min: N, max: N}")
    expected = _num(v["expected"], f"{where}.expected", err)
    lo = _num(v.get("min", expected), f"{where}.min", err)
    hi = _num(v.get("max", expected), f"{where}.max", err)
    if not lo <= expected <= hi:
        raise err(where, "needs min <= expected <= max")
    return expected, (lo, hi)
