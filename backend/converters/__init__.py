"""One converter per Label Studio control tag type. Each has a match predicate, builds the control's
class list (its label map), and turns the worker's plain output into regions with a pure `to_regions`.

Choices and Taxonomy label the whole image; BrushLabels, RectangleLabels and PolygonLabels draw regions from
the worker's masks (see `regions.py`), whose mode and minimum size come from tag attributes over
`MaskDefaults` (the project's extra_params).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import ClassDef, ControlOutput, ControlPlan, Converter
from .brush import BrushLabelsConverter
from .choices import ChoicesConverter
from .polygon import PolygonLabelsConverter
from .rectangle import RectangleLabelsConverter
from .regions import MaskDefaults, RegionConverter, RegionPlan
from .taxonomy import TaxonomyConverter

# Region key holding every class's score of a whole-image control (what `tagclip report` needs for AP and
# thresholds); Label Studio stores it with the region and its editor ignores it.
LABEL_SCORES_KEY = "label_scores"
# Region types that label the whole image (their regions get LABEL_SCORES_KEY).
WHOLE_IMAGE_TYPES = ("choices", "taxonomy")

CONVERTERS: tuple[Converter, ...] = (
    ChoicesConverter(),
    TaxonomyConverter(),
    BrushLabelsConverter(),
    RectangleLabelsConverter(),
    PolygonLabelsConverter(),
)


def converters_with(mask_defaults: MaskDefaults | None) -> tuple[Converter, ...]:
    """CONVERTERS, the region converters built with `mask_defaults` (None: the built-in defaults)."""
    if mask_defaults is None or mask_defaults == MaskDefaults():
        return CONVERTERS
    return tuple(type(c)(mask_defaults) if isinstance(c, RegionConverter) else c for c in CONVERTERS)


def converter_for(plan: ControlPlan) -> Converter:
    """The converter that planned `plan` (by tag name)."""
    for converter in CONVERTERS:
        if converter.tag == plan.tag:
            return converter
    raise KeyError(f"no converter for control tag {plan.tag!r}")


__all__ = [
    "CONVERTERS",
    "ClassDef",
    "ControlOutput",
    "ControlPlan",
    "Converter",
    "MaskDefaults",
    "RegionPlan",
    "converter_for",
    "converters_with",
]


def task_regions(outputs: Mapping[str, Any], controls: Sequence[ControlPlan]) -> list[dict[str, Any]]:
    """The worker's outputs of one task -> its result regions, in control order, with every class's score on
    whole-image regions (LABEL_SCORES_KEY). Used by /predict and by the bulk path alike."""
    regions: list[dict[str, Any]] = []
    for plan in controls:
        if plan.name not in outputs:
            continue
        converter = converter_for(plan)
        made = converter.to_regions(converter.read_output(outputs[plan.name]), plan)
        scores = label_scores(outputs[plan.name], plan)
        for region in made:
            if region.get("type") in WHOLE_IMAGE_TYPES and scores:
                region[LABEL_SCORES_KEY] = scores
        regions.extend(made)
    return regions


def label_scores(output: Mapping[str, Any], plan: ControlPlan) -> dict[str, float]:
    """Every class's score for one control, keyed by the class label (config order)."""
    by_label = dict(zip(output.get("labels", []), output.get("scores", []), strict=False))
    return {c.label: float(by_label[c.label]) for c in plan.classes if c.label in by_label}
