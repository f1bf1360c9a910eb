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
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tagclip_core.types import MaskMode

from .converters import MaskDefaults
from .converters.regions import MASK_MODES
from .errors import BadRequestError
from .identity import model_key, model_version, normalize_background
from .labelconfig import LabelConfigCache, ParsedConfig, PredictionPlan
from .settings import MASKS_OFF, Settings

BACKGROUND_PARAM = "background"
THRESHOLD_PARAMS = ("threshold", "model_score_threshold")
MASK_MODE_PARAM = "mask_mode"
MIN_AREA_PARAM = "min_region_area"


@dataclass(frozen=True)
class ProjectOptions:
    """A project's options from its extra_params, over the backend's settings."""

    background: str  # canonical background words (identity.normalize_background)
    threshold: float | None  # absolute threshold for controls without their own; None = TagCLIP's rule
    masks: MaskDefaults = MaskDefaults()


@dataclass(frozen=True)
class Resolution:
    """A label config resolved for prediction: what to predict, with which options, under which version."""

    parsed: ParsedConfig
    options: ProjectOptions
    model_version: str
    model_key: str

    @property
    def plan(self) -> PredictionPlan:
        return self.parsed.plan


class Resolver:
    """Resolves label configs for one process's settings; keeps parsed configs and the weights' identity."""

    def __init__(self, settings: Settings, configs: LabelConfigCache | None = None) -> None:
        self.settings = settings
        self.configs = configs or LabelConfigCache(max_labels=settings.max_labels_per_control)
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
        )

    def resolve(self, label_config: str, extra_params: Mapping[str, Any] | None) -> Resolution:
        """Parse `label_config` (cached) with the project's options and compute its model_version."""
        options = self.options(extra_params)
        parsed = self.configs.get(label_config, options.threshold, options.masks)
        version = model_version(self.model_key, self.settings.model_name, parsed.plan, options.background)
        return Resolution(parsed, options, version, self.model_key)

    def version_without_config(self, extra_params: Mapping[str, Any] | None) -> str:
        """The version /setup reports before Label Studio sends a label config (nothing to predict yet)."""
        options = self.options(extra_params)
        return model_version(self.model_key, self.settings.model_name, PredictionPlan((), ()), options.background)


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
