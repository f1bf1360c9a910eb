"""Masks as geometry: connected regions with boxes, simplified polygons and scores, and the neutral
run-length form masks cross the queue in. numpy and OpenCV only.

Neutral run-length form (COCO's uncompressed RLE, readable by pycocotools' `frPyObjects`):
    {"size": [height, width], "counts": [n0, n1, n2, ...]}
The mask is read in COLUMN-MAJOR order (down the first column, then the next); counts alternate runs of
0 and 1 starting with 0 (so counts[0] may be 0), and sum to height * width.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# cv2.connectedComponentsWithStats: 8-connected pixels form one region (as findContours' outer contours).
_CONNECTIVITY = 8


@dataclass(frozen=True)
class Region:
    """One connected component of a tag's mask, in original-image pixels.

    box: (x, y, width, height) of the component's pixels.
    polygon: simplified outer contour, (x, y) integer pixel coordinates (holes are not represented).
    area: number of pixels.
    score: mean of the tag's score map over the component's pixels.
    """

    box: tuple[int, int, int, int]
    polygon: tuple[tuple[int, int], ...]
    area: int
    score: float

    def to_json(self) -> dict:
        return {
            "bbox": list(self.box),
            "polygon": [list(p) for p in self.polygon],
            "area": self.area,
            "score": round(self.score, 6),
        }


def rle_encode(mask: np.ndarray) -> dict:
    """Neutral run-length form of a 2-D mask (nonzero = foreground); see the module docstring."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """bool [height, width] mask from the neutral run-length form."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"run lengths sum to {int(counts.sum())}, expected {height} * {width}")
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape((height, width), order="F")


def _polygon(component: np.ndarray, origin: tuple[int, int], epsilon: float) -> tuple[tuple[int, int], ...]:
    """Simplified outer contour of one component given as a bool crop whose top-left pixel is `origin`."""
    padded = np.pad(component.astype(np.uint8), 1)
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=cv2.contourArea)
    simplified = cv2.approxPolyDP(contour, epsilon * cv2.arcLength(contour, True), True)
    x0, y0 = origin
    return tuple((int(x) + x0 - 1, int(y) + y0 - 1) for x, y in simplified[:, 0])


def mask_regions(
    mask: np.ndarray, score_map: np.ndarray, min_area: int, polygon_epsilon: float
) -> tuple[np.ndarray, tuple[Region, ...]]:
    """Connected regions of a mask and the mask without the regions smaller than `min_area` pixels.

    mask: bool [H, W]; score_map: [H, W] (e.g. the tag's CAM) averaged over each region for its score.
    A region whose simplified polygon has fewer than 3 points gets its box's corners (pixel edges).
    Returns (kept bool [H, W], regions ordered by component label, i.e. top-to-bottom scan order).
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=_CONNECTIVITY)
    areas = stats[:, cv2.CC_STAT_AREA]
    sums = np.bincount(labels.ravel(), weights=score_map.astype(np.float64).ravel(), minlength=count)
    keep = np.zeros(count, dtype=bool)
    regions = []
    for index in range(1, count):
        area = int(areas[index])
        if area < min_area:
            continue
        keep[index] = True
        x, y, w, h = (int(v) for v in stats[index, :4])
        polygon = _polygon(labels[y : y + h, x : x + w] == index, (x, y), polygon_epsilon)
        if len(polygon) < 3:
            polygon = ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
        regions.append(Region(box=(x, y, w, h), polygon=polygon, area=area, score=float(sums[index] / area)))
    return keep[labels], tuple(regions)
