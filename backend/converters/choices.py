"""`<Choices>` on an Image: whole-image classification, single or multiple."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import ClassDef, Converter, label_classes


class ChoicesConverter(Converter):
    tag = "Choices"
    result_type = "choices"

    def classes(self, control: Any, config_xml: str) -> tuple[ClassDef, ...]:
        return label_classes(control)

    def region_value(self, selected: Sequence[ClassDef]) -> dict[str, Any]:
        return {"choices": [c.value[0] for c in selected]}
