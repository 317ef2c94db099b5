"""Tests for preflight.py: rendered inputs checked against live app definitions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lamina_batch.errors import AuthError, NotFoundError, Problem
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
from lamina_batch.preflight import check_apps

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


def test_wrong_case_or_api_key_name_suggests_exact_name() -> None:
    """`prompt` (the parameter key, or wrong case) suggests the exact name `Prompt`."""
    s = step({"prompt": "x"})
    problems = check(pipeline(s), FakeApps(HERO), [])
    unknown = [p for p in problems if "no parameter" in p.message]
    assert unknown
    assert unknown[0].hint is not None
    assert "'Prompt'" in unknown[0].hint


def test_missing_parameter_without_default_ignores_required_flag() -> None:
    """A parameter with no default must be set even if `required` is false; a `required` one with a
    default need not be."""
    s = step({"Aspect Ratio": "1:1"})
    problems = check(pipeline(s), FakeApps(HERO), [plan(1, (s, {"Aspect Ratio": "1:1"}))])
    assert len(problems) == 1
    assert "'Prompt'" in problems[0].message
    assert "no default" in problems[0].message


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


def test_problems_are_deduplicated_and_capped() -> None:
    """Identical problems appear once; past the cap a final line counts the rest."""
    s = step({"Prompt": "x", "Aspect Ratio": "{{ row.ar }}"})
    plans = [plan(n, (s, {"Prompt": "x", "Aspect Ratio": "bad"})) for n in range(1, 101)]
    plans += [plan(1, (s, {"Prompt": "x", "Aspect Ratio": "bad"}))]  # a duplicate of row 1's problem
    problems = check(pipeline(s), FakeApps(HERO), plans, max_problems=10)
    assert len(problems) == 11
    assert len(set(problems)) == 11
    assert problems[-1].message == "... and 90 more problems not shown"


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


@pytest.mark.parametrize("values_cap", [1000, 50])
def test_digest_gives_the_same_problems_as_rendering_again(tmp_path: Path, values_cap: int) -> None:
    """Checked from the local check's digest (all values kept, or too many URLs kept to fall back to
    rendering), the preflight reports exactly what rendering every row again reports, in the same order."""
    from lamina_batch.matrix import InputDigest, expand_runs, validate_pipeline

    p = _digest_pipeline(tmp_path)
    again = check(p, FakeApps(HERO), list(expand_runs(p)), max_problems=30)
    digest = InputDigest(values_cap=values_cap)
    validate_pipeline(p, digest=digest)
    assert digest.totals == {"hero": 240}
    assert check(p, FakeApps(HERO), list(expand_runs(p)), max_problems=30, digest=digest) == again
    assert again[-1].message.startswith("... and ")
    assert any("row 2 (S2): 'bad' is not an option" in str(x) for x in again)


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
