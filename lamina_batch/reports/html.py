"""The HTML gallery: one self-contained page (inline CSS/JS, no network assets) with a card per matrix item, its
images (linked relative to the page, or embedded as data URIs), a title and the row values that matter, per-step
status, errors, earlier attempts, and offline approve/reject with "Export verdicts". Everything escaped."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import IO
from urllib.parse import quote

from lamina_batch.atomic import atomic_text_writer
from lamina_batch.models import DownloadRecord, RunOutput, RunRecord, RunState
from lamina_batch.reports.common import (
    STATE_LABELS,
    STATE_ORDER,
    PastAttempt,
    ReportInput,
    add_credits,
    axes_label,
    credits_line,
    credits_text,
    error_text,
    is_web_url,
    iter_items,
    latest_per_step,
    output_text,
)
from lamina_batch.reports.fields import RowView, row_view
from lamina_batch.reports.html_assets import GALLERY_CSS, GALLERY_JS
from lamina_batch.verdicts import Verdict

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".avif": "image/avif",
    ".bmp": "image/bmp",
    ".svg": "image/svg+xml",
}
_SPOOL_BYTES = 4 << 20
_TEXT_CAP = 500
_VALUE_CAP = 300  # shown in the card; the hover text carries up to _HOVER_CAP
_HOVER_CAP = 2000
# One image past this stays a link even with --embed: a page of such images would not open.
EMBED_MAX_BYTES = 8 << 20
# A card's colour is its worst run: the first state in this order that any of its runs is in.
_SEVERITY: tuple[RunState, ...] = (
    RunState.FAILED,
    RunState.TIMED_OUT,
    RunState.UNKNOWN,
    RunState.CANCELLED,
    RunState.RUNNING,
    RunState.SUBMITTING,
    RunState.PENDING,
    RunState.COMPLETED,
)


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class _Image:
    src: str
    href: str | None  # where a click goes; None when the image is embedded (or nothing to open)
    caption: str


@dataclass
class _Gallery:
    """What writing the page needs besides the records, and what it learnt on the way (for the header)."""

    data: ReportInput
    report_dir: Path
    files_dir: Path
    local: int = 0
    embedded: int = 0
    not_embedded: int = 0
    remote: int = 0
    counts: dict[RunState, int] = field(default_factory=dict)
    verdict_counts: dict[str, int] = field(default_factory=dict)
    credits: dict[str, float] = field(default_factory=dict)  # per step: what its runs cost (issue 16)

    def local_image(self, rel_path: str, caption: str) -> _Image:
        self.local += 1
        href = _relative_href(self.files_dir, self.report_dir, rel_path)
        if self.data.embed:
            uri = _data_uri(self.files_dir, rel_path)
            if uri is not None:
                self.embedded += 1
                return _Image(uri, None, caption)
            self.not_embedded += 1
        return _Image(href, href, caption)

    def remote_image(self, url: str, caption: str) -> _Image:
        self.remote += 1
        return _Image(url, url, caption)


def _relative_href(files_dir: Path, report_dir: Path, rel_path: str) -> str:
    # Relative to where the report lives, so the folder can be zipped and opened anywhere.
    rel = os.path.relpath(files_dir / rel_path, report_dir)
    return quote(Path(rel).as_posix(), safe="/._-~")


def _data_uri(files_dir: Path, rel_path: str) -> str | None:
    """The file as a data URI; None when it is missing, too big, or (by a tampered path) outside its folder."""
    try:
        path = (files_dir / rel_path).resolve(strict=True)
        if not path.is_relative_to(files_dir) or not path.is_file() or path.stat().st_size > EMBED_MAX_BYTES:
            return None
        raw = path.read_bytes()
    except OSError:
        return None
    mime = _IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def _is_image(outputs: Sequence[RunOutput], d: DownloadRecord) -> bool:
    for o in outputs:
        if o.label == d.label and o.type:
            return o.type == "image"
    return Path(d.path).suffix.lower() in _IMAGE_TYPES


class _Media:
    """What a card shows for one run (or one earlier attempt): images, other links, and text outputs."""

    def __init__(self) -> None:
        self.images: list[_Image] = []
        self.links: list[tuple[str, str]] = []
        self.texts: list[tuple[str, str]] = []


def _media(g: _Gallery, step_id: str, outputs: Sequence[RunOutput], downloads: Sequence[DownloadRecord]) -> _Media:
    media = _Media()
    downloaded = {d.output_index for d in downloads}
    downloaded_labels = {d.label for d in downloads}
    for d in downloads:
        caption = f"{step_id} · {d.label}"
        if _is_image(outputs, d):
            media.images.append(g.local_image(d.path, caption))
        else:
            media.links.append((_relative_href(g.files_dir, g.report_dir, d.path), d.label))
    for idx, o in enumerate(outputs):
        if o.value is None or o.status == "error":
            continue
        if idx in downloaded or (o.label in downloaded_labels and is_web_url(o.value)):
            continue
        if is_web_url(o.value):
            if o.type == "image":
                media.images.append(g.remote_image(str(o.value), f"{step_id} · {o.label}"))
            else:
                media.links.append((str(o.value), o.label))
        else:
            media.texts.append((o.label, output_text(o.value)))
    return media


def _img_tag(img: _Image, *, label: str) -> str:
    tag = (
        f'<img loading="lazy" decoding="async" src="{_e(img.src)}" alt="{_e(img.caption)}" '
        f'onload="this.dataset.loaded=1" onerror="this.dataset.loaded=0;this.parentNode.classList.add(\'broken\')">'
        f"<span>{_e(label)}</span>"
    )
    if img.href is None:
        return f'<div class="thumb" title="{_e(img.caption)}">{tag}</div>'
    return f'<a class="thumb" href="{_e(img.href)}" target="_blank" rel="noopener" title="{_e(img.caption)}">{tag}</a>'


def _thumbs(images: Sequence[_Image], worst: RunState) -> str:
    if not images:
        return f'<div class="thumbs none"><span>no image · {_e(STATE_LABELS[worst])}</span></div>'
    tags = "".join(_img_tag(img, label=img.caption.split(" · ", 1)[0]) for img in images)
    return f'<div class="thumbs n{min(len(images), 4)}">{tags}</div>'


def _verdict_box(rec: RunRecord, verdict: Verdict | None) -> str:
    """Approve/reject controls of a completed run; the page script keeps offline decisions in the browser."""
    v = verdict.verdict if verdict else ""
    note = (verdict.note or "") if verdict else ""
    return (
        f'<div class="vd{f" v-{v}" if v else ""}" data-identity="{_e(rec.identity)}" '
        f'data-attempt="{max(rec.attempts, 1)}" data-step="{_e(rec.step_id)}" data-row-number="{rec.row_number}" '
        f'data-row-key="{_e(rec.row_key or "")}" data-verdict="{v}" data-orig-verdict="{v}" '
        f'data-orig-note="{_e(note)}">'
        f'<button type="button" class="va" aria-pressed="{str(v == "approved").lower()}" title="Approve" '
        'aria-label="Approve">✓</button>'
        f'<button type="button" class="vr" aria-pressed="{str(v == "rejected").lower()}" title="Reject" '
        'aria-label="Reject">✕</button>'
        f'<input class="vnote" type="text" maxlength="2000" placeholder="note (optional)" '
        f'aria-label="note" value="{_e(note)}"{"" if v else " hidden"}></div>'
    )


def _attempt_strip(g: _Gallery, rec: RunRecord, current: Sequence[_Image], past: Sequence[PastAttempt]) -> str:
    """The run's attempts side by side, newest first: the current one, then each earlier one with its verdict."""
    verdicts = g.data.verdicts
    figures = []
    # (attempt, images, what the caption says, css class)
    entries: list[tuple[int, Sequence[_Image], str, str]] = [(max(rec.attempts, 1), current, "now", "cur")]
    for p in sorted(past, key=lambda a: a.attempt, reverse=True):
        media = _media(g, rec.step_id, p.outputs, p.downloads)
        v = verdicts.get((rec.identity, p.attempt))
        word, kind = (v.verdict, v.verdict) if v else (STATE_LABELS[p.state], p.state.value)
        entries.append((p.attempt, media.images, word, f"a-{kind}"))
    for attempt, images, word, kind in entries:
        inner = (
            f'<img loading="lazy" decoding="async" src="{_e(images[0].src)}" alt="attempt {attempt}">'
            if images
            else '<i class="noimg"></i>'
        )
        figures.append(f'<figure class="att {kind}">{inner}<figcaption>#{attempt} · {_e(word)}</figcaption></figure>')
    return f'<div class="atts" aria-label="attempts, newest first">{"".join(figures)}</div>'


def _step_html(g: _Gallery, rec: RunRecord, media: _Media) -> str:
    title = " · ".join(
        x
        for x in (
            f"app {rec.app_id}",
            f"run {rec.remote_id}" if rec.remote_id else "",
            f"attempts {rec.attempts}",
            f"credits {credits_text(rec.credits)}" if rec.credits is not None else "",
            f"finished {rec.finished_at}" if rec.finished_at else "",
        )
        if x
    )
    parts = [
        f'<div class="step"><span class="step-id">{_e(rec.step_id)}</span>'
        f'<span class="badge s-{rec.state.value}" title="{_e(title)}">{_e(STATE_LABELS[rec.state])}</span>'
    ]
    parts += [f'<a class="file" href="{_e(href)}">{_e(label)}</a>' for href, label in media.links]
    if rec.state is RunState.COMPLETED:
        verdict = g.data.verdicts.get((rec.identity, max(rec.attempts, 1)))
        if verdict is not None:
            g.verdict_counts[verdict.verdict] = g.verdict_counts.get(verdict.verdict, 0) + 1
        parts.append(_verdict_box(rec, verdict))
    parts.append("</div>")
    past = g.data.history.get(rec.identity, ())
    if past:
        parts.append(_attempt_strip(g, rec, media.images, past))
    err = error_text(rec)
    if err:
        parts.append(f'<p class="err" title="{_e(_cap(err, _HOVER_CAP))}">{_e(_cap(err, _TEXT_CAP))}</p>')
    for label, text in media.texts:
        parts.append(
            f'<p class="out" title="{_e(_cap(text, _HOVER_CAP))}"><span class="lbl">{_e(label)}</span> '
            f"{_e(_cap(text, _TEXT_CAP))}</p>"
        )
    return "".join(parts)


def _fields(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(
        f'<dt title="{_e(k)}">{_e(k)}</dt><dd title="{_e(_cap(v, _HOVER_CAP))}">{_e(_cap(v, _VALUE_CAP))}</dd>'
        for k, v in pairs
    )


def _row_html(view: RowView) -> str:
    shown = f'<dl class="kv">{_fields(view.shown)}</dl>' if view.shown else ""
    if not view.rest:
        return shown
    n = len(view.rest)
    return (
        f'{shown}<details class="more"><summary>{n} more column{"s" if n != 1 else ""}</summary>'
        f'<dl class="kv">{_fields(view.rest)}</dl></details>'
    )


def _card(g: _Gallery, runs: Sequence[RunRecord]) -> str:
    data = g.data
    first = runs[0]
    by_step = latest_per_step(runs)
    ordered = [by_step[s] for s in data.step_ids if s in by_step]
    ordered += [r for s, r in by_step.items() if s not in data.step_ids]
    states = {r.state for r in ordered}
    worst = next((s for s in _SEVERITY if s in states), RunState.PENDING)
    images: list[_Image] = []
    steps: list[str] = []
    for rec in ordered:
        g.counts[rec.state] = g.counts.get(rec.state, 0) + 1
        add_credits(g.credits, rec)
        media = _media(g, rec.step_id, rec.outputs, rec.downloads)
        images += media.images
        steps.append(_step_html(g, rec, media))
    view = row_view(
        first.row,
        row_number=first.row_number,
        key=first.row_key,
        key_column=data.key_column,
        columns=data.columns,
        template_columns=data.template_columns,
    )
    search = " ".join([view.title, *first.row.values(), *first.axes.values()]).lower()
    axes = axes_label(first.axes)
    axes_html = f' <span class="axes" title="{_e(axes)}">{_e(axes)}</span>' if axes else ""
    return (
        f'<article class="card w-{worst.value}" data-states="{_e(" ".join(sorted(s.value for s in states)))}" '
        f'data-text="{_e(_cap(search, 2000))}">{_thumbs(images, worst)}'
        f'<div class="body"><h2><span class="rn">#{first.row_number}</span> '
        f'<span class="ttl" title="{_e(_cap(view.title, _HOVER_CAP))}">{_e(_cap(view.title, _VALUE_CAP))}</span>'
        f'{axes_html}</h2><div class="steps">{"".join(steps)}</div>{_row_html(view)}</div></article>\n'
    )


def write_html(data: ReportInput, out: Path) -> None:
    """Write the gallery. Cards stream into a spool first because the counts on top need every run."""
    g = _Gallery(data, out.resolve().parent, data.files_dir.resolve())
    items = 0
    with tempfile.SpooledTemporaryFile(_SPOOL_BYTES, mode="w+", encoding="utf-8") as body:
        for runs in iter_items(data.records):
            items += 1
            body.write(_card(g, runs))
        with atomic_text_writer(out, newline="\n") as fh:
            _write_page(fh, g, items, body)


def _images_note(g: _Gallery) -> str:
    """Where the page's images come from, so nobody moves a page that would lose them without knowing."""
    notes = []
    if g.local and not g.data.embed:
        rel = os.path.relpath(g.files_dir, g.report_dir)
        notes.append(
            f'Images are links relative to this page, into <code title="{_e(g.files_dir)}">{_e(rel)}/</code>: '
            "keep the page beside that folder, or write it with <code>--embed</code> to move or upload it."
        )
    elif g.embedded:
        notes.append(f"{g.embedded} images are embedded: this page can be moved or uploaded as it is.")
    if g.not_embedded:
        notes.append(f"{g.not_embedded} images could not be embedded (missing, or over {EMBED_MAX_BYTES >> 20} MiB).")
    if g.remote:
        notes.append(f"{g.remote} images load from their remote URLs.")
    return f'<p class="imgnote">{" ".join(notes)}</p>' if notes else ""


def _write_page(fh: IO[str], g: _Gallery, items: int, body: IO[str]) -> None:
    data, counts = g.data, g.counts
    runs = sum(counts.values())
    name = _e(data.pipeline_name)
    buttons = [f'<button class="on" data-filter="all">All <b>{items}</b></button>']
    for state in STATE_ORDER:
        if counts.get(state):
            buttons.append(
                f'<button class="f-{state.value}" data-filter="{state.value}">'
                f"<i></i>{_e(STATE_LABELS[state])} <b>{counts[state]}</b></button>"
            )
    spent = credits_line(g.credits)
    spent_html = f'<p class="sub">{_e(spent)}</p>' if spent else ""
    done = counts.get(RunState.COMPLETED, 0)
    pct = f"{100 * done / runs:.0f}%" if runs else "–"
    fh.write(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{name} · lamina-batch gallery</title><style>{GALLERY_CSS}</style></head>\n"
        f'<body data-pipeline="{name}">\n'
        f'<header><div class="top"><div><p class="kicker">lamina-batch gallery</p><h1>{name}</h1>'
        f'<p class="sub">{items} rows · {runs} runs · steps: {_e(", ".join(data.step_ids))}</p>'
        f"{spent_html}{_images_note(g)}</div>"
        f'<div class="score"><b>{pct}</b><span>completed</span></div></div>'
        f'<nav>{"".join(buttons)}<select id="vf" aria-label="Filter by verdict">'
        '<option value="">Any verdict</option><option value="unreviewed">Unreviewed</option>'
        f'<option value="approved">Approved ({g.verdict_counts.get("approved", 0)})</option>'
        f'<option value="rejected">Rejected ({g.verdict_counts.get("rejected", 0)})</option></select>'
        '<button type="button" id="export" class="export" disabled>Export verdicts <b>0</b></button>'
        '<input type="search" id="q" placeholder="Search rows…" aria-label="Search rows"></nav></header>\n'
        '<main id="grid">\n'
    )
    body.seek(0)
    shutil.copyfileobj(body, fh)
    empty = '<p class="empty">No runs in this manifest yet.</p>' if items == 0 else ""
    fh.write(
        f'</main>{empty}<p class="empty" id="none" hidden>No rows match.</p>\n'
        "<footer>Generated by lamina-batch from the run manifest. Approve or reject images here, then "
        "<b>Export verdicts</b> and record them with <code>lamina-batch review PIPELINE --import verdicts.json"
        f"</code>.</footer>\n<script>{GALLERY_JS}</script>\n</body></html>\n"
    )
