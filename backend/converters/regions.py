"""Shared work of the region converters (BrushLabels, RectangleLabels, PolygonLabels): mask settings from
tag attributes over backend-wide defaults, the label map honouring `predicted_values` (as for Choices), the
worker's neutral mask form read back, and region assembly. Pure functions of plain data; no torch.

The worker's output for a region control (one task) is plain JSON:
    {"labels": [...], "scores": [...], "tags": [...],          # as for Choices (ControlOutput)
     "masks": {"mode": "clip-es", "width": W, "height": H,     # tagclip_core MaskResult.to_json()
               "masks": [{"label": L, "score": s, "rle": {"size": [H, W], "counts": [...]},
                          "regions": [{"bbox": [x, y, w, h], "polygon": [[x, y], ...], "area": n,
                                       "score": s}, ...]}, ...]}}
`rle` is COCO's uncompressed run-length form: column-major, runs alternating 0 and 1 starting with 0.
Regions are made only for the labels the control selects (TagCLIP's tags, or an absolute threshold).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from tagclip_core.types import MaskMode

from ..errors import LabelConfigError
from .base import ClassDef, ControlOutput, ControlPlan, Converter, label_classes, region_id, select_labels

# Tag attribute choosing the mask mode of a control ("clip-es" or "coarse").
MASK_MODE_ATTR = "model_mask_mode"
# Tag attribute: connected regions smaller than this many image pixels are dropped.
MIN_AREA_ATTR = "model_min_region_area"
# Tag attribute switching a control's masks off ("false", "off", "no", "0").
MASKS_ATTR = "model_masks"
MASK_MODES = tuple(m.value for m in MaskMode)
_OFF_VALUES = frozenset({"false", "off", "no", "0"})
_ON_VALUES = frozenset({"true", "on", "yes", "1"})
# Label Studio coordinates are percentages of the image size.
_PERCENT = 100.0
_DIGITS = 6


@dataclass(frozen=True)
class MaskDefaults:
    """Backend-wide mask settings (e.g. from the backend's extra_params); tag attributes override them."""

    # Mask mode when a control does not say: coarse is nearly free, clip-es is the paper's CLS-SEG.
    mode: MaskMode = MaskMode.COARSE
    # Regions smaller than this many pixels are dropped (the worker also drops them from brush masks).
    min_region_area: int = 0
    # Predict region controls at all (False: every region control is skipped, e.g. per project).
    enabled: bool = True

    def __post_init__(self) -> None:
        try:  # a plain string becomes the enum, so equal defaults hash equal
            object.__setattr__(self, "mode", MaskMode(self.mode))
        except ValueError as e:
            raise LabelConfigError(f"default mask mode {self.mode!r} is not one of {MASK_MODES}") from e


@dataclass(frozen=True)
class RegionPlan(ControlPlan):
    """A region control's plan: a ControlPlan plus how its masks are made."""

    mode: MaskMode = MaskMode.COARSE
    min_region_area: int = 0

    def to_payload(self) -> dict[str, Any]:
        # threshold: the worker segments exactly the labels `select_labels` keeps (masks compete for pixels).
        masks = {"mode": self.mode, "min_region_area": self.min_region_area, "threshold": self.threshold}
        return {**super().to_payload(), "masks": masks}

    def fingerprint(self) -> list[Any]:
        return [*super().fingerprint(), self.mode, self.min_region_area]


@dataclass(frozen=True)
class LabelMask:
    """One label's mask as the worker sent it (neutral run lengths and regions in image pixels)."""

    label: str
    score: float
    rle: Mapping[str, Any]
    regions: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class MaskOutput:
    """The worker's output for one region control and one task: scores and tags, and masks per label."""

    control: ControlOutput
    mode: str
    width: int
    height: int
    masks: Mapping[str, LabelMask]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MaskOutput:
        control = ControlOutput.from_json(data)
        masks = data.get("masks") or {}
        width, height = int(masks.get("width", 0)), int(masks.get("height", 0))
        by_label = {}
        for entry in masks.get("masks", ()):
            tag = LabelMask(
                label=str(entry["label"]),
                score=float(entry.get("score", 0.0)),
                rle=entry["rle"],
                regions=tuple(entry.get("regions", ())),
            )
            by_label[tag.label] = tag
        if by_label and (width < 1 or height < 1):
            raise ValueError(f"masks without a valid image size: width={width}, height={height}")
        return cls(control, str(masks.get("mode", "")), width, height, by_label)


def parse_mask_mode(control: Any, default: MaskMode) -> MaskMode:
    raw = str(control.attr.get(MASK_MODE_ATTR) or default).strip().lower()
    try:
        return MaskMode(raw)
    except ValueError as e:
        raise LabelConfigError(
            f"{control.tag} {control.name!r}: {MASK_MODE_ATTR}={raw!r} is not one of {MASK_MODES}"
        ) from e


def parse_min_area(control: Any, default: int) -> int:
    raw = control.attr.get(MIN_AREA_ATTR)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError as e:
        raise LabelConfigError(f"{control.tag} {control.name!r}: {MIN_AREA_ATTR}={raw!r} is not an integer") from e
    if value < 0:
        raise LabelConfigError(f"{control.tag} {control.name!r}: {MIN_AREA_ATTR}={raw!r} is negative")
    return value


def parse_enabled(control: Any, default: bool) -> bool:
    raw = control.attr.get(MASKS_ATTR)
    if raw is None or str(raw).strip() == "":
        return default
    text = str(raw).strip().lower()
    if text not in _OFF_VALUES | _ON_VALUES:
        raise LabelConfigError(f"{control.tag} {control.name!r}: {MASKS_ATTR}={raw!r} is not true/false")
    return text in _ON_VALUES


def percent(value: float, total: int) -> float:
    """value as a percentage of total, clipped to [0, 100]."""
    return round(min(max(_PERCENT * value / total, 0.0), _PERCENT), _DIGITS)


class RegionConverter(Converter):
    """Base of the converters whose results are regions on the image, one or more per selected label."""

    # Key of the region value that holds the label list ("brushlabels", "rectanglelabels", ...).
    labels_key: str

    def __init__(self, defaults: MaskDefaults | None = None) -> None:
        self.defaults = defaults or MaskDefaults()

    def classes(self, control: Any, config_xml: str) -> tuple[ClassDef, ...]:
        return label_classes(control)

    def is_single(self, control: Any) -> bool:
        # Every selected label gets its own regions; the control's choice="single" is about a region's labels.
        return False

    def plan(
        self, control: Any, images: Mapping[str, str], config_xml: str, default_threshold: float | None
    ) -> RegionPlan | str:
        if not parse_enabled(control, self.defaults.enabled):
            return f"{self.tag} {control.name!r}: masks are switched off"
        planned = self.read_plan(control, images, config_xml, default_threshold)
        if isinstance(planned, str):
            return planned
        base = {f.name: getattr(planned, f.name) for f in fields(ControlPlan)}
        return RegionPlan(
            **base,
            mode=parse_mask_mode(control, self.defaults.mode),
            min_region_area=parse_min_area(control, self.defaults.min_region_area),
        )

    def region_value(self, selected: Sequence[ClassDef]) -> dict[str, Any]:
        return {self.labels_key: [c.value[0] for c in selected]}

    def read_output(self, data: Mapping[str, Any]) -> MaskOutput:
        return MaskOutput.from_json(data)

    def to_regions(self, output: MaskOutput | Mapping[str, Any], plan: ControlPlan) -> list[dict[str, Any]]:
        """Pure: the result regions for one task, for the selected labels that have a mask."""
        if not isinstance(output, MaskOutput):
            output = MaskOutput.from_json(output)
        min_area = getattr(plan, "min_region_area", 0)
        by_label = {c.label: c for c in plan.classes}
        results = []
        for label, _ in select_labels(output.control, plan):
            tag = output.masks.get(label)
            if tag is None:
                continue
            for index, value, score in self.tag_values(tag, output, min_area):
                value[self.labels_key] = [by_label[label].value[0]]
                results.append(
                    {
                        "id": region_id(f"{plan.name}\x1f{label}\x1f{index}"),
                        "from_name": plan.name,
                        "to_name": plan.to_name,
                        "type": self.result_type,
                        "original_width": output.width,
                        "original_height": output.height,
                        "image_rotation": 0,
                        "value": value,
                        "score": round(float(score), _DIGITS),
                    }
                )
        return results

    @abstractmethod
    def tag_values(self, tag: LabelMask, output: MaskOutput, min_area: int) -> list[tuple[int, dict[str, Any], float]]:
        """(index, region value without its labels, score) for each region of one label."""


def kept_regions(tag: LabelMask, min_area: int) -> list[tuple[int, Mapping[str, Any]]]:
    """(index, region) of a label's regions with at least `min_area` pixels."""
    return [(i, r) for i, r in enumerate(tag.regions) if int(r.get("area", 0)) >= min_area]
