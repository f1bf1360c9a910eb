"""Our block-by-block forward against open_clip and torch's own attention weights."""

from __future__ import annotations

import pytest
import torch

from tagclip_core.config import ModelSpec
from tagclip_core.model import load_clip
from tagclip_core.vit import (
    block_forward,
    class_token_forward,
    embed_patches,
    interpolate_pos_embed,
    last_block_mask,
    tagclip_forward,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def clip(tiny_checkpoint):
    return load_clip(ModelSpec(checkpoint=str(tiny_checkpoint)))


@torch.inference_mode()
def test_without_tagclip_changes_equals_open_clip_encode_image(clip):
    # Guards our reach into open_clip's blocks (open_clip is pinned for this reason).
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = clip.model.encode_image(pixels, normalize=True)
    ours = class_token_forward(clip.visual, pixels, clip.visual.positional_embedding, mask=None)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


@torch.inference_mode()
def test_head_averaged_probs_equal_torch_multihead_attention_weights(clip):
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    pos = interpolate_pos_embed(clip.visual.positional_embedding, (4, 6), (14, 14), round_fp16=True)
    x = embed_patches(clip.visual, pixels, pos)
    for block in clip.visual.transformer.resblocks:
        normed = block.ln_1(x)
        expected_out, expected_probs = block.attn(normed, normed, normed, need_weights=True, average_attn_weights=True)
        ours, probs = block_forward(block, x, want_probs=True)
        torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ours, block(x), atol=1e-5, rtol=1e-5)
        x = ours


@torch.inference_mode()
def test_long_sequences_in_query_blocks_equal_torch_attention(clip):
    """Over 1024 tokens the CPU path runs each head in blocks of query rows: same probs and outputs as torch's
    multi-head attention, with and without a mask (a block boundary falls inside the mask's rows too)."""
    pixels = torch.randn(1, 3, 512, 560, generator=torch.Generator().manual_seed(3))
    pos = interpolate_pos_embed(clip.visual.positional_embedding, (32, 35), (14, 14), round_fp16=True)
    x = embed_patches(clip.visual, pixels, pos)
    assert x.shape[1] == 1121
    mask = last_block_mask(x.shape[1], -100.0, x.device, x.dtype)
    for block in list(clip.visual.transformer.resblocks)[:2]:
        normed = block.ln_1(x)
        _, expected_probs = block.attn(normed, normed, normed, need_weights=True, average_attn_weights=True)
        ours, probs = block_forward(block, x, want_probs=True)
        torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ours, block(x), atol=1e-5, rtol=1e-5)
        masked, masked_probs = block_forward(block, x, mask=mask, want_probs=True)
        attended = x + block.attn(normed, normed, normed, attn_mask=mask, need_weights=False)[0]
        torch.testing.assert_close(masked, attended + block.mlp(block.ln_2(attended)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked_probs, probs)
        x = ours


@torch.inference_mode()
def test_mask_changes_output_but_not_the_returned_probs(clip):
    pixels = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    pos = interpolate_pos_embed(clip.visual.positional_embedding, (3, 3), (14, 14), round_fp16=True)
    x = embed_patches(clip.visual, pixels, pos)
    block = clip.visual.transformer.resblocks[-1]
    plain, plain_probs = block_forward(block, x, want_probs=True)
    masked, masked_probs = block_forward(block, x, mask=last_block_mask(10, -100.0, x.device, x.dtype), want_probs=True)
    torch.testing.assert_close(plain_probs, masked_probs)
    assert not torch.allclose(plain, masked)


def test_last_block_mask_is_minus_100_off_diagonal():
    mask = last_block_mask(3, -100.0, torch.device("cpu"), torch.float32)
    assert mask.tolist() == [[0.0, -100.0, -100.0], [-100.0, 0.0, -100.0], [-100.0, -100.0, 0.0]]


def test_pos_embed_interpolation_rounds_to_fp16_and_keeps_the_pretrained_grid():
    pos = torch.randn(1 + 14 * 14, 8, generator=torch.Generator().manual_seed(3))
    assert interpolate_pos_embed(pos, (14, 14), (14, 14), round_fp16=True) is pos
    resized = interpolate_pos_embed(pos, (7, 28), (14, 14), round_fp16=True)
    exact = interpolate_pos_embed(pos, (7, 28), (14, 14), round_fp16=False)
    assert resized.shape == (1 + 7 * 28, 8)
    assert torch.equal(resized, exact.half().float())
    assert torch.equal(resized[0], pos[0].half().float())  # the class row is rounded too
    assert not torch.equal(resized, exact)


@torch.inference_mode()
def test_evidence_counts_votes_and_averages_refine_layers(clip):
    pixels = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(4))
    pos = interpolate_pos_embed(clip.visual.positional_embedding, (3, 4), (14, 14), round_fp16=True)
    tokens, evidence, _ = tagclip_forward(clip.visual, pixels, pos, -100.0, range(8, 11))
    # Recompute the per-block unmasked maps independently with torch's attention.
    x = embed_patches(clip.visual, pixels, pos)
    maps = []
    blocks = clip.visual.transformer.resblocks
    for index, block in enumerate(blocks):
        normed = block.ln_1(x)
        _, probs = block.attn(normed, normed, normed, need_weights=True)
        maps.append(probs[0, 1:, 1:])
        mask = last_block_mask(13, -100.0, x.device, x.dtype) if index == len(blocks) - 1 else None
        x, _ = block_forward(block, x, mask=mask)
    stacked = torch.stack(maps)
    votes = (stacked > stacked.reshape(12, -1).mean(-1)[:, None, None]).sum(0)
    assert torch.equal(evidence.vote_count[0].long(), votes)
    torch.testing.assert_close(evidence.refine_mean[0], stacked[8:11].mean(0), atol=1e-7, rtol=1e-6)
    assert tokens.shape == (1, 13, 64)
    torch.testing.assert_close(tokens.norm(dim=-1), torch.ones(1, 13))


@torch.inference_mode()
def test_global_embedding_is_open_clips_encode_image_from_the_same_forward(clip):
    """At the pretrained resolution the embedding tagclip_forward adds equals open_clip's encode_image, and
    asking for it changes neither the tokens nor the evidence."""
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    pos = clip.visual.positional_embedding
    plain_tokens, plain_evidence, none = tagclip_forward(clip.visual, pixels, pos, -100.0, range(8, 11))
    tokens, evidence, embedding = tagclip_forward(clip.visual, pixels, pos, -100.0, range(8, 11), True)
    assert none is None
    torch.testing.assert_close(embedding, clip.model.encode_image(pixels, normalize=True), atol=1e-6, rtol=1e-5)
    assert torch.equal(tokens, plain_tokens)
    assert torch.equal(evidence.vote_count, plain_evidence.vote_count)
    assert torch.equal(evidence.refine_mean, plain_evidence.refine_mean)
