"""`validate` (every template of every row, optionally against the live apps) and `plan` (what `run` would do),
both before any money is spent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lamina_batch.cli.common import EXIT_OK, Out, batch_options
from lamina_batch.cli.parser import (
    Commands,
    add_emulator_flag,
    add_redo_flags,
    add_subset_flags,
    positive_int,
    shard_flag,
)

if TYPE_CHECKING:
    from lamina_batch.matrix import ValidationSummary


def register(commands: Commands) -> None:
    v = commands.add(
        "validate", "check spec, CSV and every template for every row; nothing is sent", cmd_validate, pipeline=True
    )
    v.add_argument("--check-apps", action="store_true", help="also check inputs against the live app definitions")
    v.add_argument("--json", action="store_true", help="the counts and warnings as JSON, for scripts")
    add_emulator_flag(v)
    add_subset_flags(v)

    pl = commands.add(
        "plan",
        "what `run` would do: new / reused / running / to retry / kept / waiting for upstream / orphaned",
        cmd_plan,
        pipeline=True,
    )
    pl.add_argument("--json", action="store_true", help="every run with its identity and rendered inputs")
    pl.add_argument("--manifest", type=Path)
    pl.add_argument("--retry-failed", action="store_true")
    pl.add_argument("--restart-unknown", action="store_true")
    pl.add_argument("--shard", type=shard_flag, metavar="I/N")
    # credits (issue 16): the bill of what `run` would start
    pl.add_argument("--max-starts", type=positive_int, metavar="N", help="bill at most N starts, as `run` would")
    pl.add_argument("--refresh-estimates", action="store_true", help="ask for estimates again (cached for an hour)")
    pl.add_argument("--offline", action="store_true", help="send nothing: credits read unknown")
    add_emulator_flag(pl)
    add_redo_flags(pl)
    add_subset_flags(pl)


def cmd_validate(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.operations import validate

    summary = validate(args.pipeline, batch_options(args), check_apps=args.check_apps)
    apps = " (apps checked)" if args.check_apps else ""
    if args.json:
        fields = {
            "pipeline": str(args.pipeline),
            "valid": True,
            "apps_checked": bool(args.check_apps),
            "rows": summary.rows,
            "items": summary.items,
            "steps": summary.steps,
            "runs": summary.runs,
            "selected_items": summary.selected_items,
            "selected_runs": summary.selected_runs,
            "warnings": [str(w) for w in summary.warnings],
        }
        out.result(json.dumps(fields, indent=2))
        return EXIT_OK
    for warning in summary.warnings:
        out.err(f"warning: {warning}")
    out.result(
        f"{args.pipeline}: valid{apps}: {summary.rows} rows, {summary.items} items, "
        f"{summary.steps} steps, {summary.runs} runs{_subset(args, summary)}"
    )
    return EXIT_OK


def _subset(args: argparse.Namespace, summary: ValidationSummary) -> str:
    """`; a subset: 5 of 600 items, 10 runs` when --rows/--limit picked part of the batch."""
    if getattr(args, "rows", None) is None and getattr(args, "limit", None) is None:
        return ""
    from lamina_batch.selection import Selection, rows_note, subset_text

    note = rows_note(Selection.parse(args.rows, args.limit), summary.rows)
    picked = f"; a subset: {subset_text(summary.selected_items, summary.items)}, {summary.selected_runs} runs"
    return picked if note is None else f"{picked}; {note}"


def cmd_plan(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.operations import offline_bill, plan

    options = batch_options(args)
    report = plan(
        args.pipeline,
        options,
        details=args.json or args.redo is not None,
        credits=not args.offline,
        refresh_estimates=args.refresh_estimates,
    )
    if args.offline:
        report = offline_bill(report, args.pipeline, options)
    if args.json:
        out.result(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        return EXIT_OK
    out.result(report.render_text())
    return EXIT_OK
