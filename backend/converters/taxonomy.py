"""`<Taxonomy>` on an Image: every node (or every leaf with leafsOnly="true") is a class; a selected
node is stored as its path from the root."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import LabelConfigError
from .base import ClassDef, Converter, parse_prompts

# Joins a node's path into its class key (unique even when two branches share a leaf name).
PATH_SEPARATOR = " > "


class TaxonomyConverter(Converter):
    tag = "Taxonomy"
    result_type = "taxonomy"

    def is_single(self, control: Any) -> bool:
        # A taxonomy allows several selections unless maxUsages="1".
        return str(control.attr.get("maxUsages", "")).strip() == "1"

    def classes(self, control: Any, config_xml: str) -> tuple[ClassDef, ...]:
        try:
            root = ET.fromstring(config_xml)
        except ET.ParseError as e:
            raise LabelConfigError(f"label config is not XML: {e}") from e
        node = next((el for el in root.iter("Taxonomy") if el.get("name") == control.name), None)
        if node is None:
            return ()
        leafs_only = str(control.attr.get("leafsOnly", "")).lower() == "true"
        out = []
        for path, element, is_leaf in _walk(node, ()):
            if leafs_only and not is_leaf:
                continue
            display = element.get("value", "")
            out.append(
                ClassDef(label=PATH_SEPARATOR.join(path), prompts=parse_prompts(element.attrib, display), value=path)
            )
        return tuple(out)

    def region_value(self, selected: Sequence[ClassDef]) -> dict[str, Any]:
        return {"taxonomy": [list(c.value) for c in selected]}


def _walk(element: ET.Element, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], ET.Element, bool]]:
    for child in element:
        if child.tag != "Choice":
            continue
        stored = child.get("alias") or child.get("value")
        if not stored:
            continue
        path = (*prefix, stored)
        children = [c for c in child if c.tag == "Choice"]
        yield path, child, not children
        yield from _walk(child, path)
