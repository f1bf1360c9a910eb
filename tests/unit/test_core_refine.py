"""DMAR steps on hand-computed cases: contour boxes with the reference's edge clipping, vote mask, refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagclip_core.boxes import box_mask, contour_boxes
from tagclip_core.refine import coarse_probs, dmar, normalise_columns, refinement_matrix

pytestmark = pytest.mark.unit


def test_two_blobs_give_two_boxes():
    score = np.zeros((6, 8), dtype=np.float32)
    score[1:3, 1:3] = 1.0
    score[4, 5:7] = 0.9
    boxes = sorted(contour_boxes(score, threshold=0.5, clip_edges=True))
    assert boxes == [(1, 1, 3, 3), (5, 4, 7, 5)]


def test_box_touching_right_and_bottom_edge_loses_that_column_and_row():
    score = np.zeros((4, 5), dtype=np.float32)
    score[2:4, 3:5] = 1.0  # the bottom-right 2x2 corner
    assert contour_boxes(score, 0.5, clip_edges=True) == [(3, 2, 4, 3)]
    assert contour_boxes(score, 0.5, clip_edges=False) == [(3, 2, 5, 4)]
    assert box_mask((4, 5), [(3, 2, 4, 3)]).sum() == 1


def test_threshold_uses_uint8_truncation_of_the_map():
    # 0.5 * 255 = 127.5 -> 127 (uint8 truncation); threshold 0.5 of max 255 -> int(127.5) = 127; strict ">".
    score = np.array([[0.5, 1.0]], dtype=np.float32)
    boxes = contour_boxes(np.vstack([score, score]), 0.5, clip_edges=False)
    assert boxes == [(1, 0, 2, 2)]


def test_no_contour_means_no_box():
    assert contour_boxes(np.zeros((3, 3), dtype=np.float32), 0.5) == []


def test_vote_mask_keeps_pairs_with_at_least_min_layers():
    votes = torch.tensor([[4, 3], [0, 12]], dtype=torch.uint8)
    mean = torch.tensor([[0.2, 0.3], [0.4, 0.1]])
    torch.testing.assert_close(refinement_matrix(votes, mean, 4), torch.tensor([[0.2, 0.0], [0.0, 0.1]]))


def test_coarse_probs_softmax_over_all_columns():
    tokens = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    probs = coarse_probs(tokens, text, torch.tensor(1.0))
    expected = torch.softmax(torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]]), dim=-1)
    torch.testing.assert_close(probs, expected)


def test_normalise_columns_min_max():
    scores = torch.tensor([[1.0, 5.0], [3.0, 1.0], [2.0, 3.0]])
    assert normalise_columns(scores).tolist() == [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]


def test_dmar_equals_the_per_class_loop_of_the_reference():
    generator = torch.Generator().manual_seed(0)
    grid = (4, 5)
    n, c = 20, 6
    attention = torch.rand(n, n, generator=generator) * (torch.rand(n, n, generator=generator) > 0.4)
    coarse = torch.softmax(torch.randn(n, c, generator=generator) * 3, dim=-1)
    refined = dmar(coarse, attention, grid, clip_edges=True)
    first = attention @ coarse
    for column in range(c):
        values = first[:, column]
        normalised = (values - values.min()) / (values - values.min()).max()
        boxes = contour_boxes(normalised.reshape(grid).numpy(), float(normalised.mean()), clip_edges=True)
        mask = torch.from_numpy(box_mask(grid, boxes).reshape(1, -1)).float()
        expected = (attention * mask) @ coarse[:, column]
        torch.testing.assert_close(refined[:, column], expected, atol=1e-6, rtol=1e-5)
