"""DMAR, dual-masking attention refinement: coarse patch scores refined by attention and class boxes.

All functions take one image: N patches on a (gh, gw) grid and C text columns (user prompts, then
background words).
"""

from __future__ import annotations

import torch

from .boxes import box_mask, contour_boxes


def coarse_probs(tokens: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """P_coarse [N, C]: per-patch softmax over all columns of logit_scale * tokens @ text.T.

    tokens: [N, E] L2-normalised patch embeddings (class token dropped); text: [C, E] normalised columns.
    """
    return (logit_scale * tokens @ text.t()).softmax(dim=-1)


def refinement_matrix(vote_count: torch.Tensor, refine_mean: torch.Tensor, min_layers: int) -> torch.Tensor:
    """A [N, N]: mean attention of the refinement blocks, kept where >= min_layers blocks vote for the pair."""
    return refine_mean * (vote_count >= min_layers).float()


def normalise_columns(scores: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each column of [N, C] to [0, 1] over the patches.

    A constant column is all 0 (the reference divides 0 by 0 there and feeds NaN to OpenCV).
    """
    shifted = scores - scores.min(dim=0).values
    peak = shifted.max(dim=0).values
    return torch.where(peak > 0, shifted / peak, torch.zeros_like(shifted))


def class_box_masks(refined: torch.Tensor, grid: tuple[int, int], clip_edges: bool) -> torch.Tensor:
    """[N, C] float 0/1: per column, the union of the contour boxes of its normalised map at its mean."""
    normalised = normalise_columns(refined)
    # Per-column means over contiguous rows: the same reduction as the reference's 1-D mean.
    thresholds = normalised.t().contiguous().mean(dim=1).cpu().numpy()
    maps = normalised.t().reshape(-1, *grid).cpu().numpy()
    masks = torch.zeros_like(refined)
    for column in range(refined.shape[1]):
        boxes = contour_boxes(maps[column], float(thresholds[column]), clip_edges)
        masks[:, column] = torch.from_numpy(box_mask(grid, boxes).reshape(-1)).to(masks)
    return masks


def dmar(coarse: torch.Tensor, attention: torch.Tensor, grid: tuple[int, int], clip_edges: bool) -> torch.Tensor:
    """Refined scores [N, C] from P_coarse [N, C] and the refinement matrix A [N, N].

    First refinement: A @ P_coarse. Then, for every column with a positive maximum, (A * B_c) @ P_coarse[:, c]
    with B_c the class box mask over source patches; A @ (B_c * p_c) is the same product, done for all
    columns in one matrix multiply.
    """
    first = attention @ coarse
    masks = class_box_masks(first, grid, clip_edges)
    refined = attention @ (masks * coarse)
    positive = first.max(dim=0).values > 0
    return torch.where(positive[None, :], refined, first)
