"""Masks for tags, two modes, one output.

- "clip-es": CLIP-ES's CLS-SEG (the paper's classify-then-segment), exact to the reference's refined CAMs:
  see `clipes.py` for the steps. Needs gradients through the last block, so it is not free.
- "coarse": TagCLIP's DMAR-refined per-class patch maps (`ImagePrediction.patch_scores`), min-max
  normalised, upsampled bilinearly, against a fixed background level. No model call at all.

Either way a tag's mask is the set of pixels its map wins in the label map, at the original image size
(EXIF orientation applied), with its connected regions (boxes, simplified polygons, scores).
`MaskResult.to_json()` is the neutral form that crosses the queue (run lengths, see `geometry.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .clipes import (
    affinity_blocks,
    affinity_transition,
    cam_box_masks,
    clipes_pos_embed,
    forward_to_last_block,
    grad_cams,
    label_map,
    last_block_gradients,
    refine_cams,
    upsample_cams,
)
from .config import MaskConfig, ModelSpec, PreprocessConfig, TextConfig
from .crf import dense_crf
from .errors import ClassListError, TagCLIPError
from .geometry import Region, mask_regions, rle_encode
from .images import normalise_mode
from .model import LoadedClip, load_clip, resolve_cache_dir
from .preprocess import as_pil, model_input_size, to_pixels
from .prompts import resolve_background
from .text import TextClassifierCache
from .types import ClassSpec, ImagePrediction, MaskMode, as_class_specs, labels_of

# The mask modes' names, for messages and command-line choices.
MASK_MODES = tuple(m.value for m in MaskMode)
# Foreground value of the uint8 masks (Label Studio draws 0/1 masks invisibly).
MASK_FOREGROUND = 255


@dataclass(frozen=True)
class TagMask:
    """One tag's mask at the original image size.

    mask: uint8 [H, W], 255 where the tag wins the label map (regions under min_region_area removed), else 0.
    regions: its connected components, in scan order.
    score: mean of the tag's map over the mask (0 when the mask is empty).
    """

    label: str
    mask: np.ndarray
    regions: tuple[Region, ...]
    score: float

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "score": round(self.score, 6),
            "rle": rle_encode(self.mask),
            "regions": [region.to_json() for region in self.regions],
        }


@dataclass(frozen=True)
class MaskResult:
    """Masks of one image's tags.

    cams: float16 [T, H, W] per-tag maps in [0, 1] (clip-es: the reference's refined CAMs, as it stores them).
    label_map: [H, W] uint8 (uint16 beyond 254 tags): 0 background, k for labels[k - 1].
    original_size: (H, W) after EXIF orientation.
    """

    mode: str
    labels: tuple[str, ...]
    cams: np.ndarray
    label_map: np.ndarray
    masks: tuple[TagMask, ...]
    original_size: tuple[int, int]

    def to_json(self) -> dict:
        """The neutral, JSON-serialisable form: sizes, and per tag its score, run lengths and regions."""
        height, width = self.original_size
        return {
            "mode": self.mode,
            "width": width,
            "height": height,
            "masks": [tag.to_json() for tag in self.masks],
        }


def clipes_prompt(spec: ClassSpec) -> str:
    """The one text CLIP-ES encodes for a tag: its prompts joined by commas, so ("person with clothes", "people",
    "human") gives CLIP-ES's "person with clothes,people,human"."""
    return ",".join(spec.prompts)


def _check_mode(mode: str) -> MaskMode:
    try:
        return MaskMode(mode)
    except ValueError as e:
        raise TagCLIPError(f"mask mode must be one of {MASK_MODES}, got {mode!r}") from e


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def assemble_result(
    mode: str,
    labels: Sequence[str],
    cams: np.ndarray,
    labels_map: np.ndarray,
    config: MaskConfig,
    background: np.ndarray | float | None = None,
    rgb: np.ndarray | None = None,
) -> MaskResult:
    """Per-tag masks and regions from maps cams [T, H, W] (float16) and their label map [H, W].

    With config.crf the label map is replaced by the argmax of a dense CRF over [background, cams]: background
    is the background score (a map [H, W] or a level) and rgb the image (uint8 [H, W, 3]), both required then.
    """
    if config.crf:
        if rgb is None or background is None:
            raise TagCLIPError("a dense CRF needs the image: pass it with the prediction")
        scores = np.concatenate([np.broadcast_to(background, cams.shape[1:])[None], cams]).astype(np.float32)
        labels_map = dense_crf(rgb, scores, config).argmax(axis=0).astype(labels_map.dtype)
    masks = []
    for index, label in enumerate(labels):
        score_map = cams[index].astype(np.float32)
        kept, regions = mask_regions(labels_map == index + 1, score_map, config.min_region_area, config.polygon_epsilon)
        score = float(score_map[kept].mean()) if kept.any() else 0.0
        masks.append(TagMask(label, kept.astype(np.uint8) * MASK_FOREGROUND, regions, score))
    return MaskResult(mode, tuple(labels), cams, labels_map, tuple(masks), tuple(labels_map.shape))


def coarse_maps(patch_scores: np.ndarray, size: tuple[int, int], eps: float) -> np.ndarray:
    """float16 [T, H, W]: each [gh, gw] patch map min-max normalised ((x - min) / (eps + range)), then resized
    bilinearly (cv2.resize) to size (H, W)."""
    maps = torch.from_numpy(np.ascontiguousarray(patch_scores, dtype=np.float32))
    grid = tuple(maps.shape[1:])
    flat = maps.reshape(maps.shape[0], -1)
    shifted = flat - flat.min(dim=1, keepdim=True).values
    normalised = shifted / (eps + shifted.max(dim=1, keepdim=True).values)
    return upsample_cams(normalised, grid, size).astype(np.float16)


def level_label_map(cams: np.ndarray, level: float) -> np.ndarray:
    """[H, W] labels: 0 where no tag's map beats `level`, else 1 + the first tag with the highest map."""
    top = cams.max(axis=0)
    labels = cams.argmax(axis=0) + 1
    labels[top <= np.float16(level)] = 0
    return labels.astype(np.uint8 if cams.shape[0] < np.iinfo(np.uint8).max else np.uint16)


def coarse_masks(
    prediction: ImagePrediction,
    tags: Iterable[str],
    config: MaskConfig | None = None,
    image: Image.Image | np.ndarray | None = None,
) -> MaskResult:
    """Masks from a TagCLIP prediction's refined patch maps, no model call.

    tags: labels of `prediction` to segment, in the order the label map numbers them. image (at the original
    size) is only needed for the dense CRF.
    """
    config = config or MaskConfig()
    tags = tuple(tags)
    unknown = [tag for tag in tags if tag not in prediction.labels]
    if unknown:
        raise ClassListError(f"tags {unknown} are not classes of the prediction {list(prediction.labels)}")
    height, width = prediction.original_size
    if not tags:
        return _empty_result(MaskMode.COARSE, (height, width))
    rows = [prediction.labels.index(tag) for tag in tags]
    cams = coarse_maps(prediction.patch_scores[rows], (height, width), config.minmax_eps)
    labels_map = level_label_map(cams, config.coarse_background)
    rgb = _rgb_array(as_pil(image)) if image is not None else None
    return assemble_result(MaskMode.COARSE, tags, cams, labels_map, config, np.float32(config.coarse_background), rgb)


def _empty_result(mode: str, size: tuple[int, int]) -> MaskResult:
    height, width = size
    return MaskResult(
        mode, (), np.zeros((0, height, width), np.float16), np.zeros((height, width), np.uint8), (), (height, width)
    )


class Segmenter:
    """CLIP-ES masks for given tags on a loaded CLIP (share the LoadedClip with a TagCLIP engine).

    >>> clip = load_clip(ModelSpec(checkpoint="ViT-B-16.pt"))
    >>> engine, segmenter = TagCLIP(clip), Segmenter(clip)
    >>> result = segmenter.segment(image, ["cat", ClassSpec("person", ("person with clothes", "people", "human"))])
    """

    def __init__(
        self,
        clip: LoadedClip,
        config: MaskConfig | None = None,
        preprocess: PreprocessConfig | None = None,
        text_cache_dir=None,
    ):
        self._clip = clip
        self._config = config or MaskConfig()
        _check_mode(self._config.mode)
        self._preprocess = preprocess or PreprocessConfig()
        text_config = TextConfig(templates=(self._config.template,))
        self._text = TextClassifierCache(clip.model, clip.tokenizer, clip.model_id, text_config, text_cache_dir)
        self._pos_embeds: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def load(
        cls, spec: ModelSpec | None = None, config: MaskConfig | None = None, preprocess: PreprocessConfig | None = None
    ) -> Segmenter:
        spec = spec or ModelSpec()
        return cls(load_clip(spec), config, preprocess, text_cache_dir=resolve_cache_dir(spec))

    @property
    def config(self) -> MaskConfig:
        return self._config

    @torch.no_grad()
    def segment(
        self,
        image: Image.Image | np.ndarray,
        tags: Iterable[str | ClassSpec],
        mode: str | None = None,
        prediction: ImagePrediction | None = None,
    ) -> MaskResult:
        """Masks of `tags` on one image (PIL or uint8 array; EXIF orientation is applied to PIL images).

        mode: "clip-es" (default from the config) or "coarse", which needs the image's TagCLIP `prediction`
        with the tags among its classes. Gradients are enabled only inside the last block's Grad-CAM.
        """
        mode = _check_mode(mode or self._config.mode)
        pil = self._oriented(image)
        tags = tuple(tags)
        specs = as_class_specs(tags) if tags else ()
        if mode is MaskMode.COARSE:
            if prediction is None:
                raise TagCLIPError("coarse masks need the image's TagCLIP prediction (its patch_scores)")
            return coarse_masks(prediction, labels_of(specs), self._config, pil if self._config.crf else None)
        return self._clip_es(pil, specs)

    def _oriented(self, image: Image.Image | np.ndarray) -> Image.Image:
        pil = as_pil(image)
        if isinstance(image, Image.Image):
            pil = normalise_mode(ImageOps.exif_transpose(pil), label="image")
        return pil

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid not in self._pos_embeds:
            visual = self._clip.visual
            self._pos_embeds[grid] = clipes_pos_embed(visual.positional_embedding, grid, self._clip.pretrained_grid)
        return self._pos_embeds[grid]

    def text_columns(self, specs: Sequence[ClassSpec]) -> torch.Tensor:
        """[T + B, E] one-template text features: the tags' prompts, then the background words (a word equal to a
        tag's prompt is dropped)."""
        prompts = [clipes_prompt(spec) for spec in specs]
        words = [w for w in resolve_background(self._config.background) if w not in set(prompts)]
        return self._text.columns(prompts + words)

    def _clip_es(self, image: Image.Image, specs: Sequence[ClassSpec]) -> MaskResult:
        cfg = self._config
        original = (image.height, image.width)
        if not specs:
            return _empty_result(MaskMode.CLIP_ES, original)
        visual = self._clip.visual
        patch = self._clip.patch_size
        size = model_input_size(image.height, image.width, patch, self._preprocess.max_side)
        grid = (size[0] // patch, size[1] // patch)
        pixels = to_pixels(image, size, self._preprocess)[None].to(self._clip.device)
        blocks = affinity_blocks(self._clip.num_blocks, cfg.affinity_layer_start, cfg.affinity_layer_stop)
        tokens, attention = forward_to_last_block(visual, pixels, self._pos_embed(grid), blocks)
        logit_scale = self._clip.model.logit_scale.exp().float()
        activations, gradients, _ = last_block_gradients(
            visual, tokens, self.text_columns(specs), logit_scale, len(specs), cfg.tags_per_backward
        )
        cams = grad_cams(activations, gradients, cfg.minmax_eps)
        trans = affinity_transition(attention, cfg.affinity_norm_passes, cfg.affinity_squarings)
        box_masks = cam_box_masks(cams, grid, cfg.box_threshold, cfg.clip_box_edges)
        refined = refine_cams(trans, cams, box_masks, cfg.minmax_eps)
        highres = upsample_cams(refined, grid, original).astype(np.float16)
        background = np.float16(1) - highres.max(axis=0) if cfg.crf else None
        rgb = _rgb_array(image) if cfg.crf else None
        return assemble_result(MaskMode.CLIP_ES, labels_of(specs), highres, label_map(highres), cfg, background, rgb)
