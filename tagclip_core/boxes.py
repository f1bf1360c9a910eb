"""Boxes around the high part of a score map on the patch grid (the reference's scoremap2bbox).

The map is truncated to uint8 (map * 255), thresholded at int(threshold * max_uint8), and one bounding box
is taken per external contour (OpenCV, 8-connected). The reference clips each box's x1/y1 to width-1 and
height-1, so a box touching the right/bottom edge loses that column/row; `clip_edges` keeps that quirk.
"""

from __future__ import annotations

import cv2
import numpy as np


def contour_boxes(score_map: np.ndarray, threshold: float, clip_edges: bool = True) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1), exclusive x1/y1, of the contours of a [h, w] float32 map in [0, 1].

    threshold is relative to the map's maximum (after the uint8 truncation). No contour: no box (the
    reference's [0, 0, 0, 0] box covers nothing either).
    """
    height, width = score_map.shape
    quantised = (score_map.astype(np.float32) * 255).astype(np.uint8)
    # float32 product, truncated, exactly as the reference (a float32 tensor times a uint8 max).
    level = int(np.float32(threshold) * np.float32(quantised.max()))
    _, binary = cv2.threshold(quantised, level, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        x1, y1 = x + w, y + h
        if clip_edges:
            x1, y1 = min(x1, width - 1), min(y1, height - 1)
        boxes.append((x, y, x1, y1))
    return boxes


def box_mask(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """bool [h, w]: True inside any of the boxes (x0, y0, x1, y1), exclusive ends."""
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask
