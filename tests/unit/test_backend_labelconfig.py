"""Label config -> prediction plan, table-driven over real Label Studio configs (label-studio-sdk)."""

from __future__ import annotations

import pytest

from backend.converters import MaskDefaults
from backend.errors import LabelConfigError
from backend.labelconfig import LabelConfigCache, parse_label_config

pytestmark = pytest.mark.unit

IMG = '<Image name="image" value="$image"/>'

# (config, expected controls as (name, tag, to_name, data_key, single, threshold, [(label, prompts)]), skipped count)
CASES = {
    "multi_choices_with_prompts": (
        f'<View>{IMG}<Choices name="tags" toName="image" choice="multiple">'
        '<Choice value="Cat" predicted_values="cat, kitten"/><Choice value="Dog"/></Choices></View>',
        [("tags", "Choices", "image", "image", False, None, [("Cat", ("cat", "kitten")), ("Dog", ("Dog",))])],
        0,
    ),
    "single_choice_default": (
        f'<View>{IMG}<Choices name="kind" toName="image"><Choice value="A"/><Choice value="B"/></Choices></View>',
        [("kind", "Choices", "image", "image", True, None, [("A", ("A",)), ("B", ("B",))])],
        0,
    ),
    "threshold_attribute": (
        f'<View>{IMG}<Choices name="t" toName="image" choice="multiple" model_score_threshold="0.25">'
        '<Choice value="A"/></Choices></View>',
        [("t", "Choices", "image", "image", False, 0.25, [("A", ("A",))])],
        0,
    ),
    "alias_stored_value_prompt": (
        f'<View>{IMG}<Choices name="t" toName="image" choice="multiple"><Choice value="Dog" alias="d"/></Choices>'
        "</View>",
        [("t", "Choices", "image", "image", False, None, [("d", ("Dog",))])],
        0,
    ),
    "taxonomy_nested": (
        f'<View>{IMG}<Taxonomy name="tax" toName="image"><Choice value="Animal" predicted_values="animal,creature">'
        '<Choice value="Cat"/></Choice><Choice value="Plant"/></Taxonomy></View>',
        [
            (
                "tax",
                "Taxonomy",
                "image",
                "image",
                False,
                None,
                [("Animal", ("animal", "creature")), ("Animal > Cat", ("Cat",)), ("Plant", ("Plant",))],
            )
        ],
        0,
    ),
    "two_images_two_controls": (
        '<View><Image name="front" value="$front"/><Image name="back" value="$back"/>'
        '<Choices name="f" toName="front" choice="multiple"><Choice value="A"/></Choices>'
        '<Choices name="b" toName="back"><Choice value="B"/><Choice value="C"/></Choices></View>',
        [
            ("f", "Choices", "front", "front", False, None, [("A", ("A",))]),
            ("b", "Choices", "back", "back", True, None, [("B", ("B",)), ("C", ("C",))]),
        ],
        0,
    ),
    "unsupported_controls_are_skipped": (
        f'<View>{IMG}<Text name="txt" value="$text"/>'
        '<Choices name="sent" toName="txt"><Choice value="pos"/></Choices>'
        '<KeyPointLabels name="kp" toName="image"><Label value="Cat"/></KeyPointLabels>'
        '<Choices name="region" toName="image" perRegion="true"><Choice value="x"/></Choices>'
        '<Choices name="dyn" toName="image" value="$options"/></View>',
        [],
        4,
    ),
    "no_controls": (f"<View>{IMG}</View>", [], 0),
    "region_controls_like_choices": (
        f'<View>{IMG}<BrushLabels name="mask" toName="image"><Label value="Cat" predicted_values="cat,kitten"/>'
        '<Label value="Dog"/></BrushLabels><RectangleLabels name="box" toName="image" model_score_threshold="0.4">'
        '<Label value="Car" alias="c"/></RectangleLabels><PolygonLabels name="poly" toName="image">'
        '<Label value="Tree"/></PolygonLabels></View>',
        [
            ("mask", "BrushLabels", "image", "image", False, None, [("Cat", ("cat", "kitten")), ("Dog", ("Dog",))]),
            ("box", "RectangleLabels", "image", "image", False, 0.4, [("c", ("Car",))]),
            ("poly", "PolygonLabels", "image", "image", False, None, [("Tree", ("Tree",))]),
        ],
        0,
    ),
    "region_controls_off_or_not_on_an_image": (
        f'<View>{IMG}<Text name="txt" value="$text"/><BrushLabels name="mask" toName="image" model_masks="false">'
        '<Label value="Cat"/></BrushLabels><RectangleLabels name="box" toName="txt"><Label value="Cat"/>'
        "</RectangleLabels></View>",
        [],
        2,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plan(name):
    config, expected, skipped = CASES[name]
    plan = parse_label_config(config).plan
    got = [
        (c.name, c.tag, c.to_name, c.data_key, c.single, c.threshold, [(k.label, k.prompts) for k in c.classes])
        for c in plan.controls
    ]
    assert got == expected
    assert len(plan.skipped) == skipped, plan.skipped


def test_default_threshold_from_extra_params_applies_unless_the_tag_sets_one():
    config = (
        f'<View>{IMG}<Choices name="a" toName="image" choice="multiple"><Choice value="x"/></Choices>'
        '<Choices name="b" toName="image" choice="multiple" model_score_threshold="0.9"><Choice value="y"/>'
        "</Choices></View>"
    )
    plan = parse_label_config(config, default_threshold=0.3).plan
    assert [c.threshold for c in plan.controls] == [0.3, 0.9]


@pytest.mark.parametrize(
    "config, message",
    [
        ("", "empty"),
        ("<View><Image", "cannot be parsed"),
        ("not xml at all", "cannot be parsed"),
        (
            f'<View>{IMG}<Choices name="t" toName="image" model_score_threshold="high">'
            '<Choice value="A"/></Choices></View>',
            "not a number",
        ),
        (
            f'<View>{IMG}<Choices name="t" toName="image" model_score_threshold="1.5">'
            '<Choice value="A"/></Choices></View>',
            "not in [0, 1]",
        ),
    ],
)
def test_bad_configs_raise_label_config_error(config, message):
    with pytest.raises(LabelConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_label_config(config)


def test_cache_returns_the_same_parse_and_keys_on_threshold():
    cache = LabelConfigCache(size=2)
    config = CASES["single_choice_default"][0]
    assert cache.get(config) is cache.get(config)
    assert cache.get(config, 0.5) is not cache.get(config)


REGIONS = (
    f'<View>{IMG}<Choices name="tags" toName="image" choice="multiple"><Choice value="Cat"/></Choices>'
    '<BrushLabels name="mask" toName="image" model_mask_mode="clip-es"><Label value="Cat"/></BrushLabels>'
    '<RectangleLabels name="box" toName="image" model_min_region_area="9"><Label value="Cat"/></RectangleLabels>'
    '<PolygonLabels name="poly" toName="image" model_masks="true"><Label value="Cat"/></PolygonLabels></View>'
)


def masks_of(plan) -> dict:
    return {c.name: c.to_payload().get("masks") for c in plan.controls}


def test_mask_settings_tag_attribute_over_extra_params_over_defaults():
    plan = parse_label_config(REGIONS).plan
    assert masks_of(plan) == {
        "tags": None,
        "mask": {"mode": "clip-es", "min_region_area": 0, "threshold": None},
        "box": {"mode": "coarse", "min_region_area": 9, "threshold": None},
        "poly": {"mode": "coarse", "min_region_area": 0, "threshold": None},
    }
    assert plan.has_masks
    project = MaskDefaults(mode="clip-es", min_region_area=50)
    assert masks_of(parse_label_config(REGIONS, mask_defaults=project).plan) == {
        "tags": None,
        "mask": {"mode": "clip-es", "min_region_area": 50, "threshold": None},
        "box": {"mode": "clip-es", "min_region_area": 9, "threshold": None},
        "poly": {"mode": "clip-es", "min_region_area": 50, "threshold": None},
    }


def test_masks_off_for_the_project_leave_only_controls_that_insist():
    plan = parse_label_config(REGIONS, mask_defaults=MaskDefaults(enabled=False)).plan
    assert [c.name for c in plan.controls] == ["tags", "poly"]  # poly says model_masks="true"
    assert sum("switched off" in reason for reason in plan.skipped) == 2
    choices_only = REGIONS.replace(' model_masks="true"', "")
    plan = parse_label_config(choices_only, mask_defaults=MaskDefaults(enabled=False)).plan
    assert [c.name for c in plan.controls] == ["tags"] and not plan.has_masks


def test_cache_keys_on_mask_defaults():
    cache = LabelConfigCache()
    assert cache.get(REGIONS) is cache.get(REGIONS)
    off = cache.get(REGIONS, None, MaskDefaults(enabled=False))
    assert off is not cache.get(REGIONS) and len(off.plan.controls) == 2
