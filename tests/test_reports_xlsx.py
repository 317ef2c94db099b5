"""The results workbook (lamina_batch/reports/xlsx.py), read back with openpyxl (an independent reader) cell by
cell: text stays text, links are real hyperlinks, the header is frozen and filtered, the summary sheet counts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from helpers import cli_env, run_cli, write_pipeline

from lamina_batch.emulator import Emulator
from lamina_batch.emulator.png import encode_png
from lamina_batch.models import DownloadRecord, RunOutput, RunRecord, RunState
from lamina_batch.reports import ReportInput, write_report
from lamina_batch.reports.xlsx import STEP_COLUMNS, image_size, run_credits, write_xlsx

STEPS = ("hero", "banner")
HOSTILE = "=cmd|' /C calc'!A0"


def rec(
    step: str,
    n: int,
    state: RunState,
    *,
    row: dict[str, str],
    outputs: Sequence[str] = (),
    downloads: Sequence[str] = (),
    error: str | None = None,
    remote_id: str | None = None,
    estimate: float | None = None,
    actual: float | None = None,
) -> RunRecord:
    return RunRecord(
        identity=f"id-{step}-{n}",
        step_id=step,
        app_id="app_7Hk2",
        row_number=n,
        row_key=row.get("sku"),
        item_id=f"item-{n}",
        row=row,
        axes={},
        inputs={},
        output_labels=None,
        needs={},
        state=state,
        remote_id=remote_id,
        updated_at="2024-05-01T10:00:00Z",
        outputs=tuple(
            RunOutput(id=f"o{i}", label="Image", type="image", value=v, status="completed")
            for i, v in enumerate(outputs)
        ),
        downloads=tuple(DownloadRecord(i, "Image", "https://cdn/x", p, 4, "0" * 64) for i, p in enumerate(downloads)),
        error=error,
        credits_estimate=estimate,
        credits_actual=actual,
    )


ROW1 = {"sku": "00123", "name": HOSTILE, "barcode": "12345678901234567890", "launch": "2024-05-01"}
ROW2 = {"sku": "B2", "name": "+SUM(A1)", "barcode": "1.50", "launch": ""}


def records() -> list[RunRecord]:
    return [
        rec(
            "hero",
            1,
            RunState.COMPLETED,
            row=ROW1,
            outputs=["https://cdn.example/hero.png?a=1&b=2"],
            downloads=["out/00123/hero.png"],
            remote_id="run_1",
            estimate=4,
            actual=3.5,
        ),
        rec("banner", 1, RunState.FAILED, row=ROW1, error="@mention not allowed", remote_id="run_2", estimate=2),
        rec("hero", 2, RunState.COMPLETED, row=ROW2, outputs=["plain text answer"], remote_id="run_3"),
    ]


def data(recs: Any, base: Path, **kw: Any) -> ReportInput:
    return ReportInput(pipeline_name="p", step_ids=STEPS, records=recs, base_dir=base, **kw)


def open_results(path: Path) -> tuple[Any, Any]:
    book = openpyxl.load_workbook(path)
    return book["Results"], book["Summary"]


def by_header(ws: Any, row: int) -> dict[str, Any]:
    names = [c.value for c in ws[1]]
    return {n: ws.cell(row=row, column=i + 1) for i, n in enumerate(names)}


def test_rows_come_back_as_text_with_step_columns(tmp_path: Path) -> None:
    """Row cells are text cells holding exactly the input (leading zeros, 20 digits, dates, '=...' and '+...'
    are not numbers or formulas), then per step status, output, file, run id, credits, verdict and error."""
    out = tmp_path / "results.xlsx"
    write_xlsx(data(iter(records()), tmp_path), out)
    ws, _ = open_results(out)
    header = [c.value for c in ws[1]]
    assert header == ["sku", "name", "barcode", "launch", *(f"{s}.{f}" for s in STEPS for f in STEP_COLUMNS)]
    first = by_header(ws, 2)
    for column, value in ROW1.items():
        assert first[column].value == value
        assert first[column].data_type == "s"
    assert by_header(ws, 3)["name"].value == "+SUM(A1)"
    assert by_header(ws, 3)["name"].data_type == "s"
    assert first["hero.status"].value == "completed"
    assert first["hero.run_id"].value == "run_1"
    assert first["hero.credits"].value == 3.5  # the actual cost wins over the estimate
    assert first["hero.credits"].data_type == "n"
    assert first["banner.credits"].value == 2  # no actual: the estimate
    assert first["banner.status"].value == "failed"
    assert first["banner.error"].value == "@mention not allowed"
    assert first["banner.error"].data_type == "s"
    assert by_header(ws, 3)["hero.credits"].value is None  # unknown stays empty
    assert by_header(ws, 3)["banner.status"].value is None  # no run for that step
    assert ws.max_row == 3


def test_outputs_and_files_are_real_hyperlinks(tmp_path: Path) -> None:
    """The output is a hyperlink to its URL; the downloaded file a hyperlink relative to the workbook (which
    may sit in another folder); a non-URL output is plain text without a link."""
    out = tmp_path / "reports" / "results.xlsx"
    write_xlsx(data(iter(records()), tmp_path), out)
    ws, _ = open_results(out)
    first = by_header(ws, 2)
    assert first["hero.output"].value == "https://cdn.example/hero.png?a=1&b=2"
    assert first["hero.output"].hyperlink.target == "https://cdn.example/hero.png?a=1&b=2"
    assert first["hero.file"].value == "out/00123/hero.png"
    assert first["hero.file"].hyperlink.target.replace("\\", "/") == "../out/00123/hero.png"
    second = by_header(ws, 3)
    assert second["hero.output"].value == "plain text answer"
    assert second["hero.output"].hyperlink is None


def test_links_past_excels_limit_are_hyperlink_formulas(tmp_path: Path) -> None:
    """Past the per-sheet hyperlink limit a link is a HYPERLINK() formula with its quotes doubled (the cell
    still shows the text); a URL too long for a formula string is plain text."""
    long_url = "https://cdn.example.com/" + "x" * 300
    recs = [*records(), rec("banner", 2, RunState.COMPLETED, row=ROW2, outputs=['https://e.com/a"b', long_url])]
    out = tmp_path / "reports" / "results.xlsx"
    write_xlsx(data(iter(recs), tmp_path), out, max_links=1)
    ws, _ = open_results(out)
    first = by_header(ws, 2)
    assert first["hero.output"].hyperlink.target == "https://cdn.example/hero.png?a=1&b=2"
    assert first["hero.file"].hyperlink is None
    assert first["hero.file"].value == '=HYPERLINK("../out/00123/hero.png","out/00123/hero.png")'
    second = by_header(ws, 3)
    assert second["banner.output"].value == f'https://e.com/a"b | {long_url}'  # the text is over 255 characters
    assert second["banner.output"].data_type == "s"
    short = [*records()[:2], rec("hero", 2, RunState.COMPLETED, row=ROW2, outputs=['https://e.com/a"b'])]
    write_xlsx(data(iter(short), tmp_path), out, max_links=1)
    ws, _ = open_results(out)
    assert by_header(ws, 3)["hero.output"].value == '=HYPERLINK("https://e.com/a""b","https://e.com/a""b")'


def test_header_is_frozen_and_filtered(tmp_path: Path) -> None:
    """The header row is frozen (panes at A2) and carries an autofilter over every column and row."""
    out = tmp_path / "results.xlsx"
    write_xlsx(data(iter(records()), tmp_path), out)
    ws, _ = open_results(out)
    assert ws.freeze_panes == "A2"
    last = openpyxl.utils.get_column_letter(4 + len(STEPS) * len(STEP_COLUMNS))
    assert ws.auto_filter.ref == f"A1:{last}3"


def test_summary_sheet_counts_states_and_credits_per_step(tmp_path: Path) -> None:
    """The second sheet has one line per step: runs, a column per state, credits where known, and totals."""
    out = tmp_path / "results.xlsx"
    write_xlsx(data(iter(records()), tmp_path), out)
    _, summary = open_results(out)
    rows = [[c.value for c in r] for r in summary.iter_rows()]
    header = rows[0]
    assert header[:4] == ["step", "runs", "completed", "failed"]
    assert header[-1] == "credits"
    hero = dict(zip(header, rows[1], strict=True))
    banner = dict(zip(header, rows[2], strict=True))
    assert (hero["step"], hero["runs"], hero["completed"], hero["failed"], hero["credits"]) == ("hero", 2, 2, 0, 3.5)
    assert (banner["runs"], banner["failed"], banner["credits"]) == (1, 1, 2)
    assert rows[3][0] == "total"
    assert rows[3][1] == "=SUM(B2:B3)"  # openpyxl shows the formula; Excel shows its cached value


def test_run_credits_prefers_actual_then_estimate_then_none() -> None:
    """Credits as every report counts them: the actual cost, else the estimate, plus earlier attempts; nothing
    for an attempt that never created a remote run; None when nothing is known."""
    row = {"sku": "A"}
    assert run_credits(rec("hero", 1, RunState.COMPLETED, row=row, remote_id="r", estimate=4, actual=3)) == 3
    assert run_credits(rec("hero", 1, RunState.COMPLETED, row=row, remote_id="r", estimate=4)) == 4
    assert run_credits(rec("hero", 1, RunState.COMPLETED, row=row, remote_id="r")) is None
    assert run_credits(rec("hero", 1, RunState.PENDING, row=row, estimate=4)) is None
    redone = dataclasses.replace(
        rec("hero", 1, RunState.COMPLETED, row=row, remote_id="r", estimate=4), credits_earlier=4
    )
    assert run_credits(redone) == 8


def test_the_verdict_of_the_current_attempt_has_its_column(tmp_path: Path) -> None:
    """`<step>.verdict` holds the verdict in force for the run's current attempt, empty when unreviewed."""
    from lamina_batch.verdicts import Verdict

    recs = records()
    at = "2026-01-01T00:00:00.000Z"
    verdicts = {(recs[0].identity, 1): Verdict(1, recs[0].identity, 1, "rejected", "too red", at, "page")}
    out = tmp_path / "v.xlsx"
    write_report("xlsx", data(recs, tmp_path, verdicts=verdicts), out)
    ws, _ = open_results(out)
    assert by_header(ws, 2)["hero.verdict"].value == "rejected"
    assert by_header(ws, 3)["hero.verdict"].value is None


def test_empty_manifest_gives_a_header_only_workbook(tmp_path: Path) -> None:
    """No records: the step columns alone, still frozen, and a summary with zero counts."""
    out = tmp_path / "empty.xlsx"
    write_report("xlsx", data([], tmp_path), out)
    ws, summary = open_results(out)
    assert [c.value for c in ws[1]] == [f"{s}.{f}" for s in STEPS for f in STEP_COLUMNS]
    assert ws.max_row == 1
    assert [c.value for c in summary[2]][:2] == ["hero", 0]


def test_thumbnails_embed_one_image_per_downloaded_picture(tmp_path: Path) -> None:
    """With thumbnails, each downloaded PNG is placed in its row's thumbnail column, scaled down."""
    png = encode_png(4, 2, [b"\x00" + b"\xff\x00\x00" * 4] * 2)
    (tmp_path / "out" / "00123").mkdir(parents=True)
    (tmp_path / "out" / "00123" / "hero.png").write_bytes(png)
    assert image_size(tmp_path / "out" / "00123" / "hero.png") == (4, 2)
    out = tmp_path / "results.xlsx"
    write_xlsx(data(iter(records()), tmp_path, thumbnails=True), out)
    ws, _ = open_results(out)
    assert "hero.thumbnail" in [c.value for c in ws[1]]
    with zipfile.ZipFile(out) as z:
        media = [n for n in z.namelist() if n.startswith("xl/media/")]
        drawing = z.read("xl/drawings/drawing1.xml").decode()
    assert len(media) == 1
    column = [c.value for c in ws[1]].index("hero.thumbnail")
    assert f"<xdr:col>{column}</xdr:col><xdr:colOff>0</xdr:colOff><xdr:row>1</xdr:row>" in drawing


def cli(
    *args: str, env: dict[str, str] | None = None, block_xlsxwriter: bool = False
) -> subprocess.CompletedProcess[str]:
    # a None entry in sys.modules makes `import xlsxwriter` fail: the process as it is without the extra
    prelude = "sys.modules['xlsxwriter'] = None; " if block_xlsxwriter else ""
    code = "import runpy, sys; " + prelude + "runpy.run_module('lamina_batch', run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def test_run_writes_the_workbook_and_report_command_agrees(tmp_path: Path, emulator: Emulator) -> None:
    """`run --report xlsx=...` on the emulator writes the workbook with links to the downloaded files, and
    `report --format xlsx -o` writes the same cells."""
    pipeline = write_pipeline(tmp_path, 3, banner=False, download=True)
    env = cli_env(emulator)
    res = run_cli(pipeline, env, "--report", f"xlsx={tmp_path / 'run.xlsx'}")
    assert res.returncode == 0, res.stderr
    again = cli("report", str(pipeline), "--format", "xlsx", "-o", str(tmp_path / "later.xlsx"), env=env)
    assert again.returncode == 0, again.stderr
    ws, _ = open_results(tmp_path / "run.xlsx")
    later, _ = open_results(tmp_path / "later.xlsx")
    assert [[c.value for c in r] for r in ws.iter_rows()] == [[c.value for c in r] for r in later.iter_rows()]
    first = by_header(ws, 2)
    assert first["sku"].value == "S000"
    assert first["hero.status"].value == "completed"
    target = first["hero.file"].hyperlink.target.replace("\\", "/")
    assert (tmp_path / target).is_file()
    assert first["hero.output"].hyperlink.target.startswith("http://127.0.0.1")


def test_without_the_extra_xlsx_exits_2_naming_it(tmp_path: Path, emulator: Emulator) -> None:
    """Without XlsxWriter, `report --format xlsx` and `run --report xlsx=...` exit 2 with one line naming the
    extra, and the run starts nothing."""
    pipeline = write_pipeline(tmp_path, 2, banner=False)
    env = cli_env(emulator)
    res = cli("run", str(pipeline), "--no-progress", "--report", "xlsx=r.xlsx", env=env, block_xlsxwriter=True)
    assert res.returncode == 2
    assert 'pip install "lamina-batch[excel]"' in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert emulator.stats.starts == 0
    ok = run_cli(pipeline, env)
    assert ok.returncode == 0, ok.stderr
    rep = cli("report", str(pipeline), "--format", "xlsx", "-o", "r.xlsx", env=env, block_xlsxwriter=True)
    assert rep.returncode == 2
    assert "excel extra" in rep.stderr
    assert "Traceback" not in rep.stderr
    assert not (tmp_path / "r.xlsx").exists()


@pytest.mark.parametrize("n", [0, 1])
def test_atomic_write_keeps_the_old_workbook_on_error(tmp_path: Path, n: int) -> None:
    """A failure mid-write (after n items) leaves the previous file and no temporary file beside it."""
    out = tmp_path / "results.xlsx"
    out.write_text("previous", encoding="utf-8")

    def exploding() -> Any:
        yield from records()[:n]
        raise RuntimeError("manifest went away")

    with pytest.raises(RuntimeError, match="went away"):
        write_xlsx(data(exploding(), tmp_path), out)
    assert out.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["results.xlsx"]
