"""Typed, frozen configuration of the engine. tagclip_core never reads the environment.

The defaults reproduce the authors' reference implementation (linyq2117/TagCLIP, classify.py) exactly,
its quirks included; each quirk has a named switch whose docstring says what turning it off changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .prompts import TAGCLIP_TEMPLATES


@dataclass(frozen=True)
class ModelSpec:
    """Which CLIP to load and where from."""

    # open_clip architecture name; ViT-B-16 is the model TagCLIP was published with.
    model_name: str = "ViT-B-16"
    # open_clip pretrained tag, used when no checkpoint is given.
    pretrained: str = "openai"
    # Local checkpoint: OpenAI TorchScript archive, or an OpenAI/open_clip state dict file.
    checkpoint: str | None = None
    # Directory for downloaded weights and cached text classifiers; None = the user cache dir.
    cache_dir: str | None = None
    # "auto" picks CUDA when present, else CPU; or any torch device string.
    device: str = "auto"
    # Compute precision: "fp32" (exact), "bf16" or "fp16" (CUDA only; effect measured in bench/).
    precision: str = "fp32"
    # Allow downloading pretrained weights when they are not in the cache.
    allow_download: bool = True


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the model's input tensor."""

    # Cap on the longer side in pixels before rounding up to the patch size; None = native always.
    # 1024 keeps VOC/COCO (<= 640 px) native and bounds a 12 MP photo's attention memory.
    max_side: int | None = 1024
    # Per-channel normalisation (CLIP's OpenAI statistics).
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TagCLIPConfig:
    """Every threshold and layer range of TagCLIP's local-to-global inference."""

    # Additive attention mask on off-diagonal entries of the last block (skips its self-attention).
    last_block_mask_value: float = -100.0
    # Round the interpolated positional embedding to float16 as the reference does (moves scores ~1e-3).
    round_pos_embed_fp16: bool = True
    # Vote mask: a patch pair counts when at least this many layers attend above their own mean.
    vote_min_layers: int = 4
    # Layers whose attention is averaged into the refinement matrix, as a Python slice of the blocks.
    # Reference: [8:-1] (VOC/COCO); COCO-Stuff uses [0:-1].
    refine_layer_start: int = 8
    refine_layer_stop: int = -1
    # DMAR box quirk: clip each contour box's x1/y1 to width-1/height-1, so a box touching the right or
    # bottom edge loses that column/row (reference behaviour). False keeps the full box.
    dmar_clip_box_edges: bool = True
    # CWR: candidate classes have local score > min + rel * (max - min) over the refined matrix.
    cwr_candidate_rel_threshold: float = 0.5
    # CWR: patches with min-max normalised refined score above this form the crop mask.
    cwr_mask_threshold: float = 0.5
    # CWR: additive mask on the class token's attention to patches outside the crop mask.
    cwr_outside_mask_value: float = -1000.0
    # CWR: final = w * local + (1 - w) * global for candidates.
    cwr_fusion_weight: float = 0.5
    # CWR quirk: the reference returns at the first candidate whose box is empty, leaving it and every
    # later candidate at its local score. False skips only that candidate.
    cwr_stop_at_empty_box: bool = True
    # CWR box quirk: the crop's x2/y2 are clipped to grid-1, so a crop touching the right or bottom edge
    # loses that patch column/row (reference behaviour). False keeps it.
    cwr_clip_box_edges: bool = True
    # Run class-wise re-identification at all (off: scores are the DMAR local scores).
    use_cwr: bool = True
    # Tag rule: tags are classes with score > min + rel * (max - min); COCO-Stuff uses 0.1.
    tag_rel_threshold: float = 0.5

    @classmethod
    def cocostuff(cls) -> TagCLIPConfig:
        """The reference's COCO-Stuff setting: all layers but the last, relative thresholds of 0.1."""
        return cls(refine_layer_start=0, cwr_candidate_rel_threshold=0.1, tag_rel_threshold=0.1)


@dataclass(frozen=True)
class TextConfig:
    """The prompt-ensemble text classifier."""

    templates: tuple[str, ...] = TAGCLIP_TEMPLATES
    # Texts encoded per forward pass of the text tower; a column's templates share forwards with no other prompt's.
    batch_size: int = 256
    # Keep classifiers on disk under the cache dir (keyed by model, prompts and templates).
    disk_cache: bool = True
    # Prompt columns kept in memory (about 2 KB each for ViT-B/16); the least recently used go first, never
    # those of the classes being set.
    max_cached_prompts: int = 50_000


@dataclass(frozen=True)
class EngineConfig:
    """Everything the predictor needs besides the model: one object to pass around and hash."""

    tagclip: TagCLIPConfig = field(default_factory=TagCLIPConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    text: TextConfig = field(default_factory=TextConfig)
    # Images per batched forward on CUDA (same-grid images are stacked).
    gpu_batch_size: int = 16
    # Images per batched forward on the CPU: 1, as batching gains nothing there and costs memory (tests raise it
    # to check the batched path without a GPU).
    cpu_batch_size: int = 1


@dataclass(frozen=True)
class MaskConfig:
    """Masks for tags: CLIP-ES's CLS-SEG ("clip-es", the reference's numbers) or TagCLIP's refined patch maps
    ("coarse", no gradients). The CLS-SEG defaults are CLIP-ES's generate_cams_voc.py + eval_cam.py."""

    # "clip-es" (Grad-CAM + attention affinity, exact to the reference) or "coarse" (DMAR patch maps).
    mode: str = "clip-es"
    # The one template CLIP-ES encodes tag prompts and background words with.
    template: str = "a clean origami {}."
    # Background words of the CLIP-ES softmax: a set name ("voc": CLIP-ES's 25 words, "coco": 23, "none") or words.
    background: str | tuple[str, ...] = "voc"
    # Affinity blocks, a Python slice over ALL blocks (reference: [-8:-1] of 12 = blocks 4..10).
    affinity_layer_start: int = -8
    affinity_layer_stop: int | None = -1
    # Column-then-row normalisation passes of the affinity (the reference does 1 + 2).
    affinity_norm_passes: int = 3
    # Times the symmetrised affinity is squared (T <- T @ T).
    affinity_squarings: int = 1
    # Relative threshold of the boxes that mask the affinity's columns (scoremap2bbox on the Grad-CAM).
    box_threshold: float = 0.4
    # scoremap2bbox quirk: clip each box's x1/y1 to width-1/height-1 (the last grid row/column never in a box).
    clip_box_edges: bool = True
    # Epsilon of the reference's min-max normalisations (x - min) / (eps + max).
    minmax_eps: float = 1e-7
    # Tags whose gradients one batched backward computes (memory grows with it; results do not change).
    tags_per_backward: int = 8
    # Coarse mode: a pixel is background unless a tag's min-max normalised map beats this level.
    coarse_background: float = 0.5
    # Connected components smaller than this many pixels are dropped from masks and regions.
    min_region_area: int = 0
    # Polygon simplification: approxPolyDP epsilon as a fraction of the contour's perimeter.
    polygon_epsilon: float = 0.005
    # Optional dense CRF on the label map (needs the pydensecrf2 package); the reference's CRF settings below.
    crf: bool = False
    crf_iterations: int = 10
    crf_pos_xy_std: float = 1.0
    crf_pos_weight: float = 3.0
    crf_bi_xy_std: float = 67.0
    crf_bi_rgb_std: float = 3.0
    crf_bi_weight: float = 4.0
