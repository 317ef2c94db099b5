"""Rows <-> RunRecord: every field written through the API comes back with its model type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from manifest_helpers import NAME, make_run

from lamina_batch.manifest import Manifest
from lamina_batch.models import DownloadRecord, RemoteRun, RunOutput, RunState


@pytest.fixture
def mpath(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.lamina.sqlite"


@pytest.fixture
def writer(mpath: Path) -> Iterator[Manifest]:
    with Manifest.open(mpath, pipeline_name=NAME, writer=True) as m:
        yield m


def test_round_trip_of_every_field(writer: Manifest) -> None:
    """Every RunRecord field written through the write API comes back with its model type."""
    run = make_run(3, key="SKU3", axes={"aspect": "16:9"})
    sent = {"Prompt": "photo of mug 3", "Aspect Ratio": "16:9", "n": 2, "flag": True}
    rec = writer.begin_attempt(run, sent)
    assert rec.state is RunState.SUBMITTING
    writer.set_remote_id(run.identity, "run_abc", RemoteRun(run_id="run_abc", status="queued"))
    outputs = (
        RunOutput(id="o1", label="Hero Image", type="image", value="https://x/y.png", status="completed"),
        RunOutput(id="o2", label="Alt", type="text", value={"k": [1, 2]}, status="error", error="boom"),
    )
    writer.finish(run.identity, RunState.COMPLETED, outputs=outputs, request_id="req_1", remote_duration=12.5)
    dl = DownloadRecord(
        output_index=0, label="Hero Image", url="https://x/y.png", path="out/a.png", size=7, sha256="ab"
    )
    writer.add_download(run.identity, dl)

    got = writer.get(run.identity)
    assert got is not None
    assert (got.identity, got.step_id, got.app_id) == (run.identity, "hero", "app_7Hk2")
    assert (got.row_number, got.row_key, got.item_id) == (3, "SKU3", "item3")
    assert got.row == {"sku": "SKU3", "name": "Mug 3"}
    assert got.axes == {"aspect": "16:9"}
    assert got.inputs == sent
    assert got.output_labels == ("Hero Image",)
    assert got.needs == {}
    assert got.state is RunState.COMPLETED
    assert got.remote_id == "run_abc"
    assert got.attempts == 1
    assert got.created_at
    assert got.updated_at
    assert got.submitted_at
    assert got.finished_at
    assert got.remote_duration == 12.5
    assert got.outputs == outputs
    assert got.error is None
    assert got.error_code is None
    assert got.request_id == "req_1"
    assert got.downloads == (dl,)

    down = make_run(3, step="banner", app="app_9Qx1")
    writer.begin_attempt(down, {"Product Image": "https://x/y.png"})
    writer.finish(down.identity, RunState.FAILED, error="model crashed", error_code="RUN_FAILED")
    got2 = writer.get(down.identity)
    assert got2 is not None
    assert got2.output_labels is None
    assert got2.needs == {"hero": "hero-3"}
    assert (got2.error, got2.error_code, got2.state) == ("model crashed", "RUN_FAILED", RunState.FAILED)
