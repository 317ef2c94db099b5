"""How an input names an app parameter: by its `key`, else its `name`, else its `id`, case-sensitive, the order
Lamina's server resolves them in; how messages name a parameter; the did-you-mean over all three spellings;
whether two input mappings differ only in spelling; overrides applied to inputs; the `apps show` table."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lamina_batch.models import AppInfo, AppParameter

PARAMETER_HEADER = ("KEY", "NAME", "TYPE", "REQUIRED/DEFAULT", "VALUES")


class ParameterIndex:
    """One app's parameters looked up by key, name and id (built once per app, used for every input)."""

    def __init__(self, app: AppInfo) -> None:
        self.app = app
        self.by_key: dict[str, AppParameter] = {}
        self.by_name: dict[str, AppParameter] = {}
        self.by_id: dict[str, AppParameter] = {}
        for p in app.parameters:
            # first wins, as a server walking the list in order would
            if p.key:
                self.by_key.setdefault(p.key, p)
            self.by_name.setdefault(p.name, p)
            if p.id:
                self.by_id.setdefault(p.id, p)

    def resolve(self, spelling: str) -> AppParameter | None:
        """The parameter an input keyed `spelling` sets, or None."""
        return self.by_key.get(spelling) or self.by_name.get(spelling) or self.by_id.get(spelling)


@dataclass(frozen=True)
class Resolution:
    """Inputs (as written) resolved against an app: what each sets, what sets nothing, and clashes."""

    resolved: Mapping[str, AppParameter]  # input as written -> parameter
    unknown: tuple[str, ...]
    clashes: tuple[tuple[AppParameter, tuple[str, ...]], ...]  # a parameter set by two or more inputs, in order

    def given(self, param: AppParameter) -> bool:
        return any(p is param for p in self.resolved.values())


def resolve_inputs(app: AppInfo | ParameterIndex, names: Iterable[str]) -> Resolution:
    """Resolve input names in the order written (the order in which clashes are reported)."""
    index = app if isinstance(app, ParameterIndex) else ParameterIndex(app)
    resolved: dict[str, AppParameter] = {}
    unknown: list[str] = []
    users: dict[int, list[str]] = {}
    for name in names:
        param = index.resolve(name)
        if param is None:
            unknown.append(name)
            continue
        resolved[name] = param
        users.setdefault(id(param), []).append(name)
    clashes = tuple((resolved[spellings[0]], tuple(spellings)) for spellings in users.values() if len(spellings) > 1)
    return Resolution(resolved, tuple(unknown), clashes)


def label(param: AppParameter) -> str:
    """How messages name a parameter: `'aspect_ratio' (Aspect Ratio)`, or `'Aspect Ratio'` without a key."""
    if param.key and param.key != param.name:
        return f"{param.key!r} ({param.name})"
    return repr(param.name)


def preferred_spelling(param: AppParameter) -> str:
    """The spelling to write an input with: the key when there is one (what Lamina's own CLI asks for)."""
    return param.key or param.name


def _spelled(spelling: str, param: AppParameter) -> str:
    return repr(spelling) if spelling == param.name else f"{spelling!r} ({param.name})"


def normalise(text: str) -> str:
    """Case, spaces and punctuation ignored; `colour` read as `color` (so `Product ID` meets `product_id`)."""
    folded = re.sub(r"[^0-9a-z]+", "", text.casefold())
    return folded.replace("colour", "color")


def suggest(app: AppInfo, name: str) -> str:
    """A hint for an input that names no parameter: the spelling it most likely meant, by key, name or id."""
    spellings: list[tuple[str, AppParameter]] = []
    for p in app.parameters:
        if p.key:
            spellings.append((p.key, p))
        spellings.append((p.name, p))
    wanted = normalise(name)
    for spelling, p in spellings:
        if wanted and normalise(spelling) == wanted:
            return f"did you mean {_spelled(spelling, p)}? keys and names are exact"
    for p in app.parameters:
        if p.id and name.strip().casefold() == p.id.casefold():
            return f"did you mean {_spelled(p.id, p)}? ids are exact"
    close = difflib.get_close_matches(name, [s for s, _ in spellings], n=1, cutoff=0.6)
    if close:
        param = next(p for s, p in spellings if s == close[0])
        return f"did you mean {_spelled(close[0], param)}?"
    if not app.parameters:
        return "it takes no parameters"
    return "its parameters: " + ", ".join(label(p) for p in app.parameters)


def canonical_inputs(app: AppInfo | ParameterIndex, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The inputs keyed by the parameter each sets (unknown names kept apart, as written); None on a clash."""
    index = app if isinstance(app, ParameterIndex) else ParameterIndex(app)
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        param = index.resolve(name)
        slot = f"param\x00{param.id or param.name}" if param is not None else f"input\x00{name}"
        if slot in out:
            return None
        out[slot] = value
    return out


def renamed_inputs(
    app: AppInfo | ParameterIndex, before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[tuple[str, str], ...] | None:
    """When `after` sets the same parameters to the same values as `before` and differs only in how inputs
    are spelled (`Prompt` -> `prompt`), the (before, after) spellings that changed, in `after`'s order;
    otherwise None (equal mappings, other differences, or a clash). `plan` says "inputs renamed" for these."""
    if dict(before) == dict(after):
        return None
    index = app if isinstance(app, ParameterIndex) else ParameterIndex(app)
    a, b = canonical_inputs(index, before), canonical_inputs(index, after)
    if a is None or b is None or _canonical_json(a) != _canonical_json(b):
        return None
    old_spelling = {}
    for name in before:
        param = index.resolve(name)
        if param is not None:
            old_spelling[id(param)] = name
    pairs = []
    for name in after:
        param = index.resolve(name)
        if param is not None and old_spelling.get(id(param), name) != name:
            pairs.append((old_spelling[id(param)], name))
    return tuple(pairs)


def respelled_inputs(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """`renamed_inputs` without the app definition (so `plan` needs no request): inputs paired by normalised
    spelling (`Aspect Ratio` and `aspect_ratio` meet, as a name and its snake_case key do). A likely rename,
    not a certain one: an id spelling or a key unlike its name is not recognised."""
    if dict(before) == dict(after) or len(before) != len(after):
        return None
    old = {normalise(name): name for name in before}
    if len(old) != len(before):
        return None
    pairs = []
    for name, value in after.items():
        was = old.get(normalise(name))
        if was is None or _canonical_json({"v": before[was]}) != _canonical_json({"v": value}):
            return None
        if was != name:
            pairs.append((was, name))
    return tuple(pairs) if pairs else None


def override_inputs(
    app: AppInfo | ParameterIndex, inputs: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """`inputs` with `overrides` applied as the server would read them (`review.vary`, `--redo-set`): an
    override replaces the value of the input that sets the same parameter, under that input's spelling, or is
    added under its own spelling when no input sets that parameter (or it names none)."""
    index = app if isinstance(app, ParameterIndex) else ParameterIndex(app)
    out = dict(inputs)
    spelling = {id(p): name for name in inputs if (p := index.resolve(name)) is not None}
    for name, value in overrides.items():
        param = index.resolve(name)
        out[spelling.get(id(param), name) if param is not None else name] = value
    return out


def _canonical_json(inputs: Mapping[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def parameter_rows(app: AppInfo) -> list[list[str]]:
    """One row per parameter under PARAMETER_HEADER (key, name, type, required or default, options/accepts)."""
    rows = []
    for p in app.parameters:
        need = "required" if not p.has_default else f"default {json.dumps(p.default, ensure_ascii=False)}"
        extra = ""
        if p.options:
            extra = "options: " + ", ".join(p.options)
        elif p.accept:
            extra = "accepts: " + ", ".join(p.accept)
        rows.append([p.key or "-", p.name, p.type, need, extra])
    return rows
