"""`<Choices>` on an Image: whole-image classification, single or multiple."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import ClassDef, Converter, parse_prompts


class ChoicesConverter(Converter):
    tag = "Choices"
    result_type = "choices"

    def classes(self, control: Any, config_xml: str) -> tuple[ClassDef, ...]:
        # control.labels holds what results store (a choice's alias if it has one, else its value).
        out = []
        for label in control.labels:
            attrs = control.labels_attrs.get(label, {})
            attrs = getattr(attrs, "attr", attrs) or {}
            display = str(attrs.get("value", label))
            out.append(ClassDef(label=label, prompts=parse_prompts(attrs, display), value=(label,)))
        return tuple(out)

    def region_value(self, selected: Sequence[ClassDef]) -> dict[str, Any]:
        return {"choices": [c.value[0] for c in selected]}
