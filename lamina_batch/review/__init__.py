"""The review loop's local app: a page to approve or reject every image of a batch, served over its manifest,
and the scripted forms of `review` (approve/reject by row, list, import of the gallery's verdicts.json).

Entry points for the CLI: `review_source(pipeline, ...)` then `serve_review(source, host=, port=, allow_remote=,
on_ready=)`; `mark`, `list_reviews` / `render_review_list`, `import_verdicts`, `export_verdicts`, `rejected_runs`.
"""

from __future__ import annotations

from lamina_batch.review.commands import (
    ImportSummary,
    ReviewEntry,
    current_verdicts,
    export_verdicts,
    import_verdicts,
    list_reviews,
    mark,
    rejected_runs,
    render_review_list,
    resolve_target,
)
from lamina_batch.review.server import ReviewServer, ReviewStats, ReviewThread, check_bind_host, serve_review
from lamina_batch.review.source import ReviewSource, build_items, review_source

__all__ = [
    "ImportSummary",
    "ReviewEntry",
    "ReviewServer",
    "ReviewSource",
    "ReviewStats",
    "ReviewThread",
    "build_items",
    "check_bind_host",
    "current_verdicts",
    "export_verdicts",
    "import_verdicts",
    "list_reviews",
    "mark",
    "rejected_runs",
    "render_review_list",
    "resolve_target",
    "review_source",
    "serve_review",
]
