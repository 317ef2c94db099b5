"""Tests for params.py: an input names a parameter by key, then name, then id; labels, renames, the table."""

from __future__ import annotations

from lamina_batch.models import AppInfo, AppParameter
from lamina_batch.params import (
    PARAMETER_HEADER,
    canonical_inputs,
    label,
    normalise,
    override_inputs,
    parameter_rows,
    preferred_spelling,
    renamed_inputs,
    resolve_inputs,
    respelled_inputs,
    suggest,
)

APP = AppInfo(
    "app_1",
    "One",
    None,
    (
        AppParameter("id-prompt", "Prompt", "text", key="prompt"),
        AppParameter(
            "id-ar",
            "Aspect Ratio",
            "options",
            key="aspect_ratio",
            options=("1:1", "16:9"),
            default="1:1",
            has_default=True,
        ),
        AppParameter("id-old", "Old Style", "url", accept=("image",)),
    ),
    (),
)
# "Size" is one parameter's key and another's name: the key wins.
TRICKY = AppInfo(
    "app_2",
    "Two",
    None,
    (
        AppParameter("a", "Label", "text", key="Size"),
        AppParameter("b", "Size", "text", key="size"),
        AppParameter("Label", "Third", "text"),
    ),
    (),
)


def test_resolution_order_is_key_then_name_then_id() -> None:
    """`Size` is a key before it is a name; `Label` is a name before it is an id; ids resolve last."""
    r = resolve_inputs(TRICKY, ["Size", "Label", "size"])
    assert {k: p.id for k, p in r.resolved.items()} == {"Size": "a", "Label": "a", "size": "b"}
    assert [(p.id, names) for p, names in r.clashes] == [("a", ("Size", "Label"))]
    assert resolve_inputs(TRICKY, ["b", "Third"]).resolved["b"].name == "Size"
    assert resolve_inputs(APP, ["PROMPT", "prompt"]).unknown == ("PROMPT",)


def test_given_and_labels() -> None:
    """A parameter set by any spelling is given; labels show key and name, or the name alone."""
    r = resolve_inputs(APP, ["id-prompt"])
    assert r.given(APP.parameters[0])
    assert not r.given(APP.parameters[1])
    assert label(APP.parameters[1]) == "'aspect_ratio' (Aspect Ratio)"
    assert label(APP.parameters[2]) == "'Old Style'"
    assert preferred_spelling(APP.parameters[1]) == "aspect_ratio"
    assert preferred_spelling(APP.parameters[2]) == "Old Style"


def test_normalise_ignores_case_punctuation_and_spelling_of_colour() -> None:
    """Normalised names meet across case, spaces, punctuation and colour/color."""
    assert normalise("Product ID") == normalise("product_id")
    assert normalise("Colour") == normalise("color")
    assert normalise("Image Src") == "imagesrc"


def test_suggestions() -> None:
    """Suggestions come from keys, names and ids, closest first; the key is preferred for a case slip."""
    assert suggest(APP, "Promt") == "did you mean 'Prompt'?"
    assert suggest(APP, "aspect-ratio") == "did you mean 'aspect_ratio' (Aspect Ratio)? keys and names are exact"
    assert suggest(APP, "old style") == "did you mean 'Old Style'? keys and names are exact"
    assert suggest(APP, "ID-AR") == "did you mean 'id-ar' (Aspect Ratio)? ids are exact"
    assert suggest(AppInfo("a", "A", None, (), ()), "x") == "it takes no parameters"


def test_renamed_inputs_tell_a_respelling_from_a_change() -> None:
    """Two mappings that set the same parameters to the same values are a rename, with the spellings that
    changed; a changed value, an added input, a clash or no change at all is not."""
    before = {"Prompt": "x", "aspect_ratio": "16:9"}
    assert renamed_inputs(APP, before, {"prompt": "x", "aspect_ratio": "16:9"}) == (("Prompt", "prompt"),)
    assert renamed_inputs(APP, before, {"id-ar": "16:9", "prompt": "x"}) == (
        ("aspect_ratio", "id-ar"),
        ("Prompt", "prompt"),
    )
    assert renamed_inputs(APP, before, before) is None
    assert renamed_inputs(APP, before, {"prompt": "y", "aspect_ratio": "16:9"}) is None
    assert renamed_inputs(APP, before, {"prompt": "x", "aspect_ratio": "16:9", "Old Style": "u"}) is None
    assert renamed_inputs(APP, before, {"prompt": "x", "Prompt": "x", "aspect_ratio": "16:9"}) is None
    assert canonical_inputs(APP, {"nope": 1}) == {"input\x00nope": 1}


def test_parameter_rows_for_apps_show() -> None:
    """`apps show` rows: key (or -), name, type, required or default, options or accepts."""
    assert PARAMETER_HEADER[:2] == ("KEY", "NAME")
    assert parameter_rows(APP) == [
        ["prompt", "Prompt", "text", "required", ""],
        ["aspect_ratio", "Aspect Ratio", "options", 'default "1:1"', "options: 1:1, 16:9"],
        ["-", "Old Style", "url", "required", "accepts: image"],
    ]


def test_respelled_inputs_without_the_app() -> None:
    """Without the app, inputs pair up by normalised spelling: a name and its snake_case key meet."""
    before = {"Prompt": "x", "Aspect Ratio": "16:9"}
    assert respelled_inputs(before, {"prompt": "x", "aspect_ratio": "16:9"}) == (
        ("Prompt", "prompt"),
        ("Aspect Ratio", "aspect_ratio"),
    )
    assert respelled_inputs(before, before) is None
    assert respelled_inputs(before, {"prompt": "y", "aspect_ratio": "16:9"}) is None
    assert respelled_inputs(before, {"prompt": "x"}) is None
    assert respelled_inputs(before, {"prompt": "x", "ratio": "16:9"}) is None
    assert respelled_inputs({"Prompt": "x", "prompt": "x"}, {"PROMPT": "x", "prompt ": "x"}) is None


def test_override_inputs_replace_the_input_setting_the_same_parameter() -> None:
    """An override (review.vary) replaces the input that sets its parameter, keeping that input's spelling;
    one no input sets is added as written."""
    inputs = {"Prompt": "x", "aspect_ratio": "1:1"}
    assert override_inputs(APP, inputs, {"prompt": "y", "id-ar": "16:9", "Old Style": "u", "Seed": "2"}) == {
        "Prompt": "y",
        "aspect_ratio": "16:9",
        "Old Style": "u",
        "Seed": "2",
    }
