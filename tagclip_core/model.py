"""Loading CLIP for TagCLIP: open_clip architectures, OpenAI weights, local checkpoints, a cache dir.

OpenAI's ViT-B-16.pt is a TorchScript archive whose state dict stores most tensors in float16. We read
the values as they are into a float32 open_clip model (exact), instead of open_clip's OpenAI loader,
which first rounds a float32 file to float16 (moving text features ~2.5e-3).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from .config import ModelSpec
from .errors import CheckpointFormatError, UnsupportedModelError, WeightsUnavailableError
from .weights import cache_dir_or_default, download_verified, expected_sha256
from .weights import default_cache_dir as default_cache_dir  # re-exported: it lived here

log = logging.getLogger(__name__)

# Seconds to wait for the weights host before declaring the machine offline (never hang).
_CONNECT_TIMEOUT_S = 3.0
_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Entries of OpenAI's state dict that are not parameters of the model.
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class LoadedClip:
    """A CLIP model ready for TagCLIP, with what the engine needs to know about it."""

    model: CLIP
    tokenizer: object
    model_id: str  # stable identity of architecture + weights, for caches and model versions
    device: torch.device
    dtype: torch.dtype  # compute precision of the image forwards (weights are float32)

    def autocast(self) -> torch.autocast:
        """Context for image forwards: autocast to `dtype`, or a no-op in float32."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    @property
    def visual(self) -> VisionTransformer:
        return self.model.visual

    @property
    def patch_size(self) -> int:
        return int(self.model.visual.patch_size[0])

    @property
    def pretrained_grid(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.model.visual.grid_size)

    @property
    def image_size(self) -> int:
        return int(self.model.visual.image_size[0])

    @property
    def num_blocks(self) -> int:
        return len(self.model.visual.transformer.resblocks)


def resolve_cache_dir(spec: ModelSpec) -> Path:
    return cache_dir_or_default(spec.cache_dir)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedModelError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision not in _PRECISIONS:
        raise UnsupportedModelError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    dtype = _PRECISIONS[precision]
    # bf16 runs on CPUs too (fast with AVX512-BF16/AMX); fp16 matmuls on CPU are slow or missing.
    if dtype == torch.float16 and device.type != "cuda":
        raise UnsupportedModelError(f"precision {precision!r} is supported on CUDA only, device is {device}")
    if dtype == torch.bfloat16 and device.type == "cpu" and not native_cpu_bf16():
        log.warning(
            "precision bf16 on a CPU without AVX512-BF16 or AMX: its matmuls are emulated and run several times "
            "slower than fp32; use precision fp32 on this machine"
        )
    return dtype


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), which is what makes bf16 fast."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def read_checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """State dict from an OpenAI TorchScript archive or a plain (OpenAI/open_clip) state-dict file."""
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI ships it
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except (RuntimeError, ValueError):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointFormatError(f"{path} is neither a TorchScript archive nor a state dict: {error}") from error
    return _unwrap_state_dict(state, path)


def _unwrap_state_dict(state: object, path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or "visual.conv1.weight" not in {k.removeprefix("module.") for k in state}:
        raise CheckpointFormatError(f"{path} does not hold a CLIP vision-transformer state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if k not in _NON_PARAMETER_KEYS}


def build_clip_from_state_dict(state: dict[str, torch.Tensor], quick_gelu: bool = True) -> CLIP:
    """A float32 open_clip CLIP with the architecture the OpenAI-style state dict describes."""
    if "visual.proj" not in state:
        raise UnsupportedModelError("only CLIP vision transformers are supported (no 'visual.proj' in the weights)")
    vision_width = state["visual.conv1.weight"].shape[0]
    patch_size = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision_layers = sum(1 for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight"))
    text_width = state["ln_final.weight"].shape[0]
    text_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    model = CLIP(
        state["text_projection"].shape[1],
        CLIPVisionCfg(layers=vision_layers, width=vision_width, patch_size=patch_size, image_size=patch_size * grid),
        CLIPTextCfg(
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
            width=text_width,
            heads=max(1, text_width // 64),
            layers=text_layers,
        ),
        quick_gelu=quick_gelu,
    )
    try:
        model.load_state_dict(state, strict=True)  # copies float16 values into float32 parameters exactly
    except RuntimeError as error:
        raise CheckpointFormatError(f"weights do not fit the inferred CLIP architecture: {error}") from error
    return model.eval()


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Hash of the weights' names, dtypes and values: the same weights give the same id from any file or path."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def _check_reachable(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise WeightsUnavailableError(_missing_weights_message(url, f"cannot reach {host}: {error}")) from error


def _missing_weights_message(url: str, reason: str) -> str:
    name = Path(urlparse(url).path).name
    return (
        f"CLIP weights are not available offline ({reason}). Provide them with a local checkpoint "
        f"(--checkpoint PATH or TAGCLIP_CHECKPOINT=PATH, e.g. OpenAI's {name}), or put {name} into the "
        f"cache dir (TAGCLIP_CACHE_DIR) under weights/, or allow a download on a machine with internet."
    )


def locate_pretrained_weights(spec: ModelSpec) -> Path:
    """Path of the pretrained weights file, downloading it into the cache dir if allowed and reachable."""
    config = open_clip.get_pretrained_cfg(spec.model_name, spec.pretrained)
    url = config.get("url") if config else None
    if not url:
        raise UnsupportedModelError(
            f"no downloadable weights for model {spec.model_name!r} with pretrained={spec.pretrained!r}; "
            f"pass a local checkpoint instead"
        )
    weights_dir = resolve_cache_dir(spec) / "weights"
    target = weights_dir / Path(urlparse(url).path).name
    if target.is_file():
        return target
    if not spec.allow_download:
        raise WeightsUnavailableError(_missing_weights_message(url, f"{target} does not exist and downloads are off"))
    _check_reachable(url)
    return download_verified(url, target, expected_sha256(url))


def _ensure_supported(model: CLIP) -> None:
    visual = model.visual
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", [])
    standard = isinstance(visual, VisionTransformer) and all(isinstance(b, ResidualAttentionBlock) for b in blocks)
    if not standard or getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
        raise UnsupportedModelError(
            "TagCLIP needs a CLIP ViT with standard attention blocks and class-token pooling; "
            f"got {type(visual).__name__}"
        )


def load_clip(spec: ModelSpec) -> LoadedClip:
    """Load the CLIP model a ModelSpec names, ready for inference."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.precision, device)
    path = Path(spec.checkpoint).expanduser() if spec.checkpoint else locate_pretrained_weights(spec)
    state = read_checkpoint_state(path)
    model = build_clip_from_state_dict(state, quick_gelu=True)
    _ensure_supported(model)
    # Weights stay float32; lower precisions run under autocast (see LoadedClip.autocast), so the text
    # classifier is always exact and shared by every precision.
    model = model.to(device=device).requires_grad_(False)
    source = "ckpt" if spec.checkpoint else spec.pretrained
    model_id = f"{spec.model_name}-{source}-{weights_fingerprint(state)}"
    return LoadedClip(
        model=model, tokenizer=open_clip.get_tokenizer(spec.model_name), model_id=model_id, device=device, dtype=dtype
    )
