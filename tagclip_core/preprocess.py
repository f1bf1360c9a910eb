"""Image -> model input: native resolution, long side capped, each side rounded up to the patch size.

Mirrors the reference's transform (PIL bicubic resize, then RGB, then /255 and CLIP normalisation) so
the pixels are bit-identical. Greyscale is stacked to 3 channels before the resize (as the reference
does); RGBA is resized with its alpha, which is then dropped without compositing (as the reference).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from .config import PreprocessConfig


def model_input_size(height: int, width: int, patch_size: int, max_side: int | None) -> tuple[int, int]:
    """(H', W'): the image size after the long-side cap, each side rounded up to a multiple of patch_size.

    An image of one patch or less becomes 2x2 patches: TagCLIP needs a patch grid to refine over (the
    reference crashes there).
    """
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    if height <= patch_size and width <= patch_size:
        return (2 * patch_size, 2 * patch_size)
    return (math.ceil(height / patch_size) * patch_size, math.ceil(width / patch_size) * patch_size)


def to_pixels(image: Image.Image, size: tuple[int, int], config: PreprocessConfig) -> torch.Tensor:
    """Normalised float32 tensor [3, H, W] of a PIL image in mode RGB, RGBA or L, resized to size (H, W)."""
    if image.mode == "L":
        image = image.convert("RGB")
    height, width = size
    image = image.resize((width, height), Image.BICUBIC).convert("RGB")
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.as_tensor(config.mean, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(config.std, dtype=torch.float32)[:, None, None]
    return pixels.sub_(mean).div_(std)


def as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """Accept a PIL image or a uint8 array ([H, W], [H, W, 3] or [H, W, 4])."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(array)
    raise TypeError(f"image arrays must be [H, W], [H, W, 3] or [H, W, 4], got shape {array.shape}")
