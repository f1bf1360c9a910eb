"""CWR steps on hand-computed cases: candidates, crop boxes with edge clipping, the early-return quirk, fusion."""

from __future__ import annotations

import pytest
import torch

from tagclip_core.reidentify import (
    CropBox,
    candidate_columns,
    class_token_mask,
    crop_box,
    crop_inputs,
    fuse,
    select_crops,
)

pytestmark = pytest.mark.unit


def test_candidates_use_min_and_max_of_the_whole_refined_matrix():
    refined = torch.tensor([[0.0, 0.2, 0.9, 1.0], [0.1, 0.7, 0.3, 0.0]])  # min 0, max 1 -> threshold 0.5
    local = refined.max(dim=0).values[:3]  # 0.1, 0.7, 0.9 for the 3 user columns; column 3 is background
    assert candidate_columns(refined, local, 0.5) == [1, 2]


def test_crop_box_exclusive_ends_clipped_to_grid_minus_one():
    column = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.9, 0.0, 0.8, 0.7])  # 3x3 grid, high block bottom-right
    box, mask = crop_box(column, (3, 3), 0.5, clip_edges=True)
    assert box == CropBox(y0=1, y1=2, x0=1, x1=2)
    assert mask.tolist() == [[False, False, False], [False, True, True], [False, True, True]]
    box, _ = crop_box(column, (3, 3), 0.5, clip_edges=False)
    assert box == CropBox(y0=1, y1=3, x0=1, x1=3)


def test_mask_in_last_row_only_is_an_empty_box_with_clipping():
    column = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # 2x3 grid, only the last row
    assert crop_box(column, (2, 3), 0.5, clip_edges=True)[0] is None
    assert crop_box(column, (2, 3), 0.5, clip_edges=False)[0] == CropBox(1, 2, 1, 3)


def test_early_return_stops_at_the_first_empty_box():
    grid = (3, 3)
    good = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # top-left 2x2
    edge = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # last row only -> empty after clipping
    refined = torch.stack([good, edge, good], dim=1)
    quirk = select_crops(refined, [0, 1, 2], grid, 0.5, clip_edges=True, stop_at_empty=True)
    assert [column for column, _, _ in quirk] == [0]
    fixed = select_crops(refined, [0, 1, 2], grid, 0.5, clip_edges=True, stop_at_empty=False)
    assert [column for column, _, _ in fixed] == [0, 2]


def test_crop_inputs_resize_pixels_bilinear_and_mask_nearest():
    pixels = torch.arange(3 * 32 * 48, dtype=torch.float32).reshape(3, 32, 48)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    crop, keep = crop_inputs(pixels, mask, CropBox(0, 2, 0, 2), patch_size=16, input_grid=(4, 4))
    assert crop.shape == (3, 64, 64)
    expected_keep = [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert keep.reshape(4, 4).int().tolist() == expected_keep


def test_class_token_mask_only_touches_the_class_query_row():
    keep = torch.tensor([True, False, True])
    mask = class_token_mask(keep, -1000.0, torch.float32)
    assert mask.tolist() == [[0.0, 0.0, -1000.0, 0.0]] + [[0.0] * 4] * 3


def test_fuse_averages_local_and_global_for_reidentified_columns():
    local = torch.tensor([0.2, 0.4, 0.6])
    assert fuse(local, [1], [torch.tensor(0.8)], 0.5).tolist() == pytest.approx([0.2, 0.6, 0.6])
