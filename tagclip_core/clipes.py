"""CLIP-ES CLS-SEG, step by step: Grad-CAM of each tag at the last block's input norm, refined by the
attention affinity of the middle blocks (CLIP-ES, generate_cams_voc.py; its numbers are the reference).

One image of N patches on a (gh, gw) grid, T tags, B background words, width C, embedding E. The reference
runs the last block once per tag; here it runs once per image and every tag's gradient comes from one
batched vector-Jacobian product: each tag's target p_t depends on the last block's normed input only through
the shared forward, so its gradient is J^T e_t for the same Jacobian J (tests compare with the per-tag loop).
The affinity does not depend on the tag and is built once; only its column mask is per tag, and
(T * m_t) @ cam_t = T @ (m_t * cam_t) refines every tag in one matrix product.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from .boxes import box_mask, contour_boxes
from .vit import block_forward, embed_patches, interpolate_pos_embed


def clipes_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], pretrained_grid: tuple[int, int]) -> torch.Tensor:
    """Positional embedding [1 + gh*gw, C] as CLIP-ES builds it: bilinearly resized and ALWAYS rounded to
    float16, class row included, even on the pretrained grid (where the resize is the identity)."""
    resized = interpolate_pos_embed(pos_embed, grid, pretrained_grid, round_fp16=True)
    return resized.half().to(pos_embed.dtype)


def affinity_blocks(num_blocks: int, start: int, stop: int | None) -> range:
    """Indices of the blocks whose attention builds the affinity: a slice over all blocks, the last included
    (the reference appends the last block's attention, then takes [-8:-1] of 12 = blocks 4..10)."""
    return range(num_blocks)[start:stop]


def forward_to_last_block(
    visual: VisionTransformer, pixels: torch.Tensor, pos_embed: torch.Tensor, attention_blocks: range
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks 0..n-2 with ordinary (unmasked) attention (the caller disables gradients, as the reference does).

    pixels: [1, 3, H, W]; pos_embed: [1 + N, C].
    Returns (tokens [1, 1 + N, C] entering the last block, attention [N, N] float32: the mean over
    `attention_blocks` of the head-averaged patch-to-patch attention probabilities). A last block in
    `attention_blocks` contributes its full (unmasked) attention, as the reference's appended map.
    """
    blocks = visual.transformer.resblocks
    last = len(blocks) - 1
    x = embed_patches(visual, pixels, pos_embed)
    num_patches = x.shape[1] - 1
    total = torch.zeros(num_patches, num_patches, dtype=torch.float32, device=x.device)
    for index in range(last):
        x, probs = block_forward(blocks[index], x, want_probs=index in attention_blocks)
        if probs is not None:
            total += probs[0, 1:, 1:].float()
    if last in attention_blocks:
        _, probs = block_forward(blocks[last], x, want_probs=True)
        total += probs[0, 1:, 1:].float()
    return x, total / max(len(attention_blocks), 1)


def last_block_from_normed(block: ResidualAttentionBlock, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
    """The last block with full attention, given its input x [B, L, C] and normed = ln_1(x) [B, L, C].

    Split so that `normed` can be the leaf Grad-CAM differentiates against (its `ln_1` output). Equals
    `vit.block_forward(block, x)[0]` when normed = block.ln_1(x) (tested).
    """
    attn = block.attn
    num_heads = attn.num_heads
    batch, length, width = normed.shape
    q, k, v = F.linear(normed, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, length, num_heads, width // num_heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def patch_mean_embedding(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Image embedding [B, E] (not normalised): ln_post on every token, mean over the patch tokens, projection.

    tokens: [B, 1 + N, C] output of the last block (CLIP-ES uses the patch mean, not the class token).
    """
    return visual.ln_post(tokens)[:, 1:].mean(dim=1) @ visual.proj


def tag_probabilities(embedding: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Softmax [B, T + B_bg] over the tags then the background words of logit_scale * cos(embedding, text).

    embedding: [B, E]; text: [T + B_bg, E] (normalised again here, as the reference does).
    """
    image = embedding / embedding.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return (logit_scale * image.float() @ text.float().t()).softmax(dim=-1)


def last_block_gradients(
    visual: VisionTransformer,
    tokens: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    num_tags: int,
    tags_per_backward: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM inputs for every tag from one forward of the last block.

    tokens: [1, 1 + N, C] entering the last block; text: [T + B_bg, E], the T tags first.
    Returns (activations [N, C]: the last block's ln_1 output on the patches,
             gradients [T, N, C]: d p_t / d activations for each tag t,
             probabilities [T + B_bg] of the forward).
    The tags' gradients are vector-Jacobian products of the same graph, `tags_per_backward` per batched backward.
    Gradients are switched on here, whatever the caller's mode (inference-mode inputs are cloned first: they
    cannot be saved for backward); the model's parameters get no gradients.
    """
    block = visual.transformer.resblocks[-1]
    with torch.inference_mode(False), torch.enable_grad():
        tokens, text, logit_scale = (t.detach().clone() for t in (tokens, text, logit_scale))
        normed = block.ln_1(tokens).detach().requires_grad_(True)
        out = last_block_from_normed(block, tokens, normed)
        probs = tag_probabilities(patch_mean_embedding(visual, out), text, logit_scale)[0]
        targets = probs[:num_tags]
        eye = torch.eye(num_tags, dtype=targets.dtype, device=targets.device)
        chunks = []
        for start in range(0, num_tags, tags_per_backward):
            rows = eye[start : start + tags_per_backward]
            last_chunk = start + tags_per_backward >= num_tags
            (grad,) = torch.autograd.grad(
                targets, normed, grad_outputs=rows, is_grads_batched=True, retain_graph=not last_chunk
            )
            chunks.append(grad[:, 0, 1:].float())
    return normed.detach()[0, 1:].float(), torch.cat(chunks), probs.detach()


def minmax(maps: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - min) / (eps + max(x - min)) per row of [T, N] (pytorch-grad-cam's scale_cam_image)."""
    shifted = maps - maps.min(dim=1, keepdim=True).values
    return shifted / (eps + shifted.max(dim=1, keepdim=True).values)


def grad_cams(activations: torch.Tensor, gradients: torch.Tensor, eps: float) -> torch.Tensor:
    """Grad-CAMs [T, N] in [0, 1]: weights = mean gradient per channel over the patches, weighted sum of the
    activations, ReLU, min-max (twice, as the reference: once per layer, once after aggregating layers).

    activations: [N, C]; gradients: [T, N, C].
    """
    weights = gradients.mean(dim=1)  # [T, C]
    cams = (weights[:, None, :] * activations[None]).sum(dim=-1).clamp_min(0)
    return minmax(minmax(cams, eps), eps)


def affinity_transition(attention: torch.Tensor, norm_passes: int, squarings: int) -> torch.Tensor:
    """Transition matrix [N, N] from the mean attention [N, N]: normalise columns then rows `norm_passes`
    times, symmetrise (T + T^T) / 2, square `squarings` times."""
    trans = attention
    for _ in range(norm_passes):
        trans = trans / trans.sum(dim=0, keepdim=True)
        trans = trans / trans.sum(dim=1, keepdim=True)
    trans = (trans + trans.t()) / 2
    for _ in range(squarings):
        trans = trans @ trans
    return trans


def cam_box_masks(cams: torch.Tensor, grid: tuple[int, int], threshold: float, clip_edges: bool) -> torch.Tensor:
    """Column masks [T, N] float 0/1: union of the contour boxes of each CAM (on the grid) at `threshold`.

    The reference's scoremap2bbox lists every contour (RETR_TREE); inner contours lie inside their outer
    contour's box, so the union equals the external contours' boxes of `boxes.contour_boxes` (tested).
    """
    maps = cams.reshape(-1, *grid).cpu().numpy().astype(np.float32)
    masks = [box_mask(grid, contour_boxes(m, threshold, clip_edges)).reshape(-1) for m in maps]
    return torch.from_numpy(np.stack(masks)).to(device=cams.device, dtype=cams.dtype)


def refine_cams(trans: torch.Tensor, cams: torch.Tensor, box_masks: torch.Tensor, eps: float) -> torch.Tensor:
    """Refined CAMs [T, N] in [0, 1]: (trans * m_t) @ cam_t for every tag (computed as trans @ (m_t * cam_t)),
    then min-max.

    trans: [N, N]; cams, box_masks: [T, N].
    """
    refined = (trans @ (box_masks * cams).t()).t()
    return minmax(refined, eps)


def upsample_cams(cams: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """float32 [T, H, W]: each [gh, gw] map resized to size (H, W) with cv2.resize (bilinear), as the reference."""
    height, width = size
    maps = cams.reshape(-1, *grid).float().cpu().numpy()
    out = np.empty((maps.shape[0], height, width), dtype=np.float32)
    for index, cam in enumerate(maps):
        out[index] = cv2.resize(cam, (width, height))
    return out


def label_map(cams: np.ndarray) -> np.ndarray:
    """[H, W] labels from float16 CAMs [T, H, W]: 0 where the background score 1 - max (in float16) is at
    least every tag's, else 1 + the first tag with the highest score (eval_cam.py with cam_eval_thres=1)."""
    cams = cams.astype(np.float16, copy=False)
    top = cams.max(axis=0)
    background = np.float16(1) - top
    labels = cams.argmax(axis=0) + 1
    labels[background >= top] = 0
    return labels.astype(np.uint8 if cams.shape[0] < np.iinfo(np.uint8).max else np.uint16)
