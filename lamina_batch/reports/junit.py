"""JUnit XML report: a testsuite per step and a testcase per run, in the shape GitHub, GitLab and Jenkins read.

Testcases are serialised one at a time with ElementTree into a spool per step, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lamina_batch.atomic import atomic_text_writer
from lamina_batch.models import RunRecord, RunState
from lamina_batch.reports.common import ReportInput, error_text, item_label, verdict_of
from lamina_batch.verdicts import Verdict

# XML 1.0 cannot carry most control characters at all, not even escaped; ElementTree would write them anyway.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_FAILURE_STATES = frozenset({RunState.FAILED, RunState.TIMED_OUT, RunState.CANCELLED})
_MESSAGE_CAP = 1000
_SPOOL_BYTES = 1 << 20


def xml_safe(text: str) -> str:
    """Drop the characters XML 1.0 forbids (they would make the whole file unreadable)."""
    return _XML_INVALID.sub("", text)


@dataclass
class _Suite:
    """Running totals and spooled testcases of one step (mutable on purpose: it is filled as runs stream)."""

    body: IO[str]
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0


def testcase(pipeline_name: str, rec: RunRecord, verdict: Verdict | None) -> ET.Element:
    """One run as a `<testcase>`: failure for failed/timed out/cancelled, error for unknown, skipped if unfinished;
    a review verdict on its current attempt as a `verdict` property (and its note as `verdict_note`)."""
    case = ET.Element(
        "testcase",
        {
            "classname": xml_safe(f"{pipeline_name}.{rec.step_id}"),
            "name": xml_safe(item_label(rec)),
            "time": f"{rec.remote_duration or 0.0:.3f}",
        },
    )
    reason = xml_safe(error_text(rec))
    detail = "\n".join(
        x
        for x in (
            reason,
            f"run id: {rec.remote_id}" if rec.remote_id else "",
            f"request id: {rec.request_id}" if rec.request_id else "",
            f"app: {rec.app_id}",
            f"attempts: {rec.attempts}",
        )
        if x
    )
    if rec.state in _FAILURE_STATES:
        el = ET.SubElement(
            case, "failure", {"message": (reason or rec.state.value)[:_MESSAGE_CAP], "type": rec.state.value}
        )
        el.text = xml_safe(detail)
    elif rec.state is RunState.UNKNOWN:
        message = reason or "start outcome unknown: the run may exist remotely; see --restart-unknown"
        el = ET.SubElement(case, "error", {"message": message[:_MESSAGE_CAP], "type": rec.state.value})
        el.text = xml_safe(detail)
    elif not rec.state.finished:
        ET.SubElement(case, "skipped", {"message": f"not finished: {rec.state.value}"})
    if verdict is not None:
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", {"name": "verdict", "value": verdict.verdict})
        if verdict.note:
            ET.SubElement(props, "property", {"name": "verdict_note", "value": xml_safe(verdict.note)})
    return case


def _suite_tag(name: str, suite: _Suite) -> str:
    el = ET.Element(
        "testsuite",
        {
            "name": xml_safe(name),
            "tests": str(suite.tests),
            "failures": str(suite.failures),
            "errors": str(suite.errors),
            "skipped": str(suite.skipped),
            "time": f"{suite.time:.3f}",
        },
    )
    el.text = "\n"
    text = ET.tostring(el, encoding="unicode")
    return text[: -len("</testsuite>")]  # the opening tag; its testcases are copied in from the spool


def write_junit(data: ReportInput, out: Path) -> None:
    """Write `<testsuites>` with one `<testsuite>` per step (in `step_ids` order, then any other step seen)."""
    suites: dict[str, _Suite] = {}
    with contextlib.ExitStack() as spools:

        def suite_of(step: str) -> _Suite:
            suite = suites.get(step)
            if suite is None:
                spool = spools.enter_context(tempfile.SpooledTemporaryFile(_SPOOL_BYTES, mode="w+", encoding="utf-8"))
                suite = suites[step] = _Suite(spool)
            return suite

        for step in data.step_ids:
            suite_of(step)
        for rec in data.records:
            suite = suite_of(rec.step_id)
            suite.tests += 1
            suite.time += rec.remote_duration or 0.0
            if rec.state in _FAILURE_STATES:
                suite.failures += 1
            elif rec.state is RunState.UNKNOWN:
                suite.errors += 1
            elif not rec.state.finished:
                suite.skipped += 1
            suite.body.write("  ")
            case = testcase(data.pipeline_name, rec, verdict_of(data, rec))
            suite.body.write(ET.tostring(case, encoding="unicode"))
            suite.body.write("\n")

        with atomic_text_writer(out, newline="\n") as fh:
            fh.write('<?xml version="1.0" encoding="UTF-8"?>\n')
            root = ET.Element(
                "testsuites",
                {
                    "name": xml_safe(data.pipeline_name),
                    "tests": str(sum(s.tests for s in suites.values())),
                    "failures": str(sum(s.failures for s in suites.values())),
                    "errors": str(sum(s.errors for s in suites.values())),
                    "skipped": str(sum(s.skipped for s in suites.values())),
                    "time": f"{sum(s.time for s in suites.values()):.3f}",
                },
            )
            root.text = "\n"
            fh.write(ET.tostring(root, encoding="unicode")[: -len("</testsuites>")])
            for name, suite in suites.items():
                fh.write(_suite_tag(name, suite))
                suite.body.seek(0)
                shutil.copyfileobj(suite.body, fh)
                fh.write("</testsuite>\n")
            fh.write("</testsuites>\n")
