"""`<RectangleLabels>` on an Image: one box per connected region of a selected label, in percent."""

from __future__ import annotations

from typing import Any

from .regions import LabelMask, MaskOutput, RegionConverter, kept_regions, percent


class RectangleLabelsConverter(RegionConverter):
    tag = "RectangleLabels"
    result_type = "rectanglelabels"
    labels_key = "rectanglelabels"

    def tag_values(self, tag: LabelMask, output: MaskOutput, min_area: int) -> list[tuple[int, dict[str, Any], float]]:
        values = []
        for index, region in kept_regions(tag, min_area):
            x, y, w, h = (float(v) for v in region["bbox"])
            value = {
                "x": percent(x, output.width),
                "y": percent(y, output.height),
                "width": percent(w, output.width),
                "height": percent(h, output.height),
                "rotation": 0,
            }
            values.append((index, value, float(region.get("score", tag.score))))
        return values
