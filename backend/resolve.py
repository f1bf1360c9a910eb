"""One resolution path from (label config, extra_params, settings) to (what to predict, model_version).

/setup and /predict (backend.web), the bulk planner (CLI and POST /jobs) and every bulk worker (which checks
a chunk's version before writing) resolve through `Resolver.resolve`, so the same inputs give the same
plan and version everywhere. Export and report read a config's controls through the same parse
(`backend.labelconfig`).

extra_params (the ML backend's JSON in Label Studio's model settings) may set:
    background       "voc" | "coco" | "none" | "w1,w2" | ["w1", "w2"]   (default TAGCLIP_BACKGROUND)
    threshold        a number in [0, 1]: absolute threshold for controls without model_score_threshold
    mask_mode        "coarse" | "clip-es" | "off"                        (default TAGCLIP_MASK_MODE)
    min_region_area  pixels, an integer >= 0                             (default TAGCLIP_MIN_REGION_AREA)
    learn            true | false: learn from reviewed examples (docs/learning.md)   (default false)

With `learn` on, a project's resolution (given its id) also names the memory's generation, which enters the
model_version; with it off, or before anything is learned, the version is exactly TagCLIP's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tagclip_core.types import MaskMode

from .contracts.predict import MemorySpec
from .converters import MaskDefaults
from .converters.regions import MASK_MODES
from .errors import BadRequestError, MemoryUnavailableError
from .identity import model_key, model_version, normalize_background
from .labelconfig import LabelConfigCache, ParsedConfig, PredictionPlan
from .memory.examples import learning_controls
from .settings import MASKS_OFF, Settings

BACKGROUND_PARAM = "background"
THRESHOLD_PARAMS = ("threshold", "model_score_threshold")
MASK_MODE_PARAM = "mask_mode"
MIN_AREA_PARAM = "min_region_area"
LEARN_PARAM = "learn"

# A project's memory generation by project id (backend.memory.store.MemoryStore.generation).
GenerationReader = Callable[[int], int]


@dataclass(frozen=True)
class ProjectOptions:
    """A project's options from its extra_params, over the backend's settings."""

    background: str  # canonical background words (identity.normalize_background)
    threshold: float | None  # absolute threshold for controls without their own; None = TagCLIP's rule
    masks: MaskDefaults = MaskDefaults()
    learn: bool = False  # adapt predictions with the project's memory of reviewed examples


@dataclass(frozen=True)
class Resolution:
    """A label config resolved for prediction: what to predict, with which options, under which version."""

    parsed: ParsedConfig
    options: ProjectOptions
    model_version: str
    model_key: str
    # The memory the predictions use (its controls: backend.memory.examples.learning_controls); None: TagCLIP's.
    learning: MemorySpec | None = None

    @property
    def plan(self) -> PredictionPlan:
        return self.parsed.plan

    @property
    def memory_generation(self) -> int | None:
        return self.learning.generation if self.learning is not None else None


class Resolver:
    """Resolves label configs for one process's settings; keeps parsed configs and the weights' identity."""

    def __init__(
        self, settings: Settings, configs: LabelConfigCache | None = None, generations: GenerationReader | None = None
    ) -> None:
        self.settings = settings
        self.configs = configs or LabelConfigCache(max_labels=settings.max_labels_per_control)
        # Reads a learning project's memory generation; None: every memory counts as generation 0.
        self.generations = generations
        self._model_key: str | None = None
        self._lock = threading.Lock()

    @property
    def model_key(self) -> str:
        """The weights' identity (identity.model_key), computed once."""
        with self._lock:
            if self._model_key is None:
                self._model_key = model_key(self.settings)
            return self._model_key

    def options(self, extra_params: Mapping[str, Any] | None) -> ProjectOptions:
        """The project's options; raises BadRequestError naming a malformed extra_params value."""
        extra = extra_params or {}
        background = extra.get(BACKGROUND_PARAM, self.settings.background)
        if not isinstance(background, (str, list)) or (
            isinstance(background, list) and not all(isinstance(w, str) for w in background)
        ):
            raise BadRequestError(f"extra_params.background must be a string or a list of words, got {background!r}")
        return ProjectOptions(
            background=normalize_background(background),
            threshold=_threshold(extra),
            masks=_mask_defaults(extra, self.settings),
            learn=_learn(extra),
        )

    def resolve(
        self,
        label_config: str,
        extra_params: Mapping[str, Any] | None,
        project: int | str | None = None,
        generation: int | None = None,
    ) -> Resolution:
        """Parse `label_config` (cached) with the project's options and compute its model_version.

        project: the Label Studio project (its id, or /setup's "<id>.<created>"); a learning project's memory
        generation enters the version (`generation` when given, as a bulk chunk pins it; else the current one).
        """
        options = self.options(extra_params)
        parsed = self.configs.get(label_config, options.threshold, options.masks)
        learning = self._learning(options, parsed, project_number(project), generation)
        version = model_version(
            self.model_key,
            self.settings.model_name,
            parsed.plan,
            options.background,
            learning.generation if learning is not None else None,
        )
        return Resolution(parsed, options, version, self.model_key, learning)

    def _learning(
        self, options: ProjectOptions, parsed: ParsedConfig, project: int | None, generation: int | None
    ) -> MemorySpec | None:
        if not options.learn or project is None:
            return None
        controls = learning_controls(parsed.plan)
        if not controls:
            return None
        if generation is None:
            generation = self._generation(project)
        return MemorySpec(project, generation, tuple(c.name for c in controls))

    def _generation(self, project: int) -> int:
        if self.generations is None:
            return 0
        try:
            return int(self.generations(project))
        except Exception as e:  # the store's own errors (Redis, SQLite): the version cannot be known
            raise MemoryUnavailableError(
                f"project {project}: its memory cannot be read: {type(e).__name__}: {e}"
            ) from e

    def version_without_config(self, extra_params: Mapping[str, Any] | None) -> str:
        """The version /setup reports before Label Studio sends a label config (nothing to predict yet)."""
        options = self.options(extra_params)
        return model_version(self.model_key, self.settings.model_name, PredictionPlan((), ()), options.background)


def project_number(project: int | str | None) -> int | None:
    """A Label Studio project id from an int or /setup's "<id>.<created timestamp>" (None when it has none)."""
    if project is None or isinstance(project, bool):
        return None
    if isinstance(project, int):
        return project
    head = str(project).split(".", 1)[0].strip()
    return int(head) if head.isdigit() else None


def _learn(extra: Mapping[str, Any]) -> bool:
    learn = extra.get(LEARN_PARAM, False)
    if not isinstance(learn, bool):
        raise BadRequestError(f"extra_params.{LEARN_PARAM} must be true or false, got {learn!r}")
    return learn


def _threshold(extra: Mapping[str, Any]) -> float | None:
    threshold = next((extra[k] for k in THRESHOLD_PARAMS if extra.get(k) is not None), None)
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise BadRequestError(f"extra_params.threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


def _mask_defaults(extra: Mapping[str, Any], settings: Settings) -> MaskDefaults:
    """The project's mask defaults; absent keys keep the backend's TAGCLIP_MASK_MODE / TAGCLIP_MIN_REGION_AREA."""
    choices = (*MASK_MODES, MASKS_OFF)
    mode = extra.get(MASK_MODE_PARAM)
    if mode is not None and (not isinstance(mode, str) or mode.strip().lower() not in choices):
        raise BadRequestError(f"extra_params.{MASK_MODE_PARAM} must be one of {choices}, got {mode!r}")
    area = extra.get(MIN_AREA_PARAM, settings.min_region_area)
    if isinstance(area, bool) or not isinstance(area, int) or area < 0:
        raise BadRequestError(f"extra_params.{MIN_AREA_PARAM} must be an integer >= 0, got {area!r}")
    mode = settings.mask_mode if mode is None else mode.strip().lower()
    if mode == MASKS_OFF:
        return MaskDefaults(min_region_area=area, enabled=False)
    return MaskDefaults(mode=MaskMode(mode), min_region_area=area)
