"""Tests for lamina_batch.reports: every format from a mixed manifest, escaping, and atomic writes."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lamina_batch.errors import ConfigError
from lamina_batch.models import DownloadRecord, RunOutput, RunRecord, RunState
from lamina_batch.reports import (
    FORMATS,
    ReportInput,
    append_github_summary,
    escape_cell,
    render_markdown,
    write_csv,
    write_html,
    write_jsonl,
    write_junit,
    write_markdown,
    write_report,
)
from lamina_batch.reports.common import PastAttempt, iter_items
from lamina_batch.verdicts import Verdict

STEPS = ("hero", "banner")


def rec(
    step: str,
    row_number: int,
    state: RunState,
    *,
    row: dict[str, str] | None = None,
    key: str | None = None,
    axes: dict[str, str] | None = None,
    outputs: Sequence[RunOutput] = (),
    downloads: Sequence[DownloadRecord] = (),
    error: str | None = None,
    error_code: str | None = None,
    remote_id: str | None = None,
    updated_at: str = "2024-05-01T10:00:00Z",
    duration: float | None = None,
) -> RunRecord:
    axes = axes or {}
    row = row if row is not None else {"sku": key or f"S{row_number}", "name": f"Item {row_number}"}
    item_id = f"item-{row_number}-" + "-".join(f"{k}{v}" for k, v in axes.items())
    return RunRecord(
        identity=f"id-{step}-{item_id}-{updated_at}",
        step_id=step,
        app_id="app_7Hk2" if step == "hero" else "app_9Qx1",
        row_number=row_number,
        row_key=key,
        item_id=item_id,
        row=row,
        axes=axes,
        inputs={"Prompt": f"photo of {row.get('name', '')}"},
        output_labels=None,
        needs={} if step == "hero" else {"hero": f"id-hero-{item_id}"},
        state=state,
        remote_id=remote_id,
        attempts=1 if remote_id else 0,
        created_at="2024-05-01T09:00:00Z",
        updated_at=updated_at,
        outputs=tuple(outputs),
        error=error,
        error_code=error_code,
        downloads=tuple(downloads),
        remote_duration=duration,
    )


def img(url: str, label: str = "Hero Image") -> RunOutput:
    return RunOutput(id="n1", label=label, type="image", value=url, status="completed")


def mixed_records() -> list[RunRecord]:
    """A manifest with completed, failed, timed out, cancelled, unknown, running and pending runs."""
    a1 = {"sku": "A1", "name": "Mug", "colour": "blue"}
    b2 = {"sku": "B2", "name": '=HYPERLINK("http://evil")', "colour": 'red, "dark"'}
    c3 = {"sku": "C3", "name": "<script>alert(1)</script>", "colour": "grün\nline"}
    dl = DownloadRecord(0, "Hero Image", "https://cdn/x/hero.png", "out/A1/hero-1-1.png", 10, "ab" * 32)
    return [
        rec(
            "hero",
            1,
            RunState.COMPLETED,
            row=a1,
            key="A1",
            axes={"aspect": "1:1"},
            outputs=[img("https://cdn/x/hero.png")],
            downloads=[dl],
            remote_id="run_1",
            duration=2.5,
        ),
        rec(
            "hero",
            1,
            RunState.FAILED,
            row=a1,
            key="A1",
            axes={"aspect": "16:9"},
            error="Prompt too long",
            error_code="VALIDATION_ERROR",
            remote_id="run_2",
            duration=1.0,
        ),
        rec(
            "banner",
            1,
            RunState.COMPLETED,
            row=a1,
            key="A1",
            axes={"aspect": "1:1"},
            outputs=[img("https://cdn/x/b1.png", "Banner"), img("https://cdn/x/b2.png", "Banner 2")],
            remote_id="run_3",
            duration=3.0,
        ),
        rec("banner", 1, RunState.PENDING, row=a1, key="A1", axes={"aspect": "16:9"}),
        rec(
            "hero",
            2,
            RunState.TIMED_OUT,
            row=b2,
            key="B2",
            axes={"aspect": "1:1"},
            error="no result after 30m",
            remote_id="run_4",
        ),
        rec(
            "hero",
            2,
            RunState.COMPLETED,
            row=b2,
            key="B2",
            axes={"aspect": "16:9"},
            outputs=[img("javascript:alert(1)")],
            remote_id="run_5",
        ),
        rec("banner", 2, RunState.CANCELLED, row=b2, key="B2", axes={"aspect": "1:1"}, remote_id="run_6"),
        rec("banner", 2, RunState.RUNNING, row=b2, key="B2", axes={"aspect": "16:9"}, remote_id="run_7"),
        rec(
            "hero",
            3,
            RunState.UNKNOWN,
            row=c3,
            key="C3",
            axes={"aspect": "1:1"},
            error="start reply lost; 2 candidate runs",
        ),
        rec("hero", 3, RunState.SUBMITTING, row=c3, key="C3", axes={"aspect": "16:9"}),
    ]


def data(records: Any, base_dir: Path, name: str = "catalogue-hero") -> ReportInput:
    return ReportInput(pipeline_name=name, step_ids=STEPS, records=records, base_dir=base_dir)


def one_shot(records: list[RunRecord]) -> Iterator[RunRecord]:
    yield from records


# ----------------------------------------------------------------------------------------------- common


def test_iter_items_groups_interleaved_axes_of_one_row() -> None:
    """Runs of one row's axes combinations may interleave; each item still comes out as one group."""
    groups = list(iter_items(one_shot(mixed_records())))
    assert [len(g) for g in groups] == [2, 2, 2, 2, 1, 1]
    for g in groups:
        assert len({r.item_id for r in g}) == 1


# ----------------------------------------------------------------------------------------------- csv


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_csv_one_line_per_item_with_step_columns(tmp_path: Path) -> None:
    """CSV: row columns, axes, then per step status/output/file/run_id/credits/verdict/error, one line per item."""
    out = tmp_path / "results.csv"
    write_csv(data(one_shot(mixed_records()), tmp_path), out)
    with out.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == [
        "sku", "name", "colour", "aspect",
        "hero.status", "hero.output", "hero.file", "hero.run_id", "hero.credits", "hero.verdict", "hero.error",
        "banner.status", "banner.output", "banner.file", "banner.run_id", "banner.credits", "banner.verdict",
        "banner.error",
    ]  # fmt: skip
    rows = read_csv(out)
    assert len(rows) == 6
    first = rows[0]
    assert first["sku"] == "A1"
    assert first["aspect"] == "1:1"
    assert first["hero.status"] == "completed"
    assert first["hero.file"] == "out/A1/hero-1-1.png"
    assert first["hero.run_id"] == "run_1"
    assert first["banner.output"] == "https://cdn/x/b1.png | https://cdn/x/b2.png"
    assert rows[1]["hero.status"] == "failed"
    assert rows[1]["hero.error"] == "Prompt too long"
    assert rows[1]["banner.status"] == "pending"
    assert rows[4]["hero.status"] == "unknown"
    assert rows[4]["banner.status"] == ""  # no banner run planned for that item


def test_csv_hostile_cells_round_trip(tmp_path: Path) -> None:
    """Formulas are neutralised with a quote; quotes, commas, newlines and unicode survive a csv round trip."""
    hostile = {
        "f_eq": "=1+2",
        "f_plus": "+SUM(A1)",
        "f_minus": "-5",
        "f_at": "@cmd",
        "f_tab": "\tx",
        "f_cr": "\rx",
        "quotes": 'say "hi", ok',
        "newline": "a\nb\r\nc",
        "unicode": "Ünïcödé 😀 漢字",
        "plain": "1:1",
    }
    records = [rec("hero", 1, RunState.FAILED, row=hostile, error="=cmd|' /C calc'!A0")]
    out = tmp_path / "r.csv"
    write_csv(data(records, tmp_path), out)
    (row,) = read_csv(out)
    for k, v in hostile.items():
        expected = "'" + v if k.startswith("f_") else v
        assert row[k] == expected, k
    assert row["hero.error"] == "'=cmd|' /C calc'!A0"


def test_escape_cell_only_touches_formula_prefixes() -> None:
    """Only cells starting with = + - @ tab or CR get the quote prefix."""
    assert escape_cell("=A1") == "'=A1"
    assert escape_cell("a=b") == "a=b"
    assert escape_cell("") == ""
    assert escape_cell("'quoted") == "'quoted"


def test_csv_uses_latest_of_duplicate_step_runs(tmp_path: Path) -> None:
    """When the manifest holds an older run of the same item and step, the CSV shows the newest one."""
    old = rec("hero", 1, RunState.FAILED, error="old", updated_at="2024-01-01T00:00:00Z")
    new = rec("hero", 1, RunState.COMPLETED, updated_at="2024-06-01T00:00:00Z", remote_id="run_new")
    out = tmp_path / "r.csv"
    write_csv(data([new, old], tmp_path), out)
    (row,) = read_csv(out)
    assert row["hero.status"] == "completed"
    assert row["hero.run_id"] == "run_new"


# ----------------------------------------------------------------------------------------------- jsonl


def test_jsonl_one_valid_object_per_run(tmp_path: Path) -> None:
    """JSONL: every line parses, one per run, with identity, state, outputs and downloads."""
    records = mixed_records()
    out = tmp_path / "runs.jsonl"
    write_jsonl(data(one_shot(records), tmp_path), out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(records)
    objs = [json.loads(line) for line in lines]
    assert [o["identity"] for o in objs] == [r.identity for r in records]
    first = objs[0]
    assert first["state"] == "completed"
    assert first["step"] == "hero"
    assert first["row"] == {"sku": "A1", "name": "Mug", "colour": "blue"}
    assert first["axes"] == {"aspect": "1:1"}
    assert first["downloads"][0]["path"] == "out/A1/hero-1-1.png"
    assert first["outputs"][0]["value"] == "https://cdn/x/hero.png"
    assert objs[1]["error_code"] == "VALIDATION_ERROR"
    assert {"remote_id", "attempts", "inputs", "request_id", "created_at", "finished_at"} <= set(first)


# ----------------------------------------------------------------------------------------------- junit


def test_junit_counts_and_shape(tmp_path: Path) -> None:
    """JUnit: a suite per step with correct counts; failure/error/skipped children per state."""
    out = tmp_path / "junit.xml"
    write_junit(data(one_shot(mixed_records()), tmp_path), out)
    root = ET.parse(out).getroot()  # noqa: S314 - our own freshly written file
    assert root.tag == "testsuites"
    assert root.get("tests") == "10"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["hero", "banner"]
    hero, banner = suites["hero"], suites["banner"]
    assert (hero.get("tests"), hero.get("failures"), hero.get("errors"), hero.get("skipped")) == (
        "6", "2", "1", "1",
    )  # fmt: skip
    assert (banner.get("tests"), banner.get("failures"), banner.get("errors"), banner.get("skipped")) == (
        "4", "1", "0", "2",
    )  # fmt: skip
    assert hero.get("time") == "3.500"
    cases = hero.findall("testcase")
    assert cases[0].get("classname") == "catalogue-hero.hero"
    assert cases[0].get("name") == "A1 [aspect=1:1]"
    assert len(list(cases[0])) == 0  # completed: no child
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("type") == "failed"
    assert failure.get("message") == "Prompt too long"
    assert cases[2].find("failure") is not None  # timed out
    assert cases[2].find("failure").get("type") == "timed_out"  # type: ignore[union-attr]
    assert cases[4].find("error") is not None  # unknown
    assert cases[5].find("skipped") is not None  # submitting


def test_junit_survives_control_characters_and_markup(tmp_path: Path) -> None:
    """Error text with XML-illegal control chars and markup still yields parseable XML with the text kept."""
    records = [
        rec("hero", 1, RunState.FAILED, key='k<&>"', error='bad \x00\x1b[31m <tag> & "q"'),
    ]
    out = tmp_path / "junit.xml"
    write_junit(data(records, tmp_path, name="p\x07ipe"), out)
    root = ET.parse(out).getroot()  # noqa: S314 - our own freshly written file
    case = root.find("testsuite/testcase")
    assert case is not None
    assert case.get("name") == 'k<&>"'
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == 'bad [31m <tag> & "q"'
    assert root.get("name") == "pipe"


# ----------------------------------------------------------------------------------------------- html


def test_html_cards_images_and_escaping(tmp_path: Path) -> None:
    """HTML: one card per item, relative links to downloads, output URLs otherwise, everything escaped."""
    report_dir = tmp_path / "reports" / "html"
    out = report_dir / "gallery.html"
    write_html(data(one_shot(mixed_records()), tmp_path), out)
    page = out.read_text(encoding="utf-8")
    assert page.count('<article class="card') == 6
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'src="../../out/A1/hero-1-1.png"' in page  # relative to the report, not the base dir
    assert 'src="https://cdn/x/b1.png"' in page
    assert 'src="https://cdn/x/hero.png"' not in page  # downloaded: the local file is used instead
    assert 'src="javascript:' not in page
    assert 'href="javascript:' not in page
    assert page.count('loading="lazy"') == 3
    assert "Prompt too long" in page
    assert "http://" not in page.replace("http://evil", "")  # no network assets
    assert 'data-filter="timed_out"' in page
    assert 'data-filter="running"' in page


def test_html_is_self_contained_and_counts_runs(tmp_path: Path) -> None:
    """HTML: inline CSS/JS only (no external src/href to stylesheets or scripts) and state counts on top."""
    out = tmp_path / "g.html"
    write_html(data(mixed_records(), tmp_path), out)
    page = out.read_text(encoding="utf-8")
    assert "<link" not in page
    assert "<script src" not in page
    assert 'data-filter="completed"><i></i>completed <b>3</b>' in page
    assert 'data-filter="all">All <b>6</b>' in page


def test_html_many_rows(tmp_path: Path) -> None:
    """Thousands of rows produce a complete page of reasonable size."""
    records = (
        rec("hero", n, RunState.COMPLETED, outputs=[img(f"https://cdn/{n}.png")], remote_id=f"r{n}")
        for n in range(1, 3001)
    )
    out = tmp_path / "big.html"
    write_html(data(records, tmp_path), out)
    page = out.read_text(encoding="utf-8")
    assert page.count('<article class="card') == 3000
    assert page.rstrip().endswith("</html>")
    assert len(page) < 3000 * 2000


# ----------------------------------------------------------------------------------------------- markdown


def test_markdown_tables(tmp_path: Path) -> None:
    """Markdown: per-step counts by state and failures with row and reason."""
    text = render_markdown(data(mixed_records(), tmp_path))
    lines = text.splitlines()
    assert lines[0] == "## lamina-batch: catalogue-hero"
    head = next(line for line in lines if line.startswith("| step | runs"))
    assert head == (
        "| step | runs | completed | failed | timed out | cancelled | unknown | running | submitting | pending |"
    )
    assert "| hero | 6 | 2 | 1 | 1 | 0 | 1 | 0 | 1 | 0 |" in lines
    assert "| banner | 4 | 1 | 0 | 0 | 1 | 0 | 1 | 0 | 1 |" in lines
    assert "### Failures (4)" in lines
    assert "| hero | A1 [aspect=16:9] | failed | Prompt too long |" in lines
    assert "| banner | B2 [aspect=1:1] | cancelled | cancelled |" in lines


def test_markdown_caps_failures_and_escapes(tmp_path: Path) -> None:
    """More than the cap: 50 listed then 'and N more'; pipes, newlines and HTML cannot break the table."""
    records = [rec("hero", n, RunState.FAILED, error="a | b\nc <img src=x>") for n in range(1, 61)]
    out = tmp_path / "summary.md"
    write_markdown(data(records, tmp_path), out)
    text = out.read_text(encoding="utf-8")
    assert "### Failures (60)" in text
    assert text.count("| hero | row ") == 50
    assert "… and 10 more." in text
    assert "| hero | row 1 | failed | a \\| b c &lt;img src=x&gt; |" in text


def test_append_github_summary(tmp_path: Path) -> None:
    """The summary is appended to $GITHUB_STEP_SUMMARY when set, and nothing happens when it is not."""
    target = tmp_path / "summary.md"
    target.write_text("earlier step\n", encoding="utf-8")
    assert append_github_summary("## mine", {"GITHUB_STEP_SUMMARY": str(target)}) == target
    assert target.read_text(encoding="utf-8") == "earlier step\n## mine\n"
    assert append_github_summary("## mine", {}) is None
    assert append_github_summary("## mine", {"GITHUB_STEP_SUMMARY": ""}) is None


# ----------------------------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_report_every_format(tmp_path: Path, fmt: str) -> None:
    """write_report writes each format from the mixed records, leaving only the report in its folder."""
    out = tmp_path / "o" / f"report.{fmt}"
    write_report(fmt, data(one_shot(mixed_records()), tmp_path), out)
    assert out.stat().st_size > 100
    assert [p.name for p in out.parent.iterdir()] == [out.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_report_empty_manifest(tmp_path: Path, fmt: str) -> None:
    """An empty manifest still gives a well-formed report."""
    out = tmp_path / f"empty.{fmt}"
    write_report(fmt, data([], tmp_path), out)
    if fmt == "xlsx":  # a zip; test_reports_xlsx.py reads the workbook back cell by cell
        assert out.read_bytes().startswith(b"PK")
        return
    text = out.read_text(encoding="utf-8")
    if fmt == "junit":
        root = ET.fromstring(text)  # noqa: S314 - our own freshly written file
        assert root.get("tests") == "0"
        assert len(root.findall("testsuite")) == 2
    elif fmt == "csv":
        assert text.startswith("hero.status,")
    elif fmt == "jsonl":
        assert text == ""
    elif fmt == "html":
        assert "No runs in this manifest yet." in text
    else:
        assert "No failed" in text


def test_write_report_unknown_format(tmp_path: Path) -> None:
    """An unknown format is a configuration error naming the valid ones."""
    with pytest.raises(ConfigError, match="one of csv, jsonl, junit, html, markdown"):
        write_report("pdf", data([], tmp_path), tmp_path / "x.pdf")


@pytest.mark.parametrize("fmt", FORMATS)
def test_atomic_write_leaves_old_file_and_no_temp_on_error(tmp_path: Path, fmt: str) -> None:
    """A failure while writing keeps the previous report intact and leaves no temp file behind."""
    out = tmp_path / f"report.{fmt}"
    out.write_text("previous", encoding="utf-8")

    def exploding() -> Iterator[RunRecord]:
        yield from mixed_records()[:3]
        raise RuntimeError("manifest went away")

    with pytest.raises(RuntimeError, match="manifest went away"):
        write_report(fmt, data(exploding(), tmp_path), out)
    assert out.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


# ----------------------------------------------------------------------------------------------- html: wide
# sheets, embedding, verdicts and attempts


def png_file(path: Path, payload: bytes = b"\x89PNG\r\n\x1a\nfake") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def downloaded(step: str, n: int, rel: str, **kw: Any) -> RunRecord:
    url = f"https://cdn/{n}/{step}.png"
    return rec(
        step,
        n,
        RunState.COMPLETED,
        key=f"K{n}",
        outputs=[img(url)],
        downloads=[DownloadRecord(0, "Hero Image", url, rel, 4, "0" * 64)],
        remote_id=f"r{n}",
        **kw,
    )


def test_html_images_resolve_against_the_folder_the_run_wrote_to(tmp_path: Path) -> None:
    """With output_dir set, downloads link into it (relative to the page), not into base_dir; the page says
    which folder its images are relative to."""
    out_dir = tmp_path / "elsewhere" / "out-dir"
    png_file(out_dir / "A/hero.png")
    out = tmp_path / "site" / "g.html"
    write_html(ReportInput("p", STEPS, [downloaded("hero", 1, "A/hero.png")], tmp_path, output_dir=out_dir), out)
    page = out.read_text(encoding="utf-8")
    assert 'src="../elsewhere/out-dir/A/hero.png"' in page
    assert f'Images are links relative to this page, into <code title="{out_dir}">../elsewhere/out-dir/</code>' in page
    assert "--embed" in page


def test_html_embed_inlines_images_and_says_so(tmp_path: Path) -> None:
    """--embed: images become data URIs (the page can move); a missing file, one past the size cap or one
    reached through a symlink out of the folder stays a link, and the page counts them."""
    png_file(tmp_path / "a.png", b"\x89PNG\r\n\x1a\nAAAA")
    png_file(tmp_path / "big.png", b"\x89PNG" + b"\0" * (8 << 20))
    secret = tmp_path.parent / f"{tmp_path.name}-secret.png"
    png_file(secret, b"\x89PNG\r\n\x1a\nSECRET")
    (tmp_path / "escape.png").symlink_to(secret)
    records = [
        downloaded("hero", 1, "a.png"),
        downloaded("hero", 2, "missing.png"),
        downloaded("hero", 3, "big.png"),
        downloaded("hero", 4, "escape.png"),
    ]
    out = tmp_path / "g.html"
    write_html(ReportInput("p", STEPS, records, tmp_path, embed=True), out)
    page = out.read_text(encoding="utf-8")
    encoded = base64.b64encode(b"\x89PNG\r\n\x1a\nAAAA").decode()
    assert f'src="data:image/png;base64,{encoded}"' in page
    assert 'src="missing.png"' in page
    assert 'src="big.png"' in page
    assert 'src="escape.png"' in page
    assert base64.b64encode(b"\x89PNG\r\n\x1a\nSECRET").decode() not in page
    assert "1 images are embedded" in page
    assert "3 images could not be embedded (missing, or over 8 MiB)" in page
    assert "Images are links relative" not in page


def test_html_cards_title_shown_columns_and_details(tmp_path: Path) -> None:
    """A card is titled by its key, shows the template columns (one line each, full text on hover) and keeps
    the other columns behind a details toggle."""
    row = {"Handle": "black-t-shirt-os", "Title": "T" * 400, "Vendor": "Acme", **{f"x{i}": "v" for i in range(40)}}
    r = rec("hero", 1, RunState.COMPLETED, row=row, key="black-t-shirt-os", remote_id="r1")
    out = tmp_path / "g.html"
    data = ReportInput("p", STEPS, [r], tmp_path, template_columns=("Title", "Handle"), key_column="Handle")
    write_html(data, out)
    page = out.read_text(encoding="utf-8")
    assert '<span class="ttl" title="black-t-shirt-os">black-t-shirt-os</span>' in page
    assert f'<dt title="Title">Title</dt><dd title="{"T" * 400}">{"T" * 299}…</dd>' in page
    assert "<summary>41 more columns</summary>" in page
    assert page.count("<dt ") == 42  # Handle is the title, not a field


def test_html_verdict_controls_and_earlier_attempts(tmp_path: Path) -> None:
    """Completed runs get approve/reject controls carrying the run attempt and the verdict in force; a run
    with earlier attempts shows them side by side, newest first, each with its verdict."""
    png_file(tmp_path / "h3.png")
    png_file(tmp_path / "history/h-2.png")
    current = downloaded("hero", 1, "h3.png")
    current = dataclasses.replace(current, attempts=3)
    failed = rec("banner", 1, RunState.FAILED, key="K1", error="boom", remote_id="r2")
    past = (
        PastAttempt(1, RunState.COMPLETED),
        PastAttempt(
            2,
            RunState.COMPLETED,
            outputs=(img("https://cdn/old.png"),),
            downloads=(DownloadRecord(0, "Hero Image", "https://cdn/old.png", "history/h-2.png", 4, "0" * 64),),
        ),
    )
    verdicts = {
        (current.identity, 3): Verdict(1, current.identity, 3, "approved", "good", "2026-01-01T00:00:00.000Z", "x"),
        (current.identity, 2): Verdict(2, current.identity, 2, "rejected", None, "2026-01-01T00:00:00.000Z", "x"),
    }
    out = tmp_path / "g.html"
    data = ReportInput("p", STEPS, [current, failed], tmp_path, verdicts=verdicts, history={current.identity: past})
    write_html(data, out)
    page = out.read_text(encoding="utf-8")
    assert page.count('<div class="vd') == 1  # the failed banner has nothing to review
    assert f'data-identity="{current.identity}" data-attempt="3"' in page
    assert 'data-verdict="approved"' in page
    assert 'class="va" aria-pressed="true"' in page
    assert 'value="good"' in page
    assert '<option value="approved">Approved (1)</option>' in page
    strip = page[page.index('<div class="atts"') :]
    captions = [strip.index(t) for t in ("#3 · now", "#2 · rejected", "#1 · completed")]
    assert captions == sorted(captions)
    assert 'src="history/h-2.png" alt="attempt 2"' in strip
    assert '<i class="noimg"></i><figcaption>#1' in strip


# ----------------------------------------------------------------------------------------------- credits


def credit_records() -> list[RunRecord]:
    """Row 1: hero (4, started) and banner (6 now, 6 on an earlier attempt); row 2: a refused hero (no cost)."""
    hero = dataclasses.replace(rec("hero", 1, RunState.COMPLETED, remote_id="run_1"), credits_estimate=4.0)
    banner = dataclasses.replace(
        rec("banner", 1, RunState.COMPLETED, remote_id="run_2"), credits_estimate=6.0, credits_earlier=6.0
    )
    refused = dataclasses.replace(rec("hero", 2, RunState.PENDING), credits_estimate=4.0)
    return [hero, banner, refused]


def test_reports_show_credits_per_run_per_step_and_in_total(tmp_path: Path) -> None:
    """CSV and JSONL carry each run's credits (earlier attempts included; a run never created costs nothing);
    markdown and HTML show the credits per step and the batch total."""
    write_csv(data(credit_records(), tmp_path), tmp_path / "r.csv")
    rows = read_csv(tmp_path / "r.csv")
    assert [(r["hero.credits"], r["banner.credits"]) for r in rows] == [("4", "12"), ("", "")]
    write_jsonl(data(credit_records(), tmp_path), tmp_path / "r.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [x["credits"] for x in lines] == [4.0, 12.0, None]
    assert lines[1]["credits_earlier"] == 6.0
    assert lines[1]["credits_estimate"] == 6.0
    assert "Credits: hero 4, banner 12; total 16" in render_markdown(data(credit_records(), tmp_path))
    write_html(data(credit_records(), tmp_path), tmp_path / "r.html")
    assert "credits: hero 4, banner 12; total 16" in (tmp_path / "r.html").read_text()


def test_every_report_carries_the_verdict_of_the_current_attempt(tmp_path: Path) -> None:
    """CSV `<step>.verdict`, JSONL `verdict`/`verdict_note` and the markdown's review counts give the verdict in
    force for each completed run's current attempt; a verdict on an earlier attempt does not count."""
    good = rec("hero", 1, RunState.COMPLETED, key="A1", outputs=[img("https://cdn/a.png")], remote_id="run_1")
    bad = rec("hero", 2, RunState.COMPLETED, key="B2", outputs=[img("https://cdn/b.png")], remote_id="run_2")
    redone = dataclasses.replace(
        rec("hero", 3, RunState.COMPLETED, key="C3", outputs=[img("https://cdn/c.png")], remote_id="run_3"),
        attempts=2,
    )
    at = "2026-01-01T00:00:00.000Z"
    verdicts = {
        (good.identity, 1): Verdict(1, good.identity, 1, "approved", None, at, "page"),
        (bad.identity, 1): Verdict(2, bad.identity, 1, "rejected", "too red", at, "page"),
        (redone.identity, 1): Verdict(3, redone.identity, 1, "rejected", None, at, "page"),
    }
    data = ReportInput("p", ("hero",), [good, bad, redone], tmp_path, verdicts=verdicts)
    write_csv(data, tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["hero.verdict"] for r in rows] == ["approved", "rejected", ""]
    write_jsonl(data, tmp_path / "r.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["verdict"], r["verdict_note"]) for r in lines] == [
        ("approved", None),
        ("rejected", "too red"),
        (None, None),
    ]
    assert "Review: 1 approved, 1 rejected, 1 unreviewed." in render_markdown(data)
    write_junit(data, tmp_path / "r.xml")
    cases = ET.parse(tmp_path / "r.xml").getroot().iter("testcase")  # noqa: S314 (our own file)
    props = [{p.get("name"): p.get("value") for p in c.iter("property")} for c in cases]
    assert props == [{"verdict": "approved"}, {"verdict": "rejected", "verdict_note": "too red"}, {}]
