"""One converter per Label Studio control tag type. Each has a match predicate, builds the control's
class list (its label map), and turns the worker's plain scores into regions with a pure `to_regions`.
"""

from __future__ import annotations

from .base import ClassDef, ControlOutput, ControlPlan, Converter
from .choices import ChoicesConverter
from .taxonomy import TaxonomyConverter

CONVERTERS: tuple[Converter, ...] = (ChoicesConverter(), TaxonomyConverter())


def converter_for(plan: ControlPlan) -> Converter:
    """The converter that planned `plan` (by tag name)."""
    for converter in CONVERTERS:
        if converter.tag == plan.tag:
            return converter
    raise KeyError(f"no converter for control tag {plan.tag!r}")


__all__ = ["CONVERTERS", "ClassDef", "ControlOutput", "ControlPlan", "Converter", "converter_for"]
