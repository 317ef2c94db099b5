"""Sharding a batch (`run --shard I/N`) and merging shard manifests (`merge`), at library level and end to end."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lamina_batch.cli import main
from lamina_batch.emulator import Emulator, Faults
from lamina_batch.manifest import Manifest
from lamina_batch.matrix import expand_runs, shard_of
from lamina_batch.models import Pipeline, RunState
from lamina_batch.spec import load_pipeline

MakeEmulator = Callable[..., Emulator]
UseEmulator = Callable[[Emulator], None]

FORMATS = ("csv", "jsonl", "junit", "html", "markdown")

STEPS = """steps:
  - id: hero
    app: app_7Hk2
    inputs: {Prompt: "Studio photo of {{ row.name }}", Aspect Ratio: ASPECT}
  - id: banner
    app: app_9Qx1
    needs: [hero]
    inputs: {Product Image: "{{ steps.hero.output }}", Headline: "{{ row.name }}"}
"""


def rows_pipeline(
    path: Path, rows: list[tuple[str, str]], *, key: bool = True, axes: bool = True, name: str = "shardy"
) -> Pipeline:
    """Write a two-step pipeline over inline rows (sku, name) and load it."""
    lines = ["version: 1", f"name: {name}", "matrix:"]
    if key:
        lines.append("  key: sku")
    if axes:
        lines.append('  axes: {aspect: ["1:1", "16:9"]}')
    lines.append("  rows:")
    lines += [f'    - {{sku: "{sku}", name: "{n}"}}' for sku, n in rows]
    aspect = '"{{ axes.aspect }}"' if axes else '"1:1"'
    path.write_text("\n".join(lines) + "\n" + STEPS.replace("ASPECT", aspect), encoding="utf-8")
    return load_pipeline(path)


def products(n: int, start: int = 1) -> list[tuple[str, str]]:
    return [(f"S{i:03d}", f"Product {i}") for i in range(start, start + n)]


def shard_map(pipeline: Pipeline, n: int) -> dict[str, int]:
    """identity -> the shard (1..n) whose expansion yields it; fails on a run yielded by two shards."""
    where: dict[str, int] = {}
    for i in range(1, n + 1):
        for plan in expand_runs(pipeline, shard=(i, n)):
            for run in plan.runs:
                assert run.identity not in where, f"run {run.identity} in shards {where[run.identity]} and {i}"
                where[run.identity] = i
    return where


# --------------------------------------------------------------------------- library level


@pytest.mark.parametrize("n", range(1, 9))
def test_shards_cover_every_planned_run_exactly_once(tmp_path: Path, n: int) -> None:
    """For N = 1..8 the shards' runs are pairwise disjoint and their union is exactly the unsharded plan."""
    pipeline = rows_pipeline(tmp_path / "p.yaml", products(30))
    full = [run.identity for plan in expand_runs(pipeline) for run in plan.runs]
    assert len(full) == len(set(full)) == 30 * 2 * 2
    where = shard_map(pipeline, n)
    assert set(where) == set(full)
    if n > 1:
        # 60 items over at most 8 shards: a hash that sends everything to one shard would be a defect
        assert len(set(where.values())) >= min(n, 3)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_all_steps_of_an_item_land_in_one_shard(tmp_path: Path, n: int) -> None:
    """Every step of one (row, axes) item goes to the same shard, so `needs` never crosses shards."""
    pipeline = rows_pipeline(tmp_path / "p.yaml", products(20))
    by_item: dict[tuple[str, str], set[int]] = {}
    for i in range(1, n + 1):
        for plan in expand_runs(pipeline, shard=(i, n)):
            assert [run.step_id for run in plan.runs] == ["hero", "banner"]
            assert shard_of(plan.item.item_id, n) == i
            for run in plan.runs:
                key = (run.item.row["sku"], run.item.axes["aspect"])
                by_item.setdefault(key, set()).add(i)
    assert len(by_item) == 40
    assert all(len(shards) == 1 for shards in by_item.values())


@pytest.mark.parametrize("key", [True, False])
@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_shard_of_a_run_is_stable_when_rows_are_inserted_or_reordered(tmp_path: Path, key: bool, n: int) -> None:
    """Inserting rows (front, middle, end) and reordering keep every existing run in the same shard."""
    base = products(24)
    before = shard_map(rows_pipeline(tmp_path / "a.yaml", base, key=key), n)
    inserted = [*products(3, start=100), *base[:10], *products(4, start=200), *base[10:], *products(2, start=300)]
    after_insert = shard_map(rows_pipeline(tmp_path / "b.yaml", inserted, key=key), n)
    reordered = shard_map(rows_pipeline(tmp_path / "c.yaml", list(reversed(base)), key=key), n)
    for identity, shard in before.items():
        assert after_insert[identity] == shard
        assert reordered[identity] == shard
    assert len(after_insert) == len(before) + 9 * 4


def test_shard_of_is_deterministic_and_in_range() -> None:
    """shard_of depends on the item id alone and always answers 1..n."""
    ids = [f"{i:032x}" for i in range(0, 10**6, 9973)]
    for n in range(1, 9):
        got = [shard_of(item_id, n) for item_id in ids]
        assert got == [shard_of(item_id, n) for item_id in ids]
        assert set(got) <= set(range(1, n + 1))


# --------------------------------------------------------------------------- end to end (CLI in-process)

NORMALISE = [
    (re.compile(r"run_[0-9a-f]{8,}"), "RUN"),
    (re.compile(r"https?://127\.0\.0\.1:\d+"), "http://EMULATOR"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), "TS"),
    (re.compile(r'time="[0-9.]+"'), 'time=""'),
]

# Fields that legitimately differ between two emulators (ids, URLs, clocks, random durations).
VOLATILE_JSONL = {"remote_id", "created_at", "updated_at", "submitted_at", "finished_at", "remote_duration"}


def normalise(text: str) -> str:
    for pattern, repl in NORMALISE:
        text = pattern.sub(repl, text)
    return text


def report_content(fmt: str, path: Path) -> Any:
    """A report's content with emulator-specific ids, URLs and timings taken out."""
    text = path.read_text(encoding="utf-8")
    if fmt == "csv":
        return [
            {k: normalise(v) for k, v in row.items() if not k.endswith(".run_id")}
            for row in csv.DictReader(text.splitlines())
        ]
    if fmt == "jsonl":
        lines = []
        for line in text.splitlines():
            obj = json.loads(line)
            lines.append(json.loads(normalise(json.dumps({k: v for k, v in obj.items() if k not in VOLATILE_JSONL}))))
        return sorted(lines, key=lambda o: o["identity"])
    return normalise(text)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Emulator], None]:
    """Point LAMINA_BASE_URL / LAMINA_API_KEY at the given emulator (and keep reports off the step summary)."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)

    def use(emu: Emulator) -> None:
        monkeypatch.setenv("LAMINA_BASE_URL", emu.base_url)
        monkeypatch.setenv("LAMINA_API_KEY", emu.key)

    return use


def write_reports(pipeline: Path, manifest: Path | None, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir()
    written = {}
    for fmt in FORMATS:
        dest = out_dir / f"report.{fmt}"
        extra = ["--manifest", str(manifest)] if manifest is not None else []
        assert main(["report", str(pipeline), *extra, "--format", fmt, "-o", str(dest), "-q"]) == 0
        written[fmt] = dest
    return written


def test_three_shards_merged_report_like_one_unsharded_run(
    tmp_path: Path, make_emulator: Callable[..., Emulator], env: Callable[[Emulator], None]
) -> None:
    """3 shards run separately, then merged, give every report format the same content as one unsharded run."""
    sharded_dir, single_dir = tmp_path / "sharded", tmp_path / "single"
    sharded_dir.mkdir()
    single_dir.mkdir()
    rows = products(10)
    rows_pipeline(sharded_dir / "p.yaml", rows, axes=False)
    rows_pipeline(single_dir / "p.yaml", rows, axes=False)

    emu = make_emulator()
    env(emu)
    shard_files = []
    for i in (1, 2, 3):
        assert main(["run", str(sharded_dir / "p.yaml"), "--shard", f"{i}/3", "--no-progress", "-q"]) == 0
        shard_file = sharded_dir / f"p.shard-{i}-of-3.lamina.sqlite"
        assert shard_file.exists()
        with Manifest.open(shard_file, pipeline_name="shardy", writer=False) as m:
            assert list(m.iter_runs()), f"shard {i} of 3 is empty: the test would not exercise merging"
        shard_files.append(shard_file)
    assert not (sharded_dir / "p.lamina.sqlite").exists()
    assert emu.stats.starts == 20
    assert emu.stats.duplicate_starts() == {}

    merged = sharded_dir / "all.lamina.sqlite"
    assert main(["merge", *map(str, shard_files), "-o", str(merged)]) == 0
    assert main(["status", str(sharded_dir / "p.yaml"), "--manifest", str(merged)]) == 0
    sharded_reports = write_reports(sharded_dir / "p.yaml", merged, sharded_dir / "reports")

    fresh = make_emulator(seed=7)
    env(fresh)
    assert main(["run", str(single_dir / "p.yaml"), "--no-progress", "-q"]) == 0
    single_reports = write_reports(single_dir / "p.yaml", None, single_dir / "reports")

    for fmt in FORMATS:
        got, want = report_content(fmt, sharded_reports[fmt]), report_content(fmt, single_reports[fmt])
        assert got == want, f"{fmt} report of the merged manifest differs from the unsharded run"
    csv_rows = report_content("csv", sharded_reports["csv"])
    assert [r["sku"] for r in csv_rows] == [sku for sku, _ in rows]
    assert all(r["hero.status"] == r["banner.status"] == "completed" for r in csv_rows)


def test_merge_prefers_the_more_advanced_copy_of_a_run_in_either_order(
    tmp_path: Path,
    make_emulator: Callable[..., Emulator],
    env: Callable[[Emulator], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A shard's failed copy and its later completed copy merge to the completed states, whatever the order."""
    pipeline = tmp_path / "p.yaml"
    rows_pipeline(pipeline, products(8), axes=False)
    emu = make_emulator(faults=Faults(p_fail=1.0))
    env(emu)
    shard_file = tmp_path / "p.shard-1-of-2.lamina.sqlite"
    assert main(["run", str(pipeline), "--shard", "1/2", "--no-progress", "-q"]) == 1
    early = tmp_path / "early.sqlite"
    shutil.copyfile(shard_file, early)
    with Manifest.open(early, pipeline_name="shardy", writer=False) as m:
        assert RunState.FAILED in {r.state for r in m.iter_runs()}
    emu.set_faults(Faults())
    assert main(["run", str(pipeline), "--shard", "1/2", "--retry-failed", "--no-progress", "-q"]) == 0
    assert main(["run", str(pipeline), "--shard", "2/2", "--no-progress", "-q"]) == 0
    other = tmp_path / "p.shard-2-of-2.lamina.sqlite"
    capsys.readouterr()

    for order in ([early, shard_file, other], [shard_file, other, early]):
        dest = tmp_path / f"all-{order[0].stem}.sqlite"
        assert main(["merge", *map(str, order), "-o", str(dest)]) == 0
        with Manifest.open(dest, pipeline_name="shardy", writer=False) as m:
            states = [r.state for r in m.iter_runs()]
        assert len(states) == 16
        assert set(states) == {RunState.COMPLETED}
        assert main(["status", str(pipeline), "--manifest", str(dest)]) == 0


def test_merge_refuses_a_manifest_of_another_pipeline(
    tmp_path: Path,
    make_emulator: Callable[..., Emulator],
    env: Callable[[Emulator], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Merging manifests of two pipelines exits 2 with one line naming the odd one, and writes nothing."""
    env(make_emulator())
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    rows_pipeline(a_dir / "p.yaml", products(3), axes=False, name="alpha")
    rows_pipeline(b_dir / "p.yaml", products(3), axes=False, name="beta")
    assert main(["run", str(a_dir / "p.yaml"), "--no-progress", "-q"]) == 0
    assert main(["run", str(b_dir / "p.yaml"), "--no-progress", "-q"]) == 0
    capsys.readouterr()
    dest = tmp_path / "all.sqlite"
    assert main(["merge", str(a_dir / "p.lamina.sqlite"), str(b_dir / "p.lamina.sqlite"), "-o", str(dest)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "alpha" in lines[0]
    assert "beta" in lines[0]
    assert "Traceback" not in captured.err
    assert not dest.exists()


def test_merge_of_two_shards_and_a_full_run_reports_the_overlap_end_to_end(
    tmp_path: Path, make_emulator: MakeEmulator
) -> None:
    """Two shards and a full run of the same rows (other remote runs): `merge` through the CLI warns how many runs
    were paid for more than once and names every dropped remote run; the merged manifest keeps them in its
    history and among its remote ids, and `status` reads it as complete."""
    import subprocess
    import sys

    from helpers import cli_env, run_cli, write_pipeline

    emu = make_emulator()
    pipeline = write_pipeline(tmp_path, 4, banner=False)
    env = cli_env(emu)
    full = tmp_path / "full.sqlite"
    for i in (1, 2):
        done = run_cli(pipeline, env, "--shard", f"{i}/2")
        assert done.returncode == 0, done.stderr
    a, b = (next(tmp_path.glob(f"*shard-{i}-of-2*.sqlite")) for i in (1, 2))
    done = run_cli(pipeline, env, "--manifest", str(full))
    assert done.returncode == 0, done.stderr
    assert emu.stats.starts == 8  # every row paid for twice
    merged = tmp_path / "all.sqlite"
    proc = subprocess.run(
        [sys.executable, "-m", "lamina_batch", "merge", str(a), str(b), str(full), "-o", str(merged)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 runs were started in more than one source manifest" in proc.stderr
    assert "4 remote runs were dropped" in proc.stderr
    with Manifest.open(merged, pipeline_name=None, writer=False, create=False) as m:
        kept = {r.remote_id for r in m.iter_runs()}
        every = m.known_remote_ids("app_7Hk2")
        assert len(kept) == 4
        assert len(every) == 8
        for remote_id in every - kept:
            assert f"  {remote_id} (completed in " in proc.stderr
        notes = [
            t.detail
            for r in m.iter_runs()
            for t in m.transitions(r.identity)
            if t.detail and t.detail.startswith("merge: dropped remote run ")
        ]
        assert len(notes) == 4
    status = subprocess.run(
        [sys.executable, "-m", "lamina_batch", "status", str(pipeline), "--manifest", str(merged)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert status.returncode == 0, status.stderr
