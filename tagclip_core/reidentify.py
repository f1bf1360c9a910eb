"""CWR, class-wise re-identification: re-score likely classes on a crop around their evidence.

For each candidate column: the patches where its normalised refined score is above a threshold give a
box and a mask; the preprocessed image is cropped to the box and resized to the model's input size, and
CLIP's class token, allowed to attend only to the masked patches (in every block), re-scores the column.
The crops of all candidates are encoded in one batched forward, each with its own mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .refine import normalise_columns


@dataclass(frozen=True)
class CropBox:
    """A crop on the patch grid: rows y0:y1, columns x0:x1 (exclusive ends)."""

    y0: int
    y1: int
    x0: int
    x1: int


def candidate_columns(refined: torch.Tensor, local: torch.Tensor, rel_threshold: float) -> list[int]:
    """Columns c < len(local) with local[c] > min + rel * (max - min), min/max over all of refined [N, C]."""
    low, high = refined.min(), refined.max()
    threshold = low + rel_threshold * (high - low)
    return [int(c) for c in torch.nonzero(local > threshold).flatten()]


def crop_box(
    normalised_column: torch.Tensor, grid: tuple[int, int], mask_threshold: float, clip_edges: bool
) -> tuple[CropBox | None, torch.Tensor]:
    """The box around patches above mask_threshold (None when empty) and the bool mask [gh, gw].

    The reference clips the exclusive ends to grid-1, so a box touching the bottom/right edge loses that
    row/column, and a mask in the last row or column only is empty; `clip_edges` keeps that quirk.
    """
    mask = (normalised_column > mask_threshold).reshape(grid)
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if len(rows) == 0:
        return None, mask
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if clip_edges:
        y1, x1 = min(y1, grid[0] - 1), min(x1, grid[1] - 1)
    if y0 >= y1 or x0 >= x1:
        return None, mask
    return CropBox(y0, y1, x0, x1), mask


def crop_inputs(
    pixels: torch.Tensor, mask: torch.Tensor, box: CropBox, patch_size: int, input_grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(crop [3, S, S] bilinear-resized pixels, keep [S/ps * S/ps] bool patch mask, nearest-resized).

    pixels: [3, H, W] preprocessed image; mask: [gh, gw] bool.
    """
    size = (input_grid[0] * patch_size, input_grid[1] * patch_size)
    region = pixels[:, box.y0 * patch_size : box.y1 * patch_size, box.x0 * patch_size : box.x1 * patch_size]
    crop = F.interpolate(region[None], size=size, mode="bilinear", align_corners=False)[0]
    region_mask = mask[box.y0 : box.y1, box.x0 : box.x1].float()[None, None]
    keep = F.interpolate(region_mask, size=input_grid, mode="nearest").reshape(-1).bool()
    return crop, keep


def class_token_mask(keep: torch.Tensor, outside_value: float, dtype: torch.dtype) -> torch.Tensor:
    """Additive [1 + n, 1 + n] mask: the class token's query row gets outside_value at dropped patches."""
    tokens = keep.numel() + 1
    mask = torch.zeros(tokens, tokens, dtype=dtype, device=keep.device)
    mask[0, 1:] = torch.where(keep, 0.0, outside_value).to(dtype)
    return mask


def select_crops(
    refined: torch.Tensor,
    candidates: list[int],
    grid: tuple[int, int],
    mask_threshold: float,
    clip_edges: bool,
    stop_at_empty: bool,
) -> list[tuple[int, CropBox, torch.Tensor]]:
    """(column, box, mask) for each candidate that gets re-identified, in candidate order.

    The reference stops at the first candidate with an empty box (it and later candidates keep their
    local score); with stop_at_empty False only that candidate is skipped.
    """
    normalised = normalise_columns(refined[:, candidates]) if candidates else refined[:, :0]
    selected = []
    for position, column in enumerate(candidates):
        box, mask = crop_box(normalised[:, position], grid, mask_threshold, clip_edges)
        if box is None:
            if stop_at_empty:
                break
            continue
        selected.append((column, box, mask))
    return selected


def fuse(local: torch.Tensor, columns: list[int], global_scores: torch.Tensor, weight: float) -> torch.Tensor:
    """Final scores: weight * local + (1 - weight) * global for the re-identified columns, local elsewhere."""
    final = local.clone()
    for column, score in zip(columns, global_scores, strict=True):
        final[column] = weight * local[column] + (1 - weight) * score
    return final
