"""Tests for preflight.py: rendered inputs checked against live app definitions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lamina_batch.errors import AuthError, NotFoundError, Problem
from lamina_batch.matrix import display_path
from lamina_batch.models import (
    AppInfo,
    AppOutput,
    AppParameter,
    ItemPlan,
    MatrixItem,
    MatrixSpec,
    Pipeline,
    PlannedRun,
    RunSettings,
    Step,
)
from lamina_batch.preflight import check_apps, option_guess

HERO = AppInfo(
    app_id="app_hero",
    name="Product Hero",
    description=None,
    parameters=(
        AppParameter(id="1", name="Prompt", type="text", required=False, key="prompt"),
        AppParameter(
            id="2", name="Aspect Ratio", type="options", options=("1:1", "16:9"), default="1:1", has_default=True
        ),
        AppParameter(id="3", name="Reference Image", type="url", default="", has_default=True),
        AppParameter(id="4", name="Style Image", type="url", required=True, default=None, has_default=True),
    ),
    outputs=(AppOutput(0, "Hero Image", "image"),),
)


class FakeApps:
    """get_app from a dict; counts calls; unknown ids are 404."""

    def __init__(self, *apps: AppInfo, error: Exception | None = None) -> None:
        self.apps = {a.app_id: a for a in apps}
        self.calls: list[str] = []
        self.error = error

    async def get_app(self, app_id: str) -> AppInfo:
        self.calls.append(app_id)
        if self.error is not None:
            raise self.error
        if app_id not in self.apps:
            raise NotFoundError("App not found", status=404, method="GET", path=f"/v1/apps/{app_id}")
        return self.apps[app_id]


def pipeline(*steps: Step) -> Pipeline:
    return Pipeline(
        path=Path("/nowhere/pipe.yaml"),
        name="pipe",
        api="runs",
        matrix=MatrixSpec(rows=({"a": "1"},)),
        steps=steps,
        run=RunSettings(),
        manifest=Path("/nowhere/pipe.lamina.sqlite"),
    )


def step(inputs: dict[str, Any], *, app: str = "app_hero", sid: str = "hero", **kw: Any) -> Step:
    return Step(id=sid, app=app, inputs=inputs, line=7, **kw)


def plan(row_number: int, *runs: tuple[Step, dict[str, Any]], key: str | None = None) -> ItemPlan:
    item = MatrixItem(row_number=row_number, row={}, axes={}, key=key, item_id=f"i{row_number}")
    return ItemPlan(
        item=item,
        runs=tuple(
            PlannedRun(
                identity=f"{s.id}-{row_number}",
                step_id=s.id,
                app_id=s.app,
                item=item,
                inputs=inputs,
                output_labels=s.outputs,
            )
            for s, inputs in runs
        ),
    )


def check(p: Pipeline, client: FakeApps, plans: list[ItemPlan], **kw: Any) -> list[Problem]:
    return asyncio.run(check_apps(p, client, plans, **kw))


def test_clean_plan_has_no_problems() -> None:
    """Inputs that fit the app give no problems, and each app is fetched once."""
    s = step({"Prompt": "x", "Aspect Ratio": "16:9"})
    client = FakeApps(HERO)
    plans = [plan(n, (s, {"Prompt": f"p{n}", "Aspect Ratio": "16:9"})) for n in range(1, 4)]
    assert check(pipeline(s, step({"Prompt": "y"}, sid="again")), client, plans) == []
    assert client.calls == ["app_hero"]


def test_unknown_app_names_step_and_app() -> None:
    """An app that does not exist is one problem naming the step and the app id."""
    s = step({"Prompt": "x"}, app="app_gone")
    problems = check(pipeline(s), FakeApps(HERO), [plan(1, (s, {"Prompt": "x"}))])
    assert len(problems) == 1
    text = str(problems[0])
    assert "app_gone" in text
    assert "'hero'" in text
    assert "pipe.yaml:7" in text


def test_other_api_errors_propagate() -> None:
    """A rejected key is not turned into a problem: it propagates."""
    s = step({"Prompt": "x"})
    with pytest.raises(AuthError):
        check(pipeline(s), FakeApps(error=AuthError("bad key", status=401)), [])


def test_unknown_parameter_with_did_you_mean() -> None:
    """An unknown input name is reported once per step with a did-you-mean, however many rows."""
    s = step({"Prompt": "x", "Aspect Ratoi": "1:1"})
    plans = [plan(n, (s, {"Prompt": "x", "Aspect Ratoi": "1:1"})) for n in range(1, 20)]
    problems = check(pipeline(s), FakeApps(HERO), plans)
    assert len(problems) == 1
    assert "'Aspect Ratoi'" in problems[0].message
    assert problems[0].hint == "did you mean 'Aspect Ratio'?"
    assert problems[0].path == "steps.hero.inputs['Aspect Ratoi']"


def test_wrong_case_suggests_the_exact_key() -> None:
    """`PROMPT` (a key in the wrong case) suggests the exact key, naming the parameter by both."""
    s = step({"PROMPT": "x"})
    problems = check(pipeline(s), FakeApps(HERO), [])
    unknown = [p for p in problems if "no parameter" in p.message]
    assert len(unknown) == 1
    assert unknown[0].hint == "did you mean 'prompt' (Prompt)? keys and names are exact"


def test_missing_parameter_without_default_ignores_required_flag() -> None:
    """A parameter with no default must be set even if `required` is false; a `required` one with a
    default need not be."""
    s = step({"Aspect Ratio": "1:1"})
    problems = check(pipeline(s), FakeApps(HERO), [plan(1, (s, {"Aspect Ratio": "1:1"}))])
    assert len(problems) == 1
    assert "needs 'prompt' (Prompt) (it has no default)" in problems[0].message
    assert problems[0].hint == "add 'prompt' under inputs"


def test_option_not_in_options_names_row() -> None:
    """An options value outside the list is reported per row with the row number (and key)."""
    s = step({"Prompt": "x", "Aspect Ratio": "{{ row.ar }}"})
    plans = [
        plan(1, (s, {"Prompt": "x", "Aspect Ratio": "16:9"})),
        plan(2, (s, {"Prompt": "x", "Aspect Ratio": "16:10"}), key="SKU-2"),
    ]
    problems = check(pipeline(s), FakeApps(HERO), plans)
    assert len(problems) == 1
    text = str(problems[0])
    assert "row 2 (SKU-2)" in text
    assert "'16:10'" in text
    assert "steps.hero.inputs['Aspect Ratio']" in text
    assert problems[0].hint == "options: 1:1, 16:9"


def test_option_case_mismatch_suggests_exact_option() -> None:
    """An option that differs only in case suggests the exact label."""
    app = AppInfo("app_s", "S", None, (AppParameter("1", "Style", "options", options=("photo", "flat")),), ())
    s = step({"Style": "Photo"}, app="app_s")
    problems = check(pipeline(s), FakeApps(app), [plan(1, (s, {"Style": "Photo"}))])
    assert len(problems) == 1
    assert problems[0].hint == "did you mean 'photo'? options: photo, flat"


def test_url_must_be_http() -> None:
    """url inputs must be http(s) URLs; an empty value is fine only when the parameter has a default."""
    s = step({"Prompt": "x", "Reference Image": "{{ row.img }}", "Style Image": "{{ row.style }}"})
    plans = [
        plan(1, (s, {"Prompt": "x", "Reference Image": "ftp://host/a.png", "Style Image": "https://a.test/s.png"})),
        plan(2, (s, {"Prompt": "x", "Reference Image": "", "Style Image": "/local/file.png"})),
        plan(3, (s, {"Prompt": "x", "Reference Image": "https://a.test/r.png", "Style Image": "http://b.test/"})),
    ]
    problems = check(pipeline(s), FakeApps(HERO), plans)
    texts = sorted(str(p) for p in problems)
    assert len(texts) == 2
    assert "row 1" in texts[0]
    assert "ftp://host/a.png" in texts[0]
    assert "row 2" in texts[1]
    assert "/local/file.png" in texts[1]


def test_upstream_placeholders_are_skipped() -> None:
    """Values that hold an upstream placeholder are not judged at preflight."""
    s = step({"Prompt": "x", "Reference Image": "{{ steps.a.output }}", "Aspect Ratio": "{{ steps.a.output }}"})
    marker = "<lamina-batch:upstream:abc123>"
    plans = [plan(1, (s, {"Prompt": "x", "Reference Image": marker, "Aspect Ratio": marker}))]
    assert check(pipeline(s), FakeApps(HERO), plans) == []


def test_unknown_output_label() -> None:
    """A step's `outputs` selection must name labels the app has."""
    s = step({"Prompt": "x"}, outputs=("Hero Img",))
    problems = check(pipeline(s), FakeApps(HERO), [])
    assert len(problems) == 1
    assert problems[0].hint == "did you mean 'Hero Image'?"


def test_identical_problems_collapse_into_one_line_naming_the_rows() -> None:
    """A literal option typo shared by 600 rows is one line: "in 600 rows (rows 1-600)", with a did-you-mean."""
    app = AppInfo(
        "app_s", "S", None, (AppParameter("1", "Style", "options", key="style", options=("photo", "flat")),), ()
    )
    s = step({"Style": "photograph"}, app="app_s")
    plans = [plan(n, (s, {"Style": "photograph"})) for n in range(1, 601)]
    problems = check(pipeline(s), FakeApps(app), plans)
    assert [str(p) for p in problems] == [
        "/nowhere/pipe.yaml:7: steps.hero.inputs['Style']: 'photograph' is not an option of 'style' (Style)"
        " in 600 rows (rows 1-600) (did you mean 'photo'? options: photo, flat)"
    ]


def test_collapsed_rows_are_compacted_into_ranges() -> None:
    """Rows of one problem are listed as ranges, a row repeated by axes counts once, and past six ranges
    the list ends with "..."; a problem in one row keeps the row's key."""
    s = step({"Prompt": "x", "Aspect Ratio": "{{ row.ar }}"})
    bad = [1, 2, 3, 5, 8, 9, 10, 20, 30, 40, 41, 60]
    plans = [plan(n, (s, {"Prompt": "x", "Aspect Ratio": "bad"})) for n in bad for _axis in (1, 2)]
    plans.append(plan(70, (s, {"Prompt": "x", "Aspect Ratio": "worse"}), key="SKU-70"))
    problems = check(pipeline(s), FakeApps(HERO), plans)
    assert [p.message for p in problems] == [
        "'bad' is not an option of 'Aspect Ratio' in 12 rows (rows 1-3, 5, 8-10, 20, 30, 40-41, ...)",
        "row 70 (SKU-70): 'worse' is not an option of 'Aspect Ratio'",
    ]


def test_problems_are_capped() -> None:
    """Distinct problems past the cap are counted in a final line."""
    s = step({"Prompt": "x", "Aspect Ratio": "{{ row.ar }}"})
    plans = [plan(n, (s, {"Prompt": "x", "Aspect Ratio": f"bad{n}"})) for n in range(1, 101)]
    problems = check(pipeline(s), FakeApps(HERO), plans, max_problems=10)
    assert len(problems) == 11
    assert problems[0].message == "row 1: 'bad1' is not an option of 'Aspect Ratio'"
    assert problems[-1].message == "... and 90 more problems not shown"


@pytest.mark.parametrize(
    ("value", "options", "guess"),
    [
        ("photograph", ("photo", "illustration", "flat"), "photo"),
        ("ilustration", ("photo", "illustration", "flat"), "illustration"),
        (" Photo ", ("photo", "flat"), "photo"),
        ("16x9", ("1:1", "16:9"), "16:9"),
        ("2:1", ("1:1", "16:9"), None),
        ("16:10", ("1:1", "16:9"), None),
        ("banana", ("photo", "flat"), None),
        ("ph", ("photo", "flat"), None),
    ],
)
def test_option_guess(value: str, options: tuple[str, ...], guess: str | None) -> None:
    """An option value gets a did-you-mean for case, ratio spelling, prefixes and close words, never a
    fuzzy guess between numeric labels."""
    assert option_guess(value, options) == guess


def test_preflight_against_emulator(emulator: Any, tmp_path: Path) -> None:
    """A real pipeline checked against the emulator's apps reports the unknown app, name and bad option."""
    from lamina_batch import matrix, spec
    from lamina_batch.client import LaminaClient

    path = tmp_path / "pipeline.yaml"
    path.write_text(
        """version: 1
matrix:
  rows:
    - {name: mug, ar: "16:9"}
    - {name: cup, ar: "2:1"}
steps:
  - id: hero
    app: app_7Hk2
    inputs:
      Prompt: "{{ row.name }}"
      Aspect Ratio: "{{ row.ar }}"
      Promt: "{{ row.name }}"
  - id: ghost
    app: app_doesnotexist
    inputs:
      Anything: "x"
""",
        encoding="utf-8",
    )
    pipeline = spec.load_pipeline(path)

    async def go() -> list[Problem]:
        async with LaminaClient(emulator.base_url, emulator.key, "runs") as client:
            return await check_apps(pipeline, client, matrix.expand_runs(pipeline))

    problems = [str(p) for p in asyncio.run(go())]
    assert len(problems) == 3, problems
    assert any("app_doesnotexist" in p for p in problems)
    assert any("'Promt'" in p and "did you mean 'Prompt'?" in p for p in problems)
    assert any("row 2" in p and "'2:1'" in p for p in problems)
    assert emulator.stats.starts == 0


def _digest_pipeline(tmp_path: Path) -> Pipeline:
    from lamina_batch import spec

    lines = ["sku,ar,img"]
    for n in range(1, 121):
        ar = ("1:1", "16:9", "bad", "16:9 ")[n % 4]
        img = "not-a-url" if n % 7 == 0 else f"https://img.test/{n}.png"
        lines.append(f"S{n},{ar},{img}")
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        """version: 1
matrix:
  csv: rows.csv
  key: sku
  axes:
    v: ["1", "2"]
steps:
  - id: hero
    app: app_hero
    inputs:
      Prompt: "photo {{ row.sku }}"
      Aspect Ratio: "{{ row.ar }}"
      Reference Image: "{{ row.img }}"
""",
        encoding="utf-8",
    )
    return spec.load_pipeline(path)


@pytest.mark.parametrize(("values_cap", "rows_cap"), [(1000, 50), (50, 50), (1000, 5)])
def test_digest_gives_the_same_problems_as_rendering_again(tmp_path: Path, values_cap: int, rows_cap: int) -> None:
    """Checked from the local check's digest (all values kept; too many URLs kept, so that input is rendered
    again; too few rows kept of a bad value to name them all, so rendered again), the preflight reports
    exactly what rendering every row again reports, in the same order."""
    from lamina_batch.matrix import InputDigest, expand_runs, validate_pipeline

    p = _digest_pipeline(tmp_path)
    again = check(p, FakeApps(HERO), list(expand_runs(p)), max_problems=30)
    digest = InputDigest(values_cap=values_cap, rows_cap=rows_cap)
    validate_pipeline(p, digest=digest)
    assert digest.totals == {"hero": 240}
    assert check(p, FakeApps(HERO), list(expand_runs(p)), max_problems=30, digest=digest) == again
    assert [p.message for p in again] == [
        "'bad' is not an option of 'Aspect Ratio' in 30 rows (rows 2, 6, 10, 14, 18, 22, ...)",
        "'16:9 ' is not an option of 'Aspect Ratio' in 30 rows (rows 3, 7, 11, 15, 19, 23, ...)",
        "'Reference Image' must be a public http(s) URL, got 'not-a-url' in 17 rows (rows 7, 14, 21, 28, 35, 42, ...)",
    ]
    assert again[1].hint == "did you mean '16:9'? options: 1:1, 16:9"


def test_digest_that_kept_every_value_renders_nothing_again(tmp_path: Path) -> None:
    """With every constrained input's values in the digest, the preflight never iterates the runs again."""
    from lamina_batch.matrix import InputDigest, validate_pipeline

    p = _digest_pipeline(tmp_path)
    digest = InputDigest()
    validate_pipeline(p, digest=digest)

    def never() -> Any:
        raise AssertionError("rendered again")
        yield

    problems = asyncio.run(check_apps(p, FakeApps(HERO), never(), digest=digest))
    assert problems


# ---- inputs keyed by key, name or id (issue 20) --------------------------------------------------------

KEYED = AppInfo(
    app_id="app_keyed",
    name="Keyed",
    description=None,
    parameters=(
        AppParameter(id="uuid-prompt", name="Prompt", type="text", key="prompt"),
        AppParameter(
            id="uuid-ar",
            name="Aspect Ratio",
            type="options",
            key="aspect_ratio",
            options=("1:1", "16:9"),
            default="1:1",
            has_default=True,
        ),
        AppParameter(id="uuid-ref", name="Reference Image", type="url", key="reference_image"),
    ),
    outputs=(AppOutput(0, "Hero Image", "image"),),
)


def test_inputs_keyed_by_key_name_or_id_all_resolve() -> None:
    """Each parameter may be keyed by its key, its name or its id; the checks run on what it resolves to."""
    for inputs in (
        {"prompt": "x", "aspect_ratio": "16:9", "reference_image": "https://a.test/r.png"},
        {"Prompt": "x", "Aspect Ratio": "16:9", "Reference Image": "https://a.test/r.png"},
        {"uuid-prompt": "x", "uuid-ar": "16:9", "uuid-ref": "https://a.test/r.png"},
    ):
        s = step(inputs, app="app_keyed")
        assert check(pipeline(s), FakeApps(KEYED), [plan(1, (s, inputs))]) == [], inputs


def test_value_checks_name_the_resolved_parameter_by_key_and_name() -> None:
    """Option and url problems on a key-spelled input name the parameter as 'key' (Name)."""
    inputs = {"prompt": "x", "aspect_ratio": "2:1", "reference_image": "/tmp/a.png"}
    s = step(inputs, app="app_keyed")
    problems = [p.message for p in check(pipeline(s), FakeApps(KEYED), [plan(1, (s, inputs))])]
    assert problems == [
        "row 1: '2:1' is not an option of 'aspect_ratio' (Aspect Ratio)",
        "row 1: 'reference_image' (Reference Image) must be a public http(s) URL, got '/tmp/a.png'",
    ]


def test_missing_check_counts_a_parameter_set_by_any_spelling() -> None:
    """A no-default parameter set by its id is not missing; one set by nothing is named by key and name."""
    s = step({"uuid-prompt": "x"}, app="app_keyed")
    problems = check(pipeline(s), FakeApps(KEYED), [])
    assert [p.message for p in problems] == [
        "app 'Keyed' (app_keyed) needs 'reference_image' (Reference Image) (it has no default)"
        " but the step does not set it"
    ]
    assert problems[0].hint == "add 'reference_image' under inputs"


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("aspect_ration", "did you mean 'aspect_ratio' (Aspect Ratio)?"),
        ("Aspect Ratoi", "did you mean 'Aspect Ratio'?"),
        ("ASPECT RATIO", "did you mean 'aspect_ratio' (Aspect Ratio)? keys and names are exact"),
        ("UUID-AR", "did you mean 'uuid-ar' (Aspect Ratio)? ids are exact"),
        (
            "zzz",
            "its parameters: 'prompt' (Prompt), 'aspect_ratio' (Aspect Ratio), 'reference_image' (Reference Image)",
        ),
    ],
)
def test_did_you_mean_searches_keys_names_and_ids(name: str, hint: str) -> None:
    """An unknown input gets the closest key, name or id, shown with the parameter's name."""
    s = step({"prompt": "x", "reference_image": "https://a.test/r.png", name: "16:9"}, app="app_keyed")
    problems = check(pipeline(s), FakeApps(KEYED), [])
    assert [p.hint for p in problems] == [hint]
    assert problems[0].message == f"app 'Keyed' (app_keyed) has no parameter {name!r}"


def test_two_inputs_setting_one_parameter_name_both_lines(tmp_path: Path) -> None:
    """`Prompt` and `prompt` in one step are one problem naming both inputs and their lines."""
    from lamina_batch import spec

    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "version: 1\nmatrix:\n  rows: [{a: '1'}]\nsteps:\n  - id: hero\n    app: app_keyed\n    inputs:\n"
        "      Prompt: x\n      reference_image: https://a.test/r.png\n      prompt: y\n",
        encoding="utf-8",
    )
    p = spec.load_pipeline(path)
    problems = check(p, FakeApps(KEYED), [])
    assert len(problems) == 1
    assert problems[0].line == 10
    assert problems[0].path == "steps.hero.inputs['prompt']"
    assert problems[0].message == (
        "inputs 'Prompt' (line 8) and 'prompt' (line 10) all set 'prompt' (Prompt) of app 'Keyed' (app_keyed)"
    )


def test_value_problems_point_at_the_inputs_own_line(tmp_path: Path) -> None:
    """A bad value is reported at the line of its input, not of its step."""
    from lamina_batch import matrix, spec

    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "version: 1\nmatrix:\n  rows: [{a: '1'}, {a: '2'}]\nsteps:\n  - id: hero\n    app: app_keyed\n    inputs:\n"
        "      prompt: x\n      reference_image: https://a.test/r.png\n      aspect_ratio: photograph\n",
        encoding="utf-8",
    )
    p = spec.load_pipeline(path)
    problems = check(p, FakeApps(KEYED), list(matrix.expand_runs(p)))
    assert [str(x) for x in problems] == [
        f"{display_path(path)}:10: steps.hero.inputs['aspect_ratio']: 'photograph' is not an option of"
        " 'aspect_ratio' (Aspect Ratio) in 2 rows (rows 1-2) (options: 1:1, 16:9)"
    ]


def _cli(tmp_path: Path, emu: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMINA_", "GITHUB_STEP"))}
    env.update(LAMINA_BASE_URL=emu.base_url, LAMINA_API_KEY=emu.key)
    return subprocess.run(
        [sys.executable, "-m", "lamina_batch", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


KEYED_PIPELINE = """version: 1
matrix:
  key: sku
  rows:
    - {sku: A1, name: mug}
    - {sku: A2, name: cup}
steps:
  - id: hero
    app: app_7Hk2
    inputs:
      prompt: "Studio photo of {{ row.name }}"
      aspect_ratio: "16:9"
run:
  poll_interval: 1s
  rate_limit: 100/s
"""


def test_pipeline_keyed_by_parameter_keys_validates_runs_and_resumes(tmp_path: Path, emulator: Any) -> None:
    """The real CLI: a pipeline keyed by keys passes validate --check-apps, runs on the emulator with the
    inputs sent as written, and a second run starts nothing."""
    (tmp_path / "pipeline.yaml").write_text(KEYED_PIPELINE, encoding="utf-8")
    checked = _cli(tmp_path, emulator, "validate", "pipeline.yaml", "--check-apps")
    assert checked.returncode == 0, checked.stderr
    ran = _cli(tmp_path, emulator, "run", "pipeline.yaml", "--no-progress")
    assert ran.returncode == 0, ran.stderr
    assert emulator.stats.starts == 2
    assert set(emulator.stats.starts_by_inputs) == {
        ("app_7Hk2", '{"Aspect Ratio":"16:9","Prompt":"Studio photo of mug"}'),
        ("app_7Hk2", '{"Aspect Ratio":"16:9","Prompt":"Studio photo of cup"}'),
    }
    again = _cli(tmp_path, emulator, "run", "pipeline.yaml", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert emulator.stats.starts == 2


def test_two_spellings_of_one_parameter_exit_2_with_no_start(tmp_path: Path, emulator: Any) -> None:
    """The real CLI: `prompt` and `Prompt` in one step is exit 2, one line naming both lines, 0 starts."""
    text = KEYED_PIPELINE.replace('      aspect_ratio: "16:9"\n', '      Prompt: "again"\n')
    (tmp_path / "pipeline.yaml").write_text(text, encoding="utf-8")
    ran = _cli(tmp_path, emulator, "run", "pipeline.yaml", "--no-progress")
    assert ran.returncode == 2, ran.stderr
    assert "inputs 'prompt' (line 11) and 'Prompt' (line 12) all set 'prompt' (Prompt)" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert emulator.stats.starts == 0
