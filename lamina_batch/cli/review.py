"""`lamina-batch review PIPELINE`: serve the review page over the batch's manifest (first line: its URL), or
the scripted forms `--approve/--reject ROW[:STEP] [--note]`, `--list [--json]` and `--import verdicts.json`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lamina_batch.cli.common import EXIT_OK, Out, UsageError
from lamina_batch.cli.parser import Commands, add_emulator_flag

if TYPE_CHECKING:
    from lamina_batch.models import Pipeline


def register(commands: Commands) -> None:
    r = commands.add(
        "review", "a local web page to approve or reject every image (or the scripted forms)", cmd_review, pipeline=True
    )
    r.add_argument("--manifest", type=Path, help="manifest file (default: from the spec, else beside it)")
    add_emulator_flag(r, manifest_only=True)
    r.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="where the images are (default: the folder the run wrote to)"
    )
    r.add_argument("--host", default="127.0.0.1", help="where the page is served (loopback unless --allow-remote)")
    r.add_argument("--port", type=int, default=0, help="0 picks a free port")
    r.add_argument("--open", action="store_true", help="open the page in the default browser")
    r.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (the page has no login)")
    act = r.add_mutually_exclusive_group()
    act.add_argument("--approve", metavar="ROW[:STEP]", help="approve a row's images (ROW: its key value or #N)")
    act.add_argument("--reject", metavar="ROW[:STEP]", help="reject a row's images (ROW: its key value or #N)")
    act.add_argument("--list", action="store_true", help="every completed run with its verdict")
    act.add_argument("--import", dest="import_file", type=Path, metavar="FILE", help="record a gallery's verdicts.json")
    r.add_argument("--note", help="with --approve/--reject: why (shown on the page and in reports)")
    r.add_argument("--json", action="store_true", help="with --list: JSON instead of a table")


def cmd_review(args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.options import BatchOptions, load_for

    options = BatchOptions(manifest=args.manifest, emulator=args.emulator)
    pipeline = load_for(args.pipeline, options)
    if not pipeline.manifest.exists():
        from lamina_batch.operations import no_manifest_yet

        raise no_manifest_yet(pipeline, args.pipeline, options)
    if args.note is not None and args.approve is None and args.reject is None:
        raise UsageError("--note goes with --approve or --reject")
    if args.json and not args.list:
        raise UsageError("--json goes with --list")
    if args.approve is not None or args.reject is not None:
        return _mark(pipeline, args, out)
    if args.list:
        return _list(pipeline, args, out)
    if args.import_file is not None:
        return _import(pipeline, args.import_file, out)
    return _serve(pipeline, args, out)


def _mark(pipeline: Pipeline, args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.review import mark

    verdict, target = ("approved", args.approve) if args.approve is not None else ("rejected", args.reject)
    done = mark(pipeline.manifest, pipeline.name, target, verdict, args.note)
    out.result(f"{target}: {len(done)} runs {verdict}")
    return EXIT_OK


def _list(pipeline: Pipeline, args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.review import list_reviews, render_review_list

    entries = list_reviews(pipeline.manifest, pipeline.name)
    if args.json:
        json.dump([e.to_json() for e in entries], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return EXIT_OK
    out.result(render_review_list(entries))
    return EXIT_OK


def _import(pipeline: Pipeline, source: Path, out: Out) -> int:
    from lamina_batch.review import import_verdicts

    summary = import_verdicts(pipeline.manifest, pipeline.name, source)
    for line in summary.skipped:
        out.err(f"lamina-batch: skipped {line}")
    stale = f" ({summary.stale} for an earlier attempt)" if summary.stale else ""
    out.result(
        f"{source}: {summary.recorded} verdicts recorded{stale}, {summary.duplicates} already recorded, "
        f"{len(summary.skipped)} skipped"
    )
    return EXIT_OK


def _serve(pipeline: Pipeline, args: argparse.Namespace, out: Out) -> int:
    from lamina_batch.review import check_bind_host, review_source, serve_review

    check_bind_host(args.host, args.allow_remote)
    output_dir = args.output_dir.resolve() if args.output_dir is not None else _recorded_folder(pipeline)
    source = review_source(pipeline, output_dir=output_dir, columns=pipeline.report.columns)

    def ready(url: str) -> None:
        out.result(url)
        out.info("reviewing: a approve, r reject, u undo, j/k next/previous, ? help; Ctrl-C stops")
        if args.open:
            import webbrowser

            webbrowser.open(url)

    with contextlib.suppress(KeyboardInterrupt):
        serve_review(source, host=args.host, port=args.port, allow_remote=args.allow_remote, on_ready=ready)
    return EXIT_OK


def _recorded_folder(pipeline: Pipeline) -> Path | None:
    """The folder the run wrote its files to, as the manifest recorded it (None: the spec's own folder)."""
    from lamina_batch.manifest import Manifest
    from lamina_batch.operations import recorded_folder

    if not pipeline.manifest.exists():
        return None
    with Manifest.open(pipeline.manifest, pipeline_name=pipeline.name, writer=False) as manifest:
        return recorded_folder(manifest)
