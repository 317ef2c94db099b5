"""The HTML gallery: one self-contained page (inline CSS/JS, no network assets) with a card per matrix item,
thumbnails of its images, its row values, per-step status and errors, and status filters. Everything escaped."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import IO
from urllib.parse import quote

from lamina_batch.atomic import atomic_text_writer
from lamina_batch.models import DownloadRecord, RunRecord, RunState
from lamina_batch.reports.common import (
    STATE_LABELS,
    STATE_ORDER,
    ReportInput,
    axes_label,
    error_text,
    is_web_url,
    iter_items,
    latest_per_step,
    output_text,
    row_label,
)

_IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif", ".bmp", ".svg"})
_SPOOL_BYTES = 4 << 20
_TEXT_CAP = 500
_ROW_VALUE_CAP = 300
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


def _download_href(base_dir: Path, report_dir: Path, d: DownloadRecord) -> str:
    # Relative to where the report lives, so the folder can be zipped and opened anywhere.
    rel = os.path.relpath(base_dir / d.path, report_dir)
    return quote(Path(rel).as_posix(), safe="/._-~")


def _is_image_download(rec: RunRecord, d: DownloadRecord) -> bool:
    for o in rec.outputs:
        if o.label == d.label and o.type:
            return o.type == "image"
    return Path(d.path).suffix.lower() in _IMAGE_EXTS


class _Media:
    """What a card shows for one run: images (href, caption) and other links/texts."""

    def __init__(self) -> None:
        self.images: list[tuple[str, str]] = []
        self.links: list[tuple[str, str]] = []
        self.texts: list[tuple[str, str]] = []


def _media(rec: RunRecord, base_dir: Path, report_dir: Path) -> _Media:
    media = _Media()
    downloaded = {d.output_index for d in rec.downloads}
    downloaded_labels = {d.label for d in rec.downloads}
    for d in rec.downloads:
        href = _download_href(base_dir, report_dir, d)
        caption = f"{rec.step_id} · {d.label}"
        (media.images if _is_image_download(rec, d) else media.links).append((href, caption))
    for idx, o in enumerate(rec.outputs):
        if o.value is None or o.status == "error":
            continue
        if idx in downloaded or (o.label in downloaded_labels and is_web_url(o.value)):
            continue
        caption = f"{rec.step_id} · {o.label}"
        if is_web_url(o.value):
            (media.images if o.type == "image" else media.links).append((str(o.value), caption))
        else:
            media.texts.append((o.label, output_text(o.value)))
    return media


def _card(runs: Sequence[RunRecord], step_ids: Sequence[str], base_dir: Path, report_dir: Path) -> str:
    first = runs[0]
    by_step = latest_per_step(runs)
    ordered = [by_step[s] for s in step_ids if s in by_step]
    ordered += [r for s, r in by_step.items() if s not in step_ids]
    states = {r.state for r in ordered}
    worst = next((s for s in _SEVERITY if s in states), RunState.PENDING)

    images: list[tuple[str, str]] = []
    step_html: list[str] = []
    for rec in ordered:
        media = _media(rec, base_dir, report_dir)
        images += media.images
        title = " · ".join(
            x
            for x in (
                f"app {rec.app_id}",
                f"run {rec.remote_id}" if rec.remote_id else "",
                f"attempts {rec.attempts}",
                f"finished {rec.finished_at}" if rec.finished_at else "",
            )
            if x
        )
        parts = [
            f'<div class="step"><span class="step-id">{_e(rec.step_id)}</span>'
            f'<span class="badge s-{rec.state.value}" title="{_e(title)}">{_e(STATE_LABELS[rec.state])}</span>'
        ]
        for href, caption in media.links:
            parts.append(f'<a class="file" href="{_e(href)}">{_e(caption.split(" · ", 1)[-1])}</a>')
        parts.append("</div>")
        err = error_text(rec)
        if err:
            parts.append(f'<p class="err">{_e(_cap(err, _TEXT_CAP))}</p>')
        for label, text in media.texts:
            parts.append(f'<p class="out"><span class="lbl">{_e(label)}</span> {_e(_cap(text, _TEXT_CAP))}</p>')
        step_html.append("".join(parts))

    if images:
        thumbs = "".join(
            f'<a class="thumb" href="{_e(href)}" target="_blank" rel="noopener" title="{_e(caption)}">'
            f'<img loading="lazy" decoding="async" src="{_e(href)}" alt="{_e(caption)}" '
            f'onload="this.dataset.loaded=1" onerror="this.dataset.loaded=0;this.parentNode.classList.add(\'broken\')">'
            f"<span>{_e(caption.split(' · ', 1)[0])}</span></a>"
            for href, caption in images
        )
        media_html = f'<div class="thumbs n{min(len(images), 4)}">{thumbs}</div>'
    else:
        media_html = f'<div class="thumbs none"><span>no image · {_e(STATE_LABELS[worst])}</span></div>'

    row_values = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_cap(v, _ROW_VALUE_CAP))}</dd>" for k, v in first.row.items())
    search_text = " ".join([row_label(first), *first.row.values(), *first.axes.values()]).lower()
    axes = axes_label(first.axes)
    return (
        f'<article class="card w-{worst.value}" data-states="{_e(" ".join(sorted(s.value for s in states)))}" '
        f'data-text="{_e(_cap(search_text, 2000))}">'
        f"{media_html}"
        f'<div class="body"><h2><span class="rn">#{first.row_number}</span> {_e(row_label(first))}'
        f"{f' <span class=axes>{_e(axes)}</span>' if axes else ''}</h2>"
        f'<div class="steps">{"".join(step_html)}</div>'
        f'<dl class="row">{row_values}</dl></div></article>\n'
    )


def write_html(data: ReportInput, out: Path) -> None:
    """Write the gallery. Cards stream into a spool first because the counts on top need every run."""
    report_dir = out.resolve().parent
    base_dir = data.base_dir.resolve()
    counts: dict[RunState, int] = {}
    items = 0
    with tempfile.SpooledTemporaryFile(_SPOOL_BYTES, mode="w+", encoding="utf-8") as body:
        for runs in iter_items(data.records):
            items += 1
            for rec in latest_per_step(runs).values():
                counts[rec.state] = counts.get(rec.state, 0) + 1
            body.write(_card(runs, data.step_ids, base_dir, report_dir))
        with atomic_text_writer(out, newline="\n") as fh:
            _write_page(fh, data, counts, items, body)


def _write_page(fh: IO[str], data: ReportInput, counts: dict[RunState, int], items: int, body: IO[str]) -> None:
    runs = sum(counts.values())
    name = _e(data.pipeline_name)
    buttons = [f'<button class="on" data-filter="all">All <b>{items}</b></button>']
    for state in STATE_ORDER:
        if counts.get(state):
            buttons.append(
                f'<button class="f-{state.value}" data-filter="{state.value}">'
                f"<i></i>{_e(STATE_LABELS[state])} <b>{counts[state]}</b></button>"
            )
    done = counts.get(RunState.COMPLETED, 0)
    pct = f"{100 * done / runs:.0f}%" if runs else "–"
    fh.write(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{name} · lamina-batch gallery</title><style>{_CSS}</style></head>\n<body>\n"
        f'<header><div class="top"><div><p class="kicker">lamina-batch gallery</p><h1>{name}</h1>'
        f'<p class="sub">{items} rows · {runs} runs · steps: {_e(", ".join(data.step_ids))}</p></div>'
        f'<div class="score"><b>{pct}</b><span>completed</span></div></div>'
        f'<nav>{"".join(buttons)}<input type="search" id="q" placeholder="Search rows…" '
        'aria-label="Search rows"></nav></header>\n<main id="grid">\n'
    )
    body.seek(0)
    shutil.copyfileobj(body, fh)
    empty = '<p class="empty">No runs in this manifest yet.</p>' if items == 0 else ""
    fh.write(
        f'</main>{empty}<p class="empty" id="none" hidden>No rows match.</p>\n'
        f"<footer>Generated by lamina-batch from the run manifest.</footer>\n<script>{_JS}</script>\n"
        "</body></html>\n"
    )


_CSS = """
:root{--bg:#f4f5f7;--card:#fff;--ink:#1b1f24;--muted:#667085;--line:#e4e7ec;
--ok:#12b76a;--ok-bg:#e7f8ef;--ok-ink:#05603a;--bad:#f04438;--bad-bg:#fdecea;--bad-ink:#912018;
--to:#f79009;--to-bg:#fef4e6;--to-ink:#93370d;--cx:#98a2b3;--cx-bg:#f2f4f7;--cx-ink:#344054;
--un:#9e77ed;--un-bg:#f4f0ff;--un-ink:#53389e;--run:#2e90fa;--run-bg:#eaf3ff;--run-ink:#1849a9;
--pe:#94a3b8;--pe-bg:#f1f5f9;--pe-ink:#334155}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.94);backdrop-filter:blur(6px);
border-bottom:1px solid var(--line);padding:18px 28px 14px}
.top{display:flex;justify-content:space-between;align-items:flex-end;gap:16px}
.kicker{margin:0;font-size:11px;letter-spacing:.08em;text-transform:uppercase;color:var(--muted);font-weight:600}
h1{margin:2px 0 2px;font-size:24px;letter-spacing:-.01em}
.sub{margin:0;color:var(--muted)}
.score{text-align:right}.score b{display:block;font-size:28px;line-height:1;color:var(--ok-ink)}
.score span{font-size:12px;color:var(--muted)}
nav{display:flex;flex-wrap:wrap;gap:8px;margin-top:14px;align-items:center}
nav button{font:inherit;font-size:13px;border:1px solid var(--line);background:#fff;border-radius:999px;
padding:5px 12px;cursor:pointer;color:var(--ink);display:inline-flex;align-items:center;gap:6px}
nav button b{font-weight:600;color:var(--muted)}
nav button i{width:8px;height:8px;border-radius:50%;background:var(--pe)}
nav button:hover{border-color:#c3c9d3}
nav button.on{background:var(--ink);color:#fff;border-color:var(--ink)}nav button.on b{color:#d0d5dd}
#q{margin-left:auto;font:inherit;padding:6px 12px;border:1px solid var(--line);border-radius:8px;min-width:220px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:18px;padding:22px 28px}
.card{background:var(--card);border-radius:12px;overflow:hidden;border:1px solid var(--line);
box-shadow:0 1px 2px rgba(16,24,40,.05);display:flex;flex-direction:column;border-top:3px solid var(--pe)}
.card:hover{box-shadow:0 6px 18px rgba(16,24,40,.10)}
.thumbs{display:grid;gap:2px;background:var(--line);aspect-ratio:4/3}
.thumbs.n2,.thumbs.n4{grid-template-columns:1fr 1fr}.thumbs.n3{grid-template-columns:1fr 1fr 1fr}
.thumbs.n4{grid-template-rows:1fr 1fr}
.thumb{position:relative;display:block;background:#eef0f3;overflow:hidden;min-height:0}
.thumb img{width:100%;height:100%;object-fit:cover;display:block}
.thumb span{position:absolute;left:6px;bottom:6px;background:rgba(16,24,40,.62);color:#fff;font-size:11px;
padding:1px 7px;border-radius:999px;max-width:calc(100% - 12px);overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}
.thumb.broken img{visibility:hidden}.thumb.broken::after{content:"image unavailable";position:absolute;
inset:0;display:grid;place-items:center;color:var(--muted);font-size:12px}
.thumbs.none{display:grid;place-items:center;color:var(--muted);font-size:13px;
background:repeating-linear-gradient(45deg,#f6f7f9,#f6f7f9 10px,#eff1f4 10px,#eff1f4 20px)}
.body{padding:12px 14px 14px}
h2{margin:0 0 8px;font-size:15px;overflow-wrap:anywhere}
.rn{color:var(--muted);font-weight:500;font-size:12px}.axes{font-weight:500;color:var(--muted);font-size:12px}
.step{display:flex;align-items:center;gap:8px;margin:4px 0;flex-wrap:wrap}
.step-id{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#475467;min-width:56px}
.badge{font-size:11.5px;font-weight:600;padding:1px 9px;border-radius:999px;background:var(--pe-bg);color:var(--pe-ink)}
.file{font-size:12px}
.err{margin:4px 0 6px;padding:6px 9px;border-radius:6px;background:var(--bad-bg);color:var(--bad-ink);
font-size:12.5px;overflow-wrap:anywhere;white-space:pre-wrap}
.out{margin:4px 0;font-size:12.5px;overflow-wrap:anywhere;color:#344054}.lbl{color:var(--muted)}
dl.row{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:10px 0 0;padding-top:10px;
border-top:1px dashed var(--line);font-size:12.5px}
dl.row dt{color:var(--muted)}dl.row dd{margin:0;overflow-wrap:anywhere}
.empty{text-align:center;color:var(--muted);padding:40px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:8px 0 28px}
.s-completed{background:var(--ok-bg);color:var(--ok-ink)}.f-completed i{background:var(--ok)}
.s-failed{background:var(--bad-bg);color:var(--bad-ink)}.f-failed i{background:var(--bad)}
.s-timed_out{background:var(--to-bg);color:var(--to-ink)}.f-timed_out i{background:var(--to)}
.s-cancelled{background:var(--cx-bg);color:var(--cx-ink)}.f-cancelled i{background:var(--cx)}
.s-unknown{background:var(--un-bg);color:var(--un-ink)}.f-unknown i{background:var(--un)}
.s-running,.s-submitting{background:var(--run-bg);color:var(--run-ink)}
.f-running i,.f-submitting i{background:var(--run)}
.card.w-completed{border-top-color:var(--ok)}.card.w-failed{border-top-color:var(--bad)}
.card.w-timed_out{border-top-color:var(--to)}.card.w-cancelled{border-top-color:var(--cx)}
.card.w-unknown{border-top-color:var(--un)}.card.w-running,.card.w-submitting{border-top-color:var(--run)}
.card[hidden]{display:none}
@media (max-width:600px){header,main{padding-left:12px;padding-right:12px}#q{min-width:0;width:100%}}
"""

_JS = """
(function(){
var state="all",q=document.getElementById("q"),cards=document.querySelectorAll(".card"),
none=document.getElementById("none");
function apply(){var t=q.value.trim().toLowerCase(),shown=0;
for(var i=0;i<cards.length;i++){var c=cards[i];
var ok=(state==="all"||c.getAttribute("data-states").split(" ").indexOf(state)>=0)&&
(!t||c.getAttribute("data-text").indexOf(t)>=0);c.hidden=!ok;if(ok)shown++;}
none.hidden=shown>0||cards.length===0;}
document.querySelectorAll("nav button").forEach(function(b){b.addEventListener("click",function(){
document.querySelectorAll("nav button").forEach(function(x){x.classList.remove("on");});
b.classList.add("on");state=b.getAttribute("data-filter");apply();
if(history.replaceState)history.replaceState(null,"",state==="all"?location.pathname:"#"+state);});});
q.addEventListener("input",apply);
var pre=document.querySelector('nav button[data-filter="'+location.hash.slice(1).replace(/[^a-z_]/g,"")+'"]');
if(pre)pre.click();
})();
"""
