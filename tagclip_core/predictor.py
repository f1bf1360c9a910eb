"""The TagCLIP engine: a loaded CLIP, a class list with its text classifier, and batched prediction."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import EngineConfig, ModelSpec
from .errors import ClassListError
from .images import normalise_mode
from .model import LoadedClip, load_clip, resolve_cache_dir
from .preprocess import as_pil, model_input_size, to_pixels
from .prompts import resolve_background
from .refine import coarse_probs, dmar, refinement_matrix
from .reidentify import candidate_columns, class_token_mask, crop_inputs, fuse, select_crops
from .tags import relative_tags
from .text import TextClassifierCache
from .timing import NullTimer, StageTimer
from .types import ClassSpec, ImagePrediction, PredictionFailure, as_class_specs, labels_of
from .vit import AttentionEvidence, class_token_forward, interpolate_pos_embed, tagclip_forward

log = logging.getLogger(__name__)

# CWR crops encoded per batched forward (each is one 224x224 image).
_CWR_BATCH = 32


@dataclass(frozen=True)
class ClassTable:
    """The classes being predicted and their text classifier.

    text: [P + B, E] columns: every prompt of every class in class order, then the background words.
    owner: [P] class index of each prompt column.
    """

    specs: tuple[ClassSpec, ...]
    background: tuple[str, ...]
    text: torch.Tensor
    owner: torch.Tensor

    @property
    def num_prompt_columns(self) -> int:
        return int(self.owner.numel())


@dataclass
class _ImageWork:
    """One image in flight: its input tensor and, after DMAR, what CWR and the output need."""

    index: int
    pixels: torch.Tensor
    original_size: tuple[int, int]
    refined: torch.Tensor | None = None
    local: torch.Tensor | None = None
    candidates: tuple[int, ...] = ()
    crops: tuple = ()
    embedding: torch.Tensor | None = None


class TagCLIP:
    """Open-vocabulary multi-label tagging with TagCLIP on a frozen CLIP ViT.

    >>> engine = TagCLIP.load(ModelSpec(checkpoint="ViT-B-16.pt"))
    >>> engine.set_classes(["cat", ClassSpec("person", ("person", "human"))], background="voc")
    >>> engine.predict([Image.open("photo.jpg")])[0].tags
    """

    def __init__(self, clip: LoadedClip, config: EngineConfig | None = None, text_cache_dir=None):
        self._clip = clip
        self._config = config or EngineConfig()
        self._text = TextClassifierCache(clip.model, clip.tokenizer, clip.model_id, self._config.text, text_cache_dir)
        self._classes: ClassTable | None = None
        self._pos_embeds: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def load(cls, spec: ModelSpec | None = None, config: EngineConfig | None = None) -> TagCLIP:
        spec = spec or ModelSpec()
        return cls(load_clip(spec), config, text_cache_dir=resolve_cache_dir(spec))

    @property
    def model_id(self) -> str:
        return self._clip.model_id

    @property
    def clip(self) -> LoadedClip:
        return self._clip

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def labels(self) -> tuple[str, ...]:
        return labels_of(self._require_classes().specs)

    @torch.inference_mode()
    def set_classes(self, classes: Iterable[str | ClassSpec], background: str | Sequence[str] | None = "voc") -> None:
        """Choose the classes to tag; each scores the max over its prompts. Background words take part in every
        softmax but are never reported; a background word equal to one of the prompts is dropped."""
        specs = as_class_specs(classes)
        prompts = [prompt for spec in specs for prompt in spec.prompts]
        words = _background_words(prompts, background)
        text = self._text.columns(prompts + list(words))
        owner = torch.tensor([i for i, spec in enumerate(specs) for _ in spec.prompts], device=text.device)
        self._classes = ClassTable(specs=specs, background=words, text=text, owner=owner)

    def text_prompts(
        self, classes: Iterable[str | ClassSpec], background: str | Sequence[str] | None = "voc"
    ) -> list[str]:
        """Every text whose classifier column `set_classes(classes, background)` needs, in its order."""
        prompts = [prompt for spec in as_class_specs(classes) for prompt in spec.prompts]
        return prompts + list(_background_words(prompts, background))

    def uncached_prompts(self, prompts: Sequence[str]) -> list[str]:
        """The prompts whose columns are neither in memory nor on disk (a file test each; nothing is built)."""
        return [p for p in dict.fromkeys(prompts) if not self._text.is_cached(p)]

    @torch.inference_mode()
    def build_prompt(self, prompt: str) -> bool:
        """Build and save one prompt's column unless it is cached; True when it was built. The unit of an
        incremental build: a caller that shares the engine takes its lock around each call, not around a build."""
        if self._text.is_cached(prompt):
            return False
        self._text.build(prompt)
        return True

    @torch.inference_mode()
    def predict(
        self,
        images: Sequence[Image.Image | np.ndarray],
        timer: StageTimer | None = None,
        embeddings: bool = False,
    ) -> list[ImagePrediction]:
        """Tag images (PIL images or uint8 arrays). Same-size images share a batched forward on CUDA.

        timer: optional StageTimer collecting seconds for preprocess, forward, dmar, cwr and output.
        embeddings: also give each prediction CLIP's global image embedding (`ImagePrediction.embedding`),
            from the same forward (vit.tagclip_forward); scores and tags are the same either way.
        """
        classes = self._require_classes()
        timer = timer or NullTimer()
        with timer.stage("preprocess"):
            work = [self._prepare(i, image) for i, image in enumerate(images)]
        for batch in self._batches(work):
            self._refine_batch(batch, classes, timer, embeddings)
        with timer.stage("cwr"):
            self._reidentify(work, classes)
        with timer.stage("output"):
            return [self._finish(item, classes) for item in work]

    def predict_each(
        self, images: Sequence[Image.Image | np.ndarray], embeddings: bool = False
    ) -> list[ImagePrediction | PredictionFailure]:
        """`predict`, where one image that fails costs only its own entry (see `predict_each`)."""
        if embeddings:
            return predict_each(lambda batch: self.predict(batch, embeddings=True), images)
        return predict_each(self.predict, images)

    def _require_classes(self) -> ClassTable:
        if self._classes is None:
            raise ClassListError("no classes set: call set_classes() before predict()")
        return self._classes

    def _prepare(self, index: int, image: Image.Image | np.ndarray) -> _ImageWork:
        pil = as_pil(image)
        if isinstance(image, Image.Image):
            pil = normalise_mode(ImageOps.exif_transpose(pil), label=f"image {index}")
        size = model_input_size(pil.height, pil.width, self._clip.patch_size, self._config.preprocess.max_side)
        pixels = to_pixels(pil, size, self._config.preprocess)
        return _ImageWork(index=index, pixels=pixels, original_size=(pil.height, pil.width))

    def _batches(self, work: list[_ImageWork]) -> Iterable[list[_ImageWork]]:
        # CPU gains nothing from batching and pays in memory (cpu_batch_size 1); CUDA stacks same-size images.
        cuda = self._clip.device.type == "cuda"
        limit = self._config.gpu_batch_size if cuda else self._config.cpu_batch_size
        by_size: dict[tuple[int, ...], list[_ImageWork]] = defaultdict(list)
        for item in work:
            by_size[tuple(item.pixels.shape)].append(item)
        for group in by_size.values():
            for start in range(0, len(group), limit):
                yield group[start : start + limit]

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid not in self._pos_embeds:
            self._pos_embeds[grid] = interpolate_pos_embed(
                self._clip.visual.positional_embedding,
                grid,
                self._clip.pretrained_grid,
                self._config.tagclip.round_pos_embed_fp16,
            )
        return self._pos_embeds[grid]

    def _grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        patch = self._clip.patch_size
        return pixels.shape[-2] // patch, pixels.shape[-1] // patch

    def _refine_batch(
        self, batch: list[_ImageWork], classes: ClassTable, timer: StageTimer, embeddings: bool = False
    ) -> None:
        cfg = self._config.tagclip
        grid = self._grid(batch[0].pixels)
        refine_blocks = range(self._clip.num_blocks)[cfg.refine_layer_start : cfg.refine_layer_stop]
        with timer.stage("forward"), self._clip.autocast():
            pixels = torch.stack([item.pixels for item in batch]).to(self._clip.device)
            tokens, evidence, embedding = tagclip_forward(
                self._clip.visual, pixels, self._pos_embed(grid), cfg.last_block_mask_value, refine_blocks, embeddings
            )
        if embedding is not None:
            for position, item in enumerate(batch):
                item.embedding = embedding[position]
        with timer.stage("dmar"):
            self._dmar_batch(batch, classes, tokens, evidence, grid)

    def _dmar_batch(
        self,
        batch: list[_ImageWork],
        classes: ClassTable,
        tokens: torch.Tensor,
        evidence: AttentionEvidence,
        grid: tuple[int, int],
    ) -> None:
        cfg = self._config.tagclip
        logit_scale = self._clip.model.logit_scale.exp().float()
        for position, item in enumerate(batch):
            coarse = coarse_probs(tokens[position, 1:], classes.text, logit_scale)
            attention = refinement_matrix(
                evidence.vote_count[position], evidence.refine_mean[position], cfg.vote_min_layers
            )
            item.refined = dmar(coarse, attention, grid, cfg.dmar_clip_box_edges)
            item.local = item.refined.max(dim=0).values[: classes.num_prompt_columns]
            if cfg.use_cwr:
                item.candidates = tuple(candidate_columns(item.refined, item.local, cfg.cwr_candidate_rel_threshold))
                item.crops = tuple(
                    select_crops(
                        item.refined,
                        list(item.candidates),
                        grid,
                        cfg.cwr_mask_threshold,
                        cfg.cwr_clip_box_edges,
                        cfg.cwr_stop_at_empty_box,
                    )
                )

    def _reidentify(self, work: list[_ImageWork], classes: ClassTable) -> None:
        """Encode every selected crop of every image in batched forwards and fuse the global scores."""
        cfg = self._config.tagclip
        grid = self._clip.pretrained_grid
        jobs = [(item, column, box, mask) for item in work for column, box, mask in item.crops]
        global_scores: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for start in range(0, len(jobs), _CWR_BATCH):
            chunk = jobs[start : start + _CWR_BATCH]
            crops, masks = [], []
            for item, _column, box, mask in chunk:
                crop, keep = crop_inputs(item.pixels, mask.cpu(), box, self._clip.patch_size, grid)
                crops.append(crop)
                masks.append(class_token_mask(keep, cfg.cwr_outside_mask_value, torch.float32))
            with self._clip.autocast():
                features = class_token_forward(
                    self._clip.visual,
                    torch.stack(crops).to(self._clip.device),
                    self._pos_embed(grid),
                    torch.stack(masks).to(self._clip.device),
                )
            logit_scale = self._clip.model.logit_scale.exp().float()
            probs = (logit_scale * features @ classes.text.t()).softmax(dim=-1)
            for (item, column, _box, _mask), row in zip(chunk, probs, strict=True):
                global_scores[item.index].append((column, row[column]))
        for item in work:
            pairs = global_scores.get(item.index, [])
            item.local = fuse(item.local, [c for c, _ in pairs], [s for _, s in pairs], cfg.cwr_fusion_weight)

    def _finish(self, item: _ImageWork, classes: ClassTable) -> ImagePrediction:
        num_classes = len(classes.specs)
        owner = classes.owner
        scores = torch.full((num_classes,), -torch.inf, device=owner.device).scatter_reduce(
            0, owner, item.local.to(owner.device), reduce="amax"
        )
        prompt_maps = item.refined[:, : classes.num_prompt_columns].t()
        maps = torch.full((num_classes, prompt_maps.shape[1]), -torch.inf, device=owner.device).scatter_reduce(
            0, owner[:, None].expand_as(prompt_maps), prompt_maps.to(owner.device), reduce="amax"
        )
        grid = self._grid(item.pixels)
        scores_np = scores.float().cpu().numpy()
        labels = labels_of(classes.specs)
        tagged = relative_tags(scores_np, self._config.tagclip.tag_rel_threshold)
        candidate_classes = {int(owner[c]) for c in item.candidates}
        return ImagePrediction(
            labels=labels,
            scores=scores_np,
            tags=tuple(label for label, keep in zip(labels, tagged, strict=True) if keep),
            candidates=tuple(labels[i] for i in sorted(candidate_classes)),
            patch_scores=maps.reshape(num_classes, *grid).float().cpu().numpy(),
            input_size=tuple(item.pixels.shape[-2:]),
            original_size=item.original_size,
            embedding=None if item.embedding is None else item.embedding.float().cpu().numpy(),
        )


Images = Sequence[Image.Image | np.ndarray]


def _background_words(prompts: Sequence[str], background: str | Sequence[str] | None) -> tuple[str, ...]:
    """The background words of a softmax, without those equal to one of the prompts."""
    taken = set(prompts)
    return tuple(w for w in resolve_background(background) if w not in taken)


def predict_each(
    predict: Callable[[Images], Sequence[ImagePrediction]], images: Images
) -> list[ImagePrediction | PredictionFailure]:
    """Predict all images in one call; if it raises, predict them one by one, so only the images that fail
    alone get a PredictionFailure. Any exception counts: a bug or a CUDA out-of-memory error on one image
    must not cost the rest of the batch."""
    if not images:
        return []
    try:
        predictions = list(predict(images))
    except Exception as error:
        if len(images) == 1:
            return [PredictionFailure(error)]
        log.warning(
            "a batch of %d images failed (%s: %s); predicting them one by one", len(images), type(error).__name__, error
        )
        return [outcome for image in images for outcome in predict_each(predict, [image])]
    if len(predictions) != len(images):
        raise RuntimeError(f"the engine returned {len(predictions)} predictions for {len(images)} images")
    return predictions
