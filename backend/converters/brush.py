"""`<BrushLabels>` on an Image: one brush region per selected label, its whole mask as Label Studio RLE."""

from __future__ import annotations

from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import mask2rle

from tagclip_core.geometry import rle_decode

from .regions import LabelMask, MaskOutput, RegionConverter

# Label Studio draws the brush mask's value as its alpha: a 0/1 mask is stored but invisible.
FOREGROUND = 255


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a 2-D mask (nonzero = foreground), encoded as 0/255."""
    return mask2rle(np.where(mask, FOREGROUND, 0).astype(np.uint8))


class BrushLabelsConverter(RegionConverter):
    tag = "BrushLabels"
    result_type = "brushlabels"
    labels_key = "brushlabels"

    def tag_values(self, tag: LabelMask, output: MaskOutput, min_area: int) -> list[tuple[int, dict[str, Any], float]]:
        mask = rle_decode(tag.rle)
        if mask.shape != (output.height, output.width):
            raise ValueError(f"mask of {tag.label!r} is {mask.shape}, the image is {(output.height, output.width)}")
        if not mask.any():
            return []
        return [(0, {"format": "rle", "rle": brush_rle(mask)}, tag.score)]
