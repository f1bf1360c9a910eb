"""One converter per Label Studio control tag type. Each has a match predicate, builds the control's
class list (its label map), and turns the worker's plain output into regions with a pure `to_regions`.

Choices and Taxonomy label the whole image; BrushLabels, RectangleLabels and PolygonLabels draw regions from
the worker's masks (see `regions.py`), whose mode and minimum size come from tag attributes over
`MaskDefaults` (the project's extra_params).
"""

from __future__ import annotations

from .base import ClassDef, ControlOutput, ControlPlan, Converter
from .brush import BrushLabelsConverter
from .choices import ChoicesConverter
from .polygon import PolygonLabelsConverter
from .rectangle import RectangleLabelsConverter
from .regions import MaskDefaults, RegionConverter, RegionPlan
from .taxonomy import TaxonomyConverter

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
