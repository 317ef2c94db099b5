"""JSON Lines report: one object per run with everything the manifest knows about it (it holds no secrets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamina_batch.atomic import atomic_text_writer
from lamina_batch.models import RunRecord
from lamina_batch.reports.common import ReportInput, verdict_of
from lamina_batch.verdicts import Verdict


def run_to_json(rec: RunRecord, verdict: Verdict | None = None) -> dict[str, Any]:
    """A manifest record as a JSON-ready dict (field names in snake_case, state as its string), with the review
    verdict of its current attempt (`verdict`, `verdict_note`: None when not reviewed)."""
    return {
        "identity": rec.identity,
        "step": rec.step_id,
        "app": rec.app_id,
        "row_number": rec.row_number,
        "row_key": rec.row_key,
        "item_id": rec.item_id,
        "row": dict(rec.row),
        "axes": dict(rec.axes),
        "inputs": dict(rec.inputs),
        "output_labels": list(rec.output_labels) if rec.output_labels is not None else None,
        "needs": dict(rec.needs),
        "state": rec.state.value,
        "remote_id": rec.remote_id,
        "attempts": rec.attempts,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "submitted_at": rec.submitted_at,
        "finished_at": rec.finished_at,
        "remote_duration": rec.remote_duration,
        "outputs": [
            {
                "id": o.id,
                "label": o.label,
                "type": o.type,
                "value": o.value,
                "status": o.status,
                "error": o.error,
            }
            for o in rec.outputs
        ],
        "error": rec.error,
        "error_code": rec.error_code,
        "request_id": rec.request_id,
        "downloads": [
            {
                "output_index": d.output_index,
                "label": d.label,
                "url": d.url,
                "path": d.path,
                "size": d.size,
                "sha256": d.sha256,
            }
            for d in rec.downloads
        ],
        "credits": rec.credits,
        "credits_estimate": rec.credits_estimate,
        "credits_actual": rec.credits_actual,
        "credits_earlier": rec.credits_earlier,
        "verdict": verdict.verdict if verdict is not None else None,
        "verdict_note": verdict.note if verdict is not None else None,
    }


def write_jsonl(data: ReportInput, out: Path) -> None:
    """One compact JSON object per line; non-ASCII kept as UTF-8, odd input values stringified."""
    with atomic_text_writer(out, newline="\n") as fh:
        for rec in data.records:
            fh.write(json.dumps(run_to_json(rec, verdict_of(data, rec)), ensure_ascii=False, default=str))
            fh.write("\n")
