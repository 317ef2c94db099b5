"""What the review page reviews: `ReviewSource` (manifest, output folder, the columns that matter) and the JSON
the page renders from the manifest's runs and verdicts: one item per row (title, values), one tile per run."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lamina_batch.models import DownloadRecord, Pipeline, RunOutput, RunRecord, RunState
from lamina_batch.reports.common import (
    PastAttempt,
    axes_label,
    error_text,
    is_web_url,
    iter_items,
    latest_per_step,
    output_text,
)
from lamina_batch.reports.fields import row_view, template_columns
from lamina_batch.verdicts import Verdict

__all__ = ["ReviewSource", "build_items", "file_url", "image_downloads", "review_source"]

_TEXT_CAP = 500
_VALUE_CAP = 300
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif", ".bmp", ".svg"})


@dataclass(frozen=True)
class ReviewSource:
    """One pipeline's review: its manifest, the folder its downloads were written to, and what a row shows.

    `columns` is the spec's `report.columns` (None: `template_columns`, the columns the templates use);
    `history(identity)` gives a run's earlier attempts, newest first (None until the manifest keeps them)."""

    manifest: Path
    pipeline_name: str
    step_ids: tuple[str, ...]
    output_dir: Path
    columns: tuple[str, ...] | None = None
    template_columns: tuple[str, ...] = ()
    key_column: str | None = None
    history: Callable[[str], Sequence[PastAttempt]] | None = None


def review_source(
    pipeline: Pipeline,
    *,
    manifest: Path | None = None,
    output_dir: Path | None = None,
    columns: Sequence[str] | None = None,
    history: Callable[[str], Sequence[PastAttempt]] | None = None,
) -> ReviewSource:
    """The review of a loaded pipeline: its manifest (or `manifest`), its download folder (or `output_dir`, the
    folder the run really wrote to), `columns` (the spec's `report.columns`) and the columns its templates use."""
    if output_dir is None:
        output_dir = pipeline.download.base_dir if pipeline.download is not None else pipeline.path.parent
    manifest = Path(manifest) if manifest is not None else pipeline.manifest
    if history is None:  # the manifest's own earlier attempts (kept on a redo or a retry)
        from lamina_batch.history import HistorySource

        history = HistorySource(manifest, pipeline.name)
    return ReviewSource(
        manifest=manifest,
        pipeline_name=pipeline.name,
        step_ids=tuple(s.id for s in pipeline.steps),
        output_dir=Path(output_dir),
        columns=tuple(columns) if columns is not None else None,
        template_columns=template_columns(pipeline),
        key_column=pipeline.matrix.key,
        history=history,
    )


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def image_downloads(outputs: Sequence[RunOutput], downloads: Sequence[DownloadRecord]) -> list[int]:
    """Positions in `downloads` of the files that are images (by the output's type, else the file suffix)."""
    types = {o.label: o.type for o in outputs if o.type}
    found = []
    for i, d in enumerate(downloads):
        kind = types.get(d.label)
        if kind == "image" or (kind is None and Path(d.path).suffix.lower() in IMAGE_SUFFIXES):
            found.append(i)
    return found


def file_url(identity: str, index: int, attempt: int, *, past: bool = False) -> str:
    """The server's URL of a downloaded file; the attempt is in it so a redone image is never a cached one."""
    where = f"a{attempt}/{index}" if past else f"{index}?a={attempt}"
    return f"/files/{quote(identity, safe='')}/{where}"


def _images(
    identity: str, attempt: int, outputs: Sequence[RunOutput], downloads: Sequence[DownloadRecord], *, past: bool
) -> list[dict[str, str]]:
    images = [
        {"src": file_url(identity, i, attempt, past=past), "label": downloads[i].label}
        for i in image_downloads(outputs, downloads)
    ]
    fetched = {d.label for d in downloads}
    for o in outputs:
        if o.type == "image" and o.status != "error" and is_web_url(o.value) and o.label not in fetched:
            images.append({"src": str(o.value), "label": o.label})
    return images


def _verdict_json(v: Verdict | None) -> dict[str, Any] | None:
    return None if v is None else {"verdict": v.verdict, "note": v.note, "at": v.at}


def _run_json(
    rec: RunRecord, verdicts: Mapping[tuple[str, int], Verdict], past: Sequence[PastAttempt]
) -> dict[str, Any]:
    attempt = max(rec.attempts, 1)
    texts = [
        {"label": o.label, "text": _cap(output_text(o.value), _TEXT_CAP)}
        for o in rec.outputs
        if o.value is not None and o.status != "error" and o.type != "image" and not is_web_url(o.value)
    ]
    return {
        "identity": rec.identity,
        "step": rec.step_id,
        "state": rec.state.value,
        "attempt": attempt,
        "reviewable": rec.state is RunState.COMPLETED,
        "images": _images(rec.identity, attempt, rec.outputs, rec.downloads, past=False),
        "texts": texts,
        "error": _cap(error_text(rec), _TEXT_CAP),
        "finished_at": rec.finished_at,
        "verdict": _verdict_json(verdicts.get((rec.identity, attempt))),
        "history": [
            {
                "attempt": p.attempt,
                "state": p.state.value,
                "images": _images(rec.identity, p.attempt, p.outputs, p.downloads, past=True),
                "verdict": _verdict_json(verdicts.get((rec.identity, p.attempt))),
            }
            for p in sorted(past, key=lambda a: a.attempt, reverse=True)
        ],
    }


def _pairs(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    return [[k, _cap(v, _VALUE_CAP)] for k, v in pairs]


def build_items(
    source: ReviewSource, records: Iterable[RunRecord], verdicts: Mapping[tuple[str, int], Verdict]
) -> dict[str, Any]:
    """The page's data: `{"pipeline", "steps", "items": [{row title and values, "runs": [...]}]}`."""
    items = []
    for runs in iter_items(records):
        first = runs[0]
        view = row_view(
            first.row,
            row_number=first.row_number,
            key=first.row_key,
            key_column=source.key_column,
            columns=source.columns,
            template_columns=source.template_columns,
        )
        by_step = latest_per_step(runs)
        ordered = [by_step[s] for s in source.step_ids if s in by_step]
        ordered += [r for s, r in by_step.items() if s not in source.step_ids]
        items.append(
            {
                "item": first.item_id,
                "row_number": first.row_number,
                "key": first.row_key,
                "title": _cap(view.title, _VALUE_CAP),
                "axes": axes_label(first.axes),
                "shown": _pairs(view.shown),
                "rest": _pairs(view.rest),
                "text": _cap(" ".join([view.title, *first.row.values(), *first.axes.values()]).lower(), 2000),
                "runs": [_run_json(r, verdicts, source.history(r.identity) if source.history else ()) for r in ordered],
            }
        )
    return {"pipeline": source.pipeline_name, "steps": list(source.step_ids), "items": items}
