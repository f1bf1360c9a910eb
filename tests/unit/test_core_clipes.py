"""CLIP-ES CLS-SEG: parity with the authors' code (goldens), the batched gradients, and each step by hand.

Goldens (tests/fixtures/golden/clipes_*.json) were produced outside the project by running CLIP-ES's own
generate_cams_voc.py `perform` (device set to the CPU) and eval_cam.py's label map on the 8 parity images:
- clipes_tiny_seed0.json: write_random_checkpoint(TINY_VIT_B_16, seed=0). Random-init attention is nearly
  uniform, so the affinity-refined maps are almost constant (relative range down to 1e-6);
- clipes_tiny_seed0_sharp8.json: the same weights with every visual query/key projection x8 (exact in
  float16), which gives well-conditioned maps (and a forward that amplifies rounding far more).

Tolerances (tests/fixtures/parity.py, tests/fixtures/noise.py) follow from the numbers compared: the forward is
rerun with every weight perturbed by the backward error of one float32 reduction order (sqrt(n) * 2**-24) and
each quantity gets 4x its largest move. A probability p gets p times the logit noise; a min-max normalised map
gets its refined map's tolerance times 4 / (max - min + eps), plus a float16 step; boxes and label-map pixels
are compared only where their margin (to the box threshold, top-1 minus top-2) exceeds twice the tolerance,
and must then agree exactly. So the nearly constant maps of the plain golden get tolerances above 1 after their
min-max (nothing there to compare), the sharp golden's well-conditioned maps get ~1e-3. Every check runs with
1 and with 2 torch threads; tests/unit/test_core_parity_bites.py shows the same checks fail on deliberate mistakes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tagclip_core import clipes
from tagclip_core.config import MaskConfig, ModelSpec, PreprocessConfig
from tagclip_core.images import load_image
from tagclip_core.masks import Segmenter, clipes_prompt
from tagclip_core.model import load_clip
from tagclip_core.preprocess import model_input_size, to_pixels
from tagclip_core.random_weights import TINY_VIT_B_16
from tagclip_core.types import ClassSpec
from tagclip_core.vit import block_forward, interpolate_pos_embed
from tests.fixtures.images import write_parity_images
from tests.fixtures.parity import ClipesParity, load_golden

pytestmark = pytest.mark.unit

GOLDENS = ("clipes_tiny_seed0.json", "clipes_tiny_seed0_sharp8.json")


@pytest.fixture(scope="module")
def parity_paths(tmp_path_factory) -> dict[str, Path]:
    return {p.stem: p for p in write_parity_images(tmp_path_factory.mktemp("parity"))}


@pytest.fixture(scope="module")
def plain_segmenter(tiny_checkpoint) -> Segmenter:
    return Segmenter(load_clip(ModelSpec(checkpoint=str(tiny_checkpoint))))


@pytest.fixture(scope="module")
def sharp_segmenter(sharp_checkpoint) -> Segmenter:
    return Segmenter(load_clip(ModelSpec(checkpoint=str(sharp_checkpoint))))


@pytest.fixture(scope="module")
def parities(plain_segmenter, sharp_segmenter) -> dict[str, ClipesParity]:
    goldens = {name: load_golden(name) for name in GOLDENS}
    return {
        name: ClipesParity(sharp_segmenter if golden["sharpen"] != 1 else plain_segmenter, golden)
        for name, golden in goldens.items()
    }


@pytest.mark.parametrize("golden_name", GOLDENS)
def test_every_stage_matches_reference(golden_name, parities, parity_paths, torch_threads):
    """probs, Grad-CAMs, boxes, refined maps, the float16 full-size maps, label maps and their pixel counts."""
    assert parities[golden_name].golden_mismatches(parity_paths) == []


def test_batched_gradients_equal_one_backward_per_tag(sharp_segmenter, parity_paths):
    """The reference reruns the last block and backpropagates once per tag; one batched VJP gives the same."""
    clip = sharp_segmenter._clip
    image = load_image(parity_paths["blobs256x192"])
    specs = [ClassSpec("a", ("cat",)), ClassSpec("b", ("dog",)), ClassSpec("c", ("bird avian",))]
    size = model_input_size(image.height, image.width, clip.patch_size, None)
    grid = (size[0] // clip.patch_size, size[1] // clip.patch_size)
    with torch.no_grad():
        pos = clipes.clipes_pos_embed(clip.visual.positional_embedding, grid, clip.pretrained_grid)
        tokens, _ = clipes.forward_to_last_block(
            clip.visual, to_pixels(image, size, PreprocessConfig())[None], pos, range(4, 11)
        )
        text = sharp_segmenter.text_columns(specs)
    scale = clip.model.logit_scale.exp()
    _, batched, _ = clipes.last_block_gradients(clip.visual, tokens, text, scale, 3, tags_per_backward=8)
    _, chunked, _ = clipes.last_block_gradients(clip.visual, tokens, text, scale, 3, tags_per_backward=2)
    block = clip.visual.transformer.resblocks[-1]
    for tag in range(3):
        with torch.enable_grad():
            normed = block.ln_1(tokens).detach().requires_grad_(True)
            out = clipes.last_block_from_normed(block, tokens, normed)
            probs = clipes.tag_probabilities(clipes.patch_mean_embedding(clip.visual, out), text, scale)
            (grad,) = torch.autograd.grad(probs[0, tag], normed)
        np.testing.assert_allclose(batched[tag].numpy(), grad[0, 1:].numpy(), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(chunked[tag].numpy(), grad[0, 1:].numpy(), rtol=1e-5, atol=1e-9)


def test_last_block_from_normed_equals_block_forward(plain_segmenter):
    block = plain_segmenter._clip.visual.transformer.resblocks[-1]
    x = torch.randn(2, 11, TINY_VIT_B_16.vision_width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = block_forward(block, x)
        got = clipes.last_block_from_normed(block, x, block.ln_1(x))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_forward_to_last_block_attention_is_mean_of_chosen_blocks(plain_segmenter):
    visual = plain_segmenter._clip.visual
    pixels = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    pos = clipes.clipes_pos_embed(visual.positional_embedding, (3, 4), (14, 14))
    tokens, attention = clipes.forward_to_last_block(visual, pixels, pos, range(4, 12))
    with torch.no_grad():
        from tagclip_core.vit import embed_patches

        x = embed_patches(visual, pixels, pos)
        maps = []
        for index, block in enumerate(visual.transformer.resblocks):
            y, probs = block_forward(block, x, want_probs=True)
            if index >= 4:
                maps.append(probs[0, 1:, 1:])
            if index < 11:
                x = y
    torch.testing.assert_close(tokens, x)
    torch.testing.assert_close(attention, torch.stack(maps).mean(dim=0), rtol=1e-5, atol=1e-7)


def test_affinity_blocks_default_is_four_to_ten():
    cfg = MaskConfig()
    assert list(clipes.affinity_blocks(12, cfg.affinity_layer_start, cfg.affinity_layer_stop)) == list(range(4, 11))


def test_pos_embed_always_rounded_to_fp16():
    pos = torch.randn(197, 8, generator=torch.Generator().manual_seed(2))
    same = clipes.clipes_pos_embed(pos, (14, 14), (14, 14))
    torch.testing.assert_close(same, pos.half().float(), rtol=0, atol=0)
    other = clipes.clipes_pos_embed(pos, (5, 7), (14, 14))
    torch.testing.assert_close(other, interpolate_pos_embed(pos, (5, 7), (14, 14), True), rtol=0, atol=0)
    assert torch.equal(other, other.half().float())


def test_patch_mean_embedding_is_ln_post_mean_then_projection(plain_segmenter):
    visual = plain_segmenter._clip.visual
    tokens = torch.randn(1, 5, TINY_VIT_B_16.vision_width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = visual.ln_post(tokens[0, 1:]).mean(dim=0) @ visual.proj
        torch.testing.assert_close(clipes.patch_mean_embedding(visual, tokens)[0], expected)


def test_tag_probabilities_by_hand():
    embedding = torch.tensor([[3.0, 4.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # cosines 0.6 and 0.8, times 10.
    expected = torch.softmax(torch.tensor([6.0, 8.0]), dim=0)
    torch.testing.assert_close(clipes.tag_probabilities(embedding, text, torch.tensor(10.0))[0], expected)


def test_minmax_by_hand():
    got = clipes.minmax(torch.tensor([[2.0, 4.0, 3.0], [0.0, 0.0, 0.0]]), eps=1e-7)
    torch.testing.assert_close(got, torch.tensor([[0.0, 2 / (2 + 1e-7), 1 / (2 + 1e-7)], [0.0, 0.0, 0.0]]))


def test_grad_cams_by_hand():
    # Two patches, two channels, one tag: weights = mean gradient = (1, -1) / ... ; cam = a @ w, ReLU, min-max.
    activations = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gradients = torch.tensor([[[2.0, -1.0], [0.0, -1.0]]])  # weights (1, -1)
    # cam = (1, -1) -> ReLU (1, 0) -> min-max (1, 0)
    torch.testing.assert_close(
        clipes.grad_cams(activations, gradients, 1e-7), torch.tensor([[1 / (1 + 1e-7) ** 2, 0.0]])
    )
    # A negative-only CAM stays all zero.
    assert clipes.grad_cams(activations, -gradients.abs(), 1e-7).abs().max() == 0


def test_affinity_transition_by_hand():
    attention = torch.tensor([[0.6, 0.4], [0.2, 0.8]])
    col = attention / attention.sum(dim=0, keepdim=True)
    row = col / col.sum(dim=1, keepdim=True)
    sym = (row + row.t()) / 2
    torch.testing.assert_close(clipes.affinity_transition(attention, 1, 1), sym @ sym)
    doubly = clipes.affinity_transition(attention, 50, 0)
    torch.testing.assert_close(doubly.sum(dim=0), torch.ones(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(doubly.sum(dim=1), torch.ones(2), atol=1e-6, rtol=0)


def _tree_box_union(cam: np.ndarray, threshold: float) -> np.ndarray:
    """scoremap2bbox as CLIP-ES writes it: every contour of RETR_TREE, boxes clipped to width-1/height-1."""
    height, width = cam.shape
    quantised = (cam * 255).astype(np.uint8)
    _, binary = cv2.threshold(quantised, int(threshold * np.max(quantised)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    mask = np.zeros(cam.shape, dtype=bool)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        mask[y : min(y + h, height - 1), x : min(x + w, width - 1)] = True
    return mask


def test_box_masks_equal_reference_tree_contours_on_random_maps():
    rng = np.random.default_rng(0)
    for trial in range(200):
        grid = (int(rng.integers(2, 12)), int(rng.integers(2, 12)))
        cam = rng.random(grid).astype(np.float32)
        if trial % 3 == 0:  # rings and holes
            cam = cv2.GaussianBlur(cam, (3, 3), 0)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        got = clipes.cam_box_masks(torch.from_numpy(cam).reshape(1, -1), grid, 0.4, True)
        assert np.array_equal(got[0].numpy().reshape(grid) > 0, _tree_box_union(cam, 0.4)), trial


def test_box_mask_of_a_ring_by_hand():
    cam = np.zeros((6, 6), dtype=np.float32)
    cam[1:5, 1:5] = 1.0
    cam[2:4, 2:4] = 0.0  # a hole: RETR_TREE adds an inner contour inside the outer box
    got = clipes.cam_box_masks(torch.from_numpy(cam).reshape(1, -1), (6, 6), 0.4, True)[0].reshape(6, 6)
    expected = np.zeros((6, 6), dtype=bool)
    expected[1:5, 1:5] = True
    assert np.array_equal(got.numpy() > 0, expected)
    # The clipping quirk: a box touching the right/bottom edge loses that column/row.
    edge = np.zeros((4, 4), dtype=np.float32)
    edge[2:, 2:] = 1.0
    got = clipes.cam_box_masks(torch.from_numpy(edge).reshape(1, -1), (4, 4), 0.4, True)[0].reshape(4, 4)
    assert got.numpy().sum() == 1 and got[2, 2] == 1


def test_refine_cams_masks_columns():
    trans = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])
    cams = torch.tensor([[1.0, 0.5, 0.0]])
    masks = torch.tensor([[1.0, 0.0, 1.0]])
    raw = (trans * masks) @ cams[0]  # the reference's form: (T * m) @ cam
    got = clipes.refine_cams(trans, cams, masks, 1e-7)
    expected = (raw - raw.min()) / (1e-7 + (raw - raw.min()).max())
    torch.testing.assert_close(got[0], expected)


def test_upsample_is_cv2_bilinear():
    cams = torch.tensor([[0.0, 1.0, 0.5, 0.25]])
    got = clipes.upsample_cams(cams, (2, 2), (5, 3))
    expected = cv2.resize(np.array([[0.0, 1.0], [0.5, 0.25]], np.float32), (3, 5))
    assert got.shape == (1, 5, 3) and np.array_equal(got[0], expected)


def test_label_map_background_wins_ties_and_first_tag_wins_ties():
    cams = np.array(
        [
            [[0.5, 0.9, 0.3, 0.7]],
            [[0.2, 0.9, 0.3, 0.8]],
        ],
        dtype=np.float16,
    )
    # bg = 1 - max: 0.5 (tie with 0.5: background), 0.1, 0.7 (beats 0.3), 0.2.
    assert clipes.label_map(cams).tolist() == [[0, 1, 0, 2]]


def test_clipes_prompt_joins_synonyms():
    spec = ClassSpec("person", ("person with clothes", "people", "human"))
    assert clipes_prompt(spec) == "person with clothes,people,human"
    assert clipes_prompt(ClassSpec("cat")) == "cat"
