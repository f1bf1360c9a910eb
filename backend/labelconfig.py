"""Label config -> the controls we predict (a `PredictionPlan`), via label-studio-sdk's LabelInterface.

Every Choices (single or multiple), Taxonomy, BrushLabels, RectangleLabels and PolygonLabels whose toName is
an Image is predicted; each label is a class whose prompts come from `predicted_values="a,b"`. The region
controls (Brush/Rectangle/PolygonLabels) also get masks for the labels they select, in the mode and with the
minimum region size of their tag attributes, else of the project's `MaskDefaults` (extra_params); masks
switched off leave them out. Anything else is listed in `skipped` with the reason, so a config with
nothing to predict still answers /setup and gives empty /predict results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from label_studio_sdk.label_interface import LabelInterface

from .converters import ControlPlan, MaskDefaults, RegionPlan, converters_with
from .errors import LabelConfigError

log = logging.getLogger(__name__)

# Labels one control may have unless the caller says otherwise (Settings.max_labels_per_control).
DEFAULT_MAX_LABELS = 10_000


@dataclass(frozen=True)
class PredictionPlan:
    """What to predict for a label config."""

    controls: tuple[ControlPlan, ...]
    skipped: tuple[str, ...]  # one line per control we do not predict, with the reason

    def fingerprint(self) -> list:
        return [c.fingerprint() for c in self.controls]

    @property
    def has_masks(self) -> bool:
        """True when some control gets regions from masks (the worker computes masks for it)."""
        return any(isinstance(c, RegionPlan) for c in self.controls)


@dataclass(frozen=True)
class ParsedConfig:
    interface: LabelInterface
    plan: PredictionPlan
    digest: str  # sha256 of the config text
    # Image object name -> the task data key holding its reference, in config order.
    images: Mapping[str, str] = field(default_factory=dict)
    # Every control a converter reads, predicted or not (region controls with masks off included): what
    # exports and reports read annotations with.
    controls: tuple[ControlPlan, ...] = ()

    def control(self, name: str) -> ControlPlan | None:
        return next((c for c in self.controls if c.name == name), None)


def parse_label_config(
    config_xml: str,
    default_threshold: float | None = None,
    mask_defaults: MaskDefaults | None = None,
    max_labels: int = DEFAULT_MAX_LABELS,
) -> ParsedConfig:
    """Parse a label config; raises LabelConfigError when it is not a usable config, or a control has more than
    `max_labels` labels (MAX_LABELS_PER_CONTROL).

    default_threshold and mask_defaults (mode, minimum region size, on/off) apply to controls whose tag
    attributes do not set them: a tag attribute wins over the project's extra_params, which win over the
    built-in defaults.
    """
    if not isinstance(config_xml, str) or not config_xml.strip():
        raise LabelConfigError("label config is empty")
    try:
        interface = LabelInterface(config_xml)
    except Exception as e:  # the SDK raises bare Exception subclasses for XML syntax errors
        raise LabelConfigError(f"label config cannot be parsed: {e}") from e

    images = {}
    for obj in interface.objects:
        value = str(obj.value or "")
        if obj.tag == "Image" and value.startswith("$") and len(value) > 1:
            images[obj.name] = value[1:]

    controls: list[ControlPlan] = []
    readable: list[ControlPlan] = []
    skipped: list[str] = []
    converters = converters_with(mask_defaults)
    for control in interface.controls:
        converter = next((c for c in converters if c.tag == control.tag), None)
        if converter is None:
            skipped.append(f"{control.tag} {control.name!r}: no converter for this tag type")
            continue
        reason = converter.match(control, list(images))
        if reason is not None:
            skipped.append(reason)
            continue
        read = converter.read_plan(control, images, config_xml, default_threshold)
        if not isinstance(read, str):
            if len(read.classes) > max_labels:
                raise LabelConfigError(
                    f"{control.tag} {control.name!r} has {len(read.classes)} labels, over "
                    f"MAX_LABELS_PER_CONTROL={max_labels}"
                )
            readable.append(read)
        planned = converter.plan(control, images, config_xml, default_threshold)
        if isinstance(planned, str):
            skipped.append(planned)
        else:
            controls.append(planned)
    digest = hashlib.sha256(config_xml.encode()).hexdigest()
    plan = PredictionPlan(tuple(controls), tuple(skipped))
    return ParsedConfig(interface, plan, digest, images, tuple(readable))


class LabelConfigCache:
    """A small thread-safe LRU of parsed configs (Label Studio sends the config with every /predict)."""

    def __init__(self, size: int = 64, max_labels: int = DEFAULT_MAX_LABELS) -> None:
        self._size = size
        self._max_labels = max_labels
        self._items: OrderedDict[tuple[str, float | None, MaskDefaults | None], ParsedConfig] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, config_xml: str, default_threshold: float | None = None, mask_defaults: MaskDefaults | None = None
    ) -> ParsedConfig:
        key = (hashlib.sha256(str(config_xml).encode()).hexdigest(), default_threshold, mask_defaults)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        parsed = parse_label_config(config_xml, default_threshold, mask_defaults, self._max_labels)
        if parsed.plan.skipped:
            log.info("label config: not predicted: %s", "; ".join(parsed.plan.skipped))
        if not parsed.plan.controls:
            log.warning(
                "label config has nothing TagCLIP can predict (Choices, Taxonomy, BrushLabels, RectangleLabels or "
                "PolygonLabels on an Image, with masks on for the last three): %s",
                "; ".join(parsed.plan.skipped) or "no control tags",
            )
        with self._lock:
            self._items[key] = parsed
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return parsed


def plan_summary(plan: PredictionPlan) -> str:
    return json.dumps([{"name": c.name, "tag": c.tag, "classes": len(c.classes)} for c in plan.controls])
