"""`<PolygonLabels>` on an Image: one polygon (simplified outer contour) per connected region, in percent."""

from __future__ import annotations

from typing import Any

from .regions import LabelMask, MaskOutput, RegionConverter, kept_regions, percent

# Label Studio needs at least a triangle.
MIN_POINTS = 3


class PolygonLabelsConverter(RegionConverter):
    tag = "PolygonLabels"
    result_type = "polygonlabels"
    labels_key = "polygonlabels"

    def tag_values(self, tag: LabelMask, output: MaskOutput, min_area: int) -> list[tuple[int, dict[str, Any], float]]:
        values = []
        for index, region in kept_regions(tag, min_area):
            points = [[percent(x, output.width), percent(y, output.height)] for x, y in region["polygon"]]
            if len(points) < MIN_POINTS:
                continue
            values.append((index, {"points": points, "closed": True}, float(region.get("score", tag.score))))
        return values
