"""`tagclip segment PATH... --labels a,b --out DIR`: masks for each image's tags.

Per image, DIR gets `<name>.npz` (`cams`: float32 [T, H, W] per-tag maps at the original size, `label_map`:
[H, W] with 0 = background and k = the k-th tag, `labels`: the T tags in that order, `mode`) and
`<name>.png`, an overlay a person can look at. One JSON line per image goes to stdout.

Without --tags the tags come from the classifier (classify-then-segment); with --tags those are segmented
(as the backend does for tags a reviewer confirmed). Heavy imports happen in `run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .discover import IMAGE_EXTENSIONS, find_images
from .errors import UsageError
from .labels import LabelEntry, parse_label_list, read_label_file
from .tag import add_model_arguments, engine_config, model_spec_fields

LOAD_FAILED_EXIT = 1
# Overlay: how much of a tag's colour covers its pixels, and the contour width in pixels.
_OVERLAY_ALPHA = 0.45
_CONTOUR_PX = 2
# Distinct colours (RGB) for tags 1..k, cycled.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    extensions = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    parser.add_argument("paths", nargs="+", metavar="PATH", help=f"image files or folders ({extensions})")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated class labels the classifier chooses tags from")
    labels.add_argument("--labels-file", metavar="FILE", help='one label per line, "label: prompt1, prompt2"')
    parser.add_argument("--tags", help="comma-separated tags to segment (default: the classifier's tags)")
    parser.add_argument("--mode", choices=("clip-es", "coarse"), default="clip-es", help="mask mode (clip-es)")
    parser.add_argument("--background", default="voc", help="background words: voc (default), coco, none, or a list")
    parser.add_argument("--min-region-area", type=int, default=0, metavar="PX", help="drop smaller regions")
    parser.add_argument("--crf", action="store_true", help="dense-CRF post-processing (needs pydensecrf2)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_model_arguments(parser)
    parser.add_argument("--max-side", type=int, metavar="N", help="cap on the longer side (default 1024; 0 = none)")


def class_entries(entries: tuple[LabelEntry, ...], tags: tuple[str, ...]) -> tuple[LabelEntry, ...]:
    """The classifier's classes: the labels, then any --tags not among them (so every tag has a class)."""
    known = {entry.label for entry in entries}
    return entries + tuple(LabelEntry(tag) for tag in tags if tag not in known)


def parse_tags(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    tags = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not tags:
        raise UsageError(f"--tags names no tag: {text!r}")
    return tags


def run(args: argparse.Namespace) -> int:
    entries = read_label_file(args.labels_file) if args.labels_file else parse_label_list(args.labels)
    tags = parse_tags(args.tags)
    entries = class_entries(entries, tags)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint: no such file: {args.checkpoint}")
    if args.min_region_area < 0:
        raise UsageError(f"--min-region-area must be >= 0, got {args.min_region_area}")
    if args.max_side is not None and args.max_side < 0:
        raise UsageError(f"--max-side must be >= 0, got {args.max_side}")
    paths = find_images(args.paths)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out: cannot create {out_dir}: {error}") from error
    if not paths:
        print(f"no images found in {' '.join(args.paths)}", file=sys.stderr)
        return 0

    from tagclip_core import TagCLIPError

    try:
        engine, segmenter = _load(args, entries, need_classifier=args.mode == "coarse" or not tags)
    except TagCLIPError as error:
        print(f"tagclip segment: error: cannot load the model: {error}", file=sys.stderr)
        return LOAD_FAILED_EXIT
    errors = 0
    used: set[str] = set()
    for path in paths:
        record = _segment_one(path, engine, segmenter, entries, tags, args.mode, out_dir, used)
        errors += record.get("error") is not None
        print(json.dumps(record), flush=True)
    print(f"{len(paths)} images, {errors} errors", file=sys.stderr)
    return 0


def _load(args: argparse.Namespace, entries: tuple[LabelEntry, ...], need_classifier: bool) -> tuple[Any, Any]:
    """(TagCLIP engine or None when no classification is needed, Segmenter) sharing one loaded CLIP."""
    from tagclip_core import ClassListError, ClassSpec, ModelSpec, TagCLIP
    from tagclip_core.config import MaskConfig
    from tagclip_core.masks import Segmenter
    from tagclip_core.model import load_clip, resolve_cache_dir

    try:
        classes = [ClassSpec(entry.label, entry.prompts) for entry in entries]
    except ClassListError as error:
        raise UsageError(str(error)) from error
    spec = ModelSpec(**model_spec_fields(args))
    config = engine_config(args)
    clip = load_clip(spec)
    engine = None
    if need_classifier:
        engine = TagCLIP(clip, config, text_cache_dir=resolve_cache_dir(spec))
        try:
            engine.set_classes(classes, background=args.background)
        except ClassListError as error:
            raise UsageError(str(error)) from error
    masks = MaskConfig(mode=args.mode, background=args.background, min_region_area=args.min_region_area, crf=args.crf)
    segmenter = Segmenter(clip, masks, config.preprocess, text_cache_dir=resolve_cache_dir(spec))
    return engine, segmenter


def _segment_one(
    path: str,
    engine: Any,
    segmenter: Any,
    entries: tuple[LabelEntry, ...],
    tags: tuple[str, ...],
    mode: str,
    out_dir: Path,
    used: set[str],
) -> dict[str, Any]:
    from tagclip_core import ClassSpec, TagCLIPError
    from tagclip_core.images import load_image

    try:
        image = load_image(path)
        prediction = engine.predict([image])[0] if (mode == "coarse" or not tags) else None
        chosen = tags or tuple(prediction.tags)
        prompts = {entry.label: entry.prompts for entry in entries}
        specs = [ClassSpec(tag, prompts.get(tag, ())) for tag in chosen]
        result = segmenter.segment(image, specs, mode=mode, prediction=prediction)
    except TagCLIPError as error:
        return {"path": path, "error": str(error)}
    npz, png = output_paths(out_dir, unique_stem(Path(path).stem, used))
    write_outputs(npz, png, image, result)
    return {
        "path": path,
        "tags": list(result.labels),
        "regions": {m.label: len(m.regions) for m in result.masks},
        "npz": str(npz),
        "overlay": str(png),
        "error": None,
    }


def unique_stem(stem: str, used: set[str]) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... when an earlier input of the run took it (a/img.jpg and b/img.jpg).
    Compared case-insensitively, so two inputs never share a file on a case-insensitive file system."""
    candidate, number = stem, 1
    while candidate.casefold() in used:
        number += 1
        candidate = f"{stem}-{number}"
    used.add(candidate.casefold())
    return candidate


def output_paths(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """(npz, png) for a stem. The suffix is appended, never substituted: `img.001` -> `img.001.npz`
    (Path.with_suffix would make both img.001 and img.002 into img.npz)."""
    return out_dir / f"{stem}.npz", out_dir / f"{stem}.png"


def write_outputs(npz: Path, png: Path, image: Any, result: Any) -> None:
    """`npz` with the float32 maps and the label map, and `png` with the overlay."""
    import numpy as np

    np.savez_compressed(
        npz,
        cams=result.cams.astype(np.float32),
        label_map=result.label_map,
        labels=np.array(result.labels, dtype=str),
        mode=np.array(result.mode),
    )
    overlay(image, result).save(png)


def overlay(image: Any, result: Any) -> Any:
    """RGB PIL image: each tag's pixels tinted with its colour, region outlines, and a legend."""
    import cv2
    import numpy as np
    from PIL import Image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    labels = result.label_map
    tinted = rgb.copy()
    for index in range(len(result.masks)):
        colour = np.array(_PALETTE[index % len(_PALETTE)], dtype=np.float32)
        inside = labels == index + 1
        tinted[inside] = (1 - _OVERLAY_ALPHA) * rgb[inside] + _OVERLAY_ALPHA * colour
    canvas = np.ascontiguousarray(tinted.clip(0, 255).astype(np.uint8))
    for index, mask in enumerate(result.masks):
        colour = tuple(int(c) for c in _PALETTE[index % len(_PALETTE)])
        contours, _ = cv2.findContours((mask.mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, _CONTOUR_PX)
        cv2.rectangle(canvas, (0, 3 + 18 * index), (220, 21 + 18 * index), (0, 0, 0), cv2.FILLED)
        cv2.putText(
            canvas,
            f"{mask.label} {mask.score:.2f}",
            (4, 16 + 18 * index),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            colour,
            1,
            cv2.LINE_AA,
        )
    return Image.fromarray(canvas)
