"""Discovering apps and starting from one: `apps list`, `apps show APP_ID` and `init APP_ID` (a pipeline
scaffolded from the app's parameters and a CSV's columns).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lamina_batch.cli.common import EXIT_OK, Out, UsageError
from lamina_batch.cli.parser import Commands, add_emulator_flag
from lamina_batch.cli.render import table

if TYPE_CHECKING:
    from lamina_batch.credits import Estimate
    from lamina_batch.models import AppInfo, AppSummary

_DIALECTS = ("runs", "executions")


def register(commands: Commands) -> None:
    apps = commands.group("apps", "discover apps", dest="apps_command", metavar="list|show")
    al = apps.add("list", "list apps", cmd_apps_list)
    al.add_argument("--search", metavar="Q")
    al.add_argument("--json", action="store_true")
    al.add_argument("--api", choices=_DIALECTS, default="runs")
    add_emulator_flag(al)
    ash = apps.add("show", "an app's parameters and outputs", cmd_apps_show)
    ash.add_argument("app_id", metavar="APP_ID")
    ash.add_argument("--json", action="store_true")
    ash.add_argument("--api", choices=_DIALECTS, default="runs")
    add_emulator_flag(ash)

    i = commands.add("init", "scaffold a pipeline from an app's parameters", cmd_init)
    i.add_argument("app_id", metavar="APP_ID")
    i.add_argument("--csv", type=Path, metavar="FILE", help="map parameters to this CSV's columns")
    i.add_argument("-o", "--output", type=Path, default=Path("pipeline.yaml"))
    i.add_argument("--force", action="store_true", help="overwrite an existing output file")
    i.add_argument("--api", choices=_DIALECTS, default="runs")
    add_emulator_flag(i)


def cmd_apps_list(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.target import api_target, make_client

    with api_target(args.emulator) as target:

        async def go() -> list[AppSummary]:
            async with make_client(target, args.api) as client:
                return await client.list_apps(search=args.search)

        apps = asyncio.run(go())
    if args.json:
        out.result(json.dumps([dataclasses.asdict(a) for a in apps], indent=2))
    else:
        # credits as the list states them: an estimate per app would cost a request per app of the catalogue
        # (`apps show APP_ID` asks for one)
        rows = [[a.app_id, a.name, _credits(a.credits), (a.description or "")[:60]] for a in apps]
        out.result(table(rows, ["APP ID", "NAME", "CREDITS", "DESCRIPTION"]) if rows else "no apps found")
    return EXIT_OK


def cmd_apps_show(args: argparse.Namespace, out: Out) -> int:
    """Each parameter by its key (what Lamina's own CLI asks for) beside its name: an input may use either."""
    from lamina_batch.params import PARAMETER_HEADER, parameter_rows

    app, cost = _get_app_and_cost(args)
    if args.json:
        doc = dataclasses.asdict(app)
        doc["credits"] = None if isinstance(cost, str) else cost.to_json()
        out.result(json.dumps(doc, indent=2))
        return EXIT_OK
    out.result(f"{app.app_id}  {app.name}")
    if app.description:
        out.result(app.description)
    out.result(_cost_line(cost))
    out.result("")
    out.result(table(parameter_rows(app), list(PARAMETER_HEADER)))
    out.result("")
    out.result(table([[str(o.index), o.label, o.type] for o in app.outputs], ["#", "OUTPUT", "TYPE"]))
    return EXIT_OK


def cmd_init(args: argparse.Namespace, out: Out) -> int:
    """The app's parameters met by the sheet's columns, by name and by content (scaffold.scaffold_for)."""
    from lamina_batch.atomic import write_text_atomic
    from lamina_batch.scaffold import scaffold_for
    from lamina_batch.sheethints import read_sample

    if args.output.exists() and not args.force:
        raise UsageError(f"{args.output} exists; pass --force to overwrite or -o to choose another file")
    if args.csv is not None:
        read_sample(args.csv)  # an unreadable sheet fails here, before any request
    app = _get_app(args)
    write_text_atomic(args.output, scaffold_for(app, args.csv, args.output, args.api))
    out.result(f"wrote {args.output}; check it with: lamina-batch validate {args.output}")
    return EXIT_OK


def _credits(value: float | None) -> str:
    from lamina_batch.credits import format_credits

    return "?" if value is None else format_credits(value)


def _cost_line(cost: Estimate | str) -> str:
    """`credits: 4 a run (3-6); balance 100`, or `credits: unknown (why)`."""
    if isinstance(cost, str):
        return f"credits: unknown ({cost})"
    span = "" if cost.min == cost.max else f" ({_credits(cost.min)}-{_credits(cost.max)})"
    balance = "" if cost.balance is None else f"; balance {_credits(cost.balance)}"
    return f"credits: {_credits(cost.expected)} a run{span}{balance}"


def _get_app_and_cost(args: argparse.Namespace) -> tuple[AppInfo, Estimate | str]:
    """The app and its estimate (one app-wide estimate request), or why its credits are unknown."""
    from lamina_batch.credits import NO_ESTIMATE_API, fetch_estimates
    from lamina_batch.target import api_target, make_client

    with api_target(args.emulator) as target:

        async def go() -> tuple[AppInfo, Estimate | str]:
            async with make_client(target, args.api) as client:
                app = await client.get_app(args.app_id)
                if not client.supports_estimate:
                    return app, NO_ESTIMATE_API
                found = await fetch_estimates(client, {app.app_id: None})
                return app, found.by_app.get(app.app_id) or found.why_unknown([app.app_id]) or "no estimate"

        return asyncio.run(go())


def _get_app(args: argparse.Namespace) -> AppInfo:
    """The app `args.app_id`, from the emulator or the environment's API."""
    from lamina_batch.target import api_target, make_client

    with api_target(args.emulator) as target:

        async def go() -> AppInfo:
            async with make_client(target, args.api) as client:
                return await client.get_app(args.app_id)

        return asyncio.run(go())
