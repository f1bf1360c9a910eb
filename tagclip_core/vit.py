"""The CLIP vision forward TagCLIP needs, run block by block on open_clip's own modules.

open_clip's blocks call attention without returning its weights, so each block is run here from its own
projections (query scaled by head_dim^-0.5, as torch's multi-head attention does). What differs from a
plain CLIP forward is named, per call (never stored on a module):
- the positional embedding interpolated to the image's grid (with the reference's float16 rounding);
- an additive attention mask per block, e.g. -100 off the diagonal of the last block, which effectively
  skips its self-attention (TagCLIP Eq. 6-8), or the class-token mask of CWR;
- the head-averaged attention probabilities computed WITHOUT the mask, summarised into the evidence DMAR
  uses (vote counts and the mean over the refinement layers).
With no mask and no evidence this equals open_clip's `encode_image` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

# On the CPU, sequences longer than this run each head's attention in blocks of _QUERY_BLOCK query rows, so a
# [rows, L] score block stays in cache through softmax, head sum and value product instead of streaming a
# [L, L] map (38 MB per head at 3073 tokens, the 12 MP cap) through memory four times: measured 1.9x faster
# attention at 3073 tokens, ~10 % at 1201 (COCO), no gain at VOC sizes, where one block is kept. Rows are
# independent in attention, so this changes no result beyond float rounding in the matmuls.
_BLOCKED_FROM_TOKENS = 1024
_QUERY_BLOCK = 256


@dataclass
class AttentionEvidence:
    """What DMAR needs from the attention of every block, for B images of N patches.

    vote_count: [B, N, N] number of blocks whose head-averaged patch-to-patch attention is above that
        block's mean over the [N, N] map.
    refine_mean: [B, N, N] float32 mean of the head-averaged patch-to-patch attention over the refinement
        blocks.
    """

    vote_count: torch.Tensor
    refine_mean: torch.Tensor


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], pretrained_grid: tuple[int, int], round_fp16: bool
) -> torch.Tensor:
    """Positional embedding [1 + gh*gw, C] for a patch grid, from the pretrained [1 + G*G, C] one.

    Bilinear, align_corners=False, as the reference; it then rounds the whole embedding (class row
    included) to float16, which we reproduce when round_fp16. The pretrained grid is returned unchanged.
    """
    if tuple(grid) == tuple(pretrained_grid):
        return pos_embed
    channels = pos_embed.shape[1]
    patches = pos_embed[1:].float().t().reshape(1, channels, *pretrained_grid)
    patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
    resized = torch.cat([pos_embed[:1].float(), patches.reshape(channels, -1).t()], dim=0)
    return (resized.half() if round_fp16 else resized).to(pos_embed.dtype)


def embed_patches(visual: VisionTransformer, pixels: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """Tokens [B, 1 + N, C] entering the first block: patches, class token, positions, ln_pre."""
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + pos_embed.to(x.dtype)
    return visual.ln_pre(x)


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = t.shape
    return t.reshape(batch, length, num_heads, width // num_heads).transpose(1, 2)


def block_forward(
    block: ResidualAttentionBlock,
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    want_probs: bool = False,
    query_tokens: int | None = None,
):
    """One residual attention block on x [B, L, C].

    mask: additive attention mask broadcastable to [B, L, L], the same for every head (applied to the output
        only).
    want_probs: also return the head-averaged attention probabilities [B, L, L] computed without mask.
    query_tokens: compute outputs for the first `query_tokens` tokens only (keys use all tokens).
    Returns (x_out, probs or None).

    Heads are processed one at a time (long sequences on the CPU also in blocks of query rows, see
    _BLOCKED_FROM_TOKENS): each score block stays in cache through softmax, head sum and the value product,
    instead of streaming [heads, L, L] tensors through memory several times (same operations, same order;
    also 1/heads of the peak attention memory).
    """
    attn = block.attn
    num_heads = attn.num_heads
    normed = block.ln_1(x)
    q, k, v = F.linear(normed, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if query_tokens is not None:
        q, x = q[:, :query_tokens], x[:, :query_tokens]
    q = _heads(q * (q.shape[-1] // num_heads) ** -0.5, num_heads).contiguous()
    k = _heads(k, num_heads).transpose(-1, -2).contiguous()
    v = _heads(v, num_heads).contiguous()
    out = torch.empty_like(q)
    if mask is not None and mask.dim() > 3:
        raise ValueError(f"attention masks are [B, L, L] or [L, L] (shared by all heads), got {tuple(mask.shape)}")
    queries, keys = q.shape[2], k.shape[3]
    rows = _QUERY_BLOCK if x.device.type == "cpu" and keys > _BLOCKED_FROM_TOKENS else queries
    summed = None
    for head in range(num_heads):
        for start in range(0, queries, rows):
            rows_now = slice(start, min(start + rows, queries))
            scores = q[:, head, rows_now] @ k[:, head]
            if want_probs or mask is None:
                probs = scores.softmax(dim=-1)
            if want_probs:
                # In the dtype softmax gives (float32 under CUDA autocast too).
                summed = probs.new_zeros(q.shape[0], queries, keys) if summed is None else summed
                summed[:, rows_now] += probs
            if mask is not None:
                probs = (scores + mask[..., rows_now, :]).softmax(dim=-1)
            out[:, head, rows_now] = probs @ v[:, head]
    out = out.transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, (summed / num_heads if want_probs else None)


def project_tokens(visual: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """ln_post and projection of tokens [..., C] -> L2-normalised float32 embeddings [..., E]."""
    x = visual.ln_post(x) @ visual.proj
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


def last_block_mask(num_tokens: int, value: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[L, L] additive mask: `value` off the diagonal, 0 on it (each token attends ~only to itself)."""
    return ((1 - torch.eye(num_tokens, device=device)) * value).to(dtype)


def _accumulate_evidence(probs: torch.Tensor, index: int, refine_blocks: range, evidence: AttentionEvidence) -> None:
    patches = probs[:, 1:, 1:].float()
    layer_mean = patches.reshape(patches.shape[0], -1).mean(dim=-1)[:, None, None]
    evidence.vote_count += patches > layer_mean
    if index in refine_blocks:
        evidence.refine_mean += patches


def tagclip_forward(
    visual: VisionTransformer,
    pixels: torch.Tensor,
    pos_embed: torch.Tensor,
    last_mask_value: float,
    refine_blocks: range,
    global_embedding: bool = False,
) -> tuple[torch.Tensor, AttentionEvidence, torch.Tensor | None]:
    """TagCLIP's image forward: last block's self-attention skipped, attention evidence of every block.

    pixels: [B, 3, H, W]; pos_embed: [1 + N, C] for the (H/ps, W/ps) grid.
    global_embedding: also return CLIP's own image embedding [B, E] (L2-normalised float32): the class token
        through the last block WITHOUT TagCLIP's mask, from the same tokens entering it (the first blocks run
        once; the extra work is the last block for one query row, about 2 % of the forward). At the pretrained
        resolution it equals open_clip's `encode_image` (tested); elsewhere it is CLIP's embedding of the same
        input the tags come from (positional embedding interpolated as for them).
    Returns (tokens [B, 1 + N, E] L2-normalised float32, evidence over the N patches, embedding [B, E] or None).
    """
    x = embed_patches(visual, pixels, pos_embed)
    batch, length = x.shape[:2]
    evidence = AttentionEvidence(
        vote_count=torch.zeros(batch, length - 1, length - 1, dtype=torch.uint8, device=x.device),
        refine_mean=torch.zeros(batch, length - 1, length - 1, dtype=torch.float32, device=x.device),
    )
    embedding = None
    blocks = visual.transformer.resblocks
    for index, block in enumerate(blocks):
        is_last = index == len(blocks) - 1
        if is_last and global_embedding:
            cls, _ = block_forward(block, x, query_tokens=1)
            embedding = project_tokens(visual, cls[:, 0])
        mask = last_block_mask(length, last_mask_value, x.device, x.dtype) if is_last else None
        x, probs = block_forward(block, x, mask=mask, want_probs=True)
        _accumulate_evidence(probs, index, refine_blocks, evidence)
        del probs
    evidence.refine_mean /= len(refine_blocks)
    return project_tokens(visual, x), evidence, embedding


def class_token_forward(
    visual: VisionTransformer, pixels: torch.Tensor, pos_embed: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Class-token embeddings [B, E] (L2-normalised float32), the same additive mask in every block.

    The last block computes only the class token's output: nothing else reaches it.
    """
    x = embed_patches(visual, pixels, pos_embed)
    blocks = visual.transformer.resblocks
    for index, block in enumerate(blocks):
        query_tokens = 1 if index == len(blocks) - 1 else None
        block_mask = mask if query_tokens is None or mask is None else mask[..., :1, :]
        x, _ = block_forward(block, x, mask=block_mask, query_tokens=query_tokens)
    return project_tokens(visual, x[:, 0])
