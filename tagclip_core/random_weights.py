"""Random-weight CLIP checkpoints in OpenAI's file format, for tests, benchmarks and smoke runs.

Real weights cannot be fetched everywhere (CI, air-gapped machines). Compute cost and exact-output
parity do not depend on weight values, so a seeded random model with the real architecture shape,
saved exactly like OpenAI's `ViT-B-16.pt` (a TorchScript archive whose state dict holds mostly float16
values), exercises the real loading path. Scores from such a model are meaningless as tags.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg


@dataclass(frozen=True)
class RandomClipShape:
    """Architecture of a random CLIP ViT; heads are width // 64 as in OpenAI's state-dict convention."""

    vision_width: int
    vision_layers: int
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    embed_dim: int
    context_length: int = 77
    vocab_size: int = 49408  # the CLIP BPE tokenizer's vocabulary; the tokenizer needs it


# Real block count and patch size, narrow width: fast enough for unit tests on 2 CPU cores.
TINY_VIT_B_16 = RandomClipShape(
    vision_width=128, vision_layers=12, patch_size=16, image_size=224, text_width=64, text_layers=12, embed_dim=64
)
# The real ViT-B/16 shape, for benchmarks (compute cost does not depend on the weights).
VIT_B_16 = RandomClipShape(
    vision_width=768, vision_layers=12, patch_size=16, image_size=224, text_width=512, text_layers=12, embed_dim=512
)

# Keys OpenAI's file stores in float16 (open_clip's convert_weights_to_fp16 mirrors this).
_FP16_SUFFIXES = (
    "in_proj_weight",
    "in_proj_bias",
    "out_proj.weight",
    "out_proj.bias",
    "c_fc.weight",
    "c_fc.bias",
    "c_proj.weight",
    "c_proj.bias",
    "conv1.weight",
)
_FP16_KEYS = ("text_projection", "visual.proj")


def random_clip_state_dict(shape: RandomClipShape, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random CLIP state dict with OpenAI key names and OpenAI's per-key dtypes."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = CLIP(
            shape.embed_dim,
            CLIPVisionCfg(
                layers=shape.vision_layers,
                width=shape.vision_width,
                patch_size=shape.patch_size,
                image_size=shape.image_size,
            ),
            CLIPTextCfg(
                context_length=shape.context_length,
                vocab_size=shape.vocab_size,
                width=shape.text_width,
                heads=max(1, shape.text_width // 64),
                layers=shape.text_layers,
            ),
            quick_gelu=True,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key.endswith(_FP16_SUFFIXES) or key in _FP16_KEYS:
            value = value.half()
        state[key] = value
    # CLIP's trained temperature saturates at 100; random init would give 1/0.07.
    state["logit_scale"] = torch.tensor(math.log(100.0))
    return state


class _ParameterTree(torch.nn.Module):
    """A module holding parameters under dotted names, so TorchScript can archive a bare state dict."""


def _tree_from_state_dict(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    root = _ParameterTree()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, _ParameterTree())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    return root


def save_openai_checkpoint(state: dict[str, torch.Tensor], path: str | Path, torchscript: bool = True) -> Path:
    """Write a state dict as OpenAI ships CLIP (a TorchScript archive), or as a plain torch.save file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if torchscript:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but it is OpenAI's format
            torch.jit.script(_tree_from_state_dict(state)).save(str(path))
    else:
        torch.save(state, path)
    return path


def write_random_checkpoint(
    path: str | Path, shape: RandomClipShape = TINY_VIT_B_16, seed: int = 0, torchscript: bool = True
) -> Path:
    """Create a random-weight OpenAI-format CLIP checkpoint at `path`."""
    return save_openai_checkpoint(random_clip_state_dict(shape, seed), path, torchscript=torchscript)
