"""Mask benchmark (not a test): time per image per mask mode next to the tagging time, peak memory, and the
payload a task's masks cost on the queue (neutral run lengths) and in Label Studio (brush RLE, boxes, polygons).

Random weights with the real ViT-B/16 shape (compute cost does not depend on weight values); fixed tags so
that the modes do the same work whatever the random classifier says. Each scenario runs in its own process so
its peak RSS is its own.

    .venv/bin/python bench/bench_masks.py                      # CPU: 500x375 and a 4000x3000 photo (capped)
    .venv/bin/python bench/bench_masks.py --sizes 375x500 --repeats 1   # a short smoke run
    .venv/bin/python bench/bench_masks.py --json out.json      # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tagclip_core import EngineConfig, ModelSpec, TagCLIP  # noqa: E402
from tagclip_core.config import MaskConfig  # noqa: E402
from tagclip_core.masks import Segmenter, coarse_masks  # noqa: E402
from tagclip_core.model import load_clip  # noqa: E402
from tagclip_core.prompts import VOC_CLASSES  # noqa: E402
from tagclip_core.random_weights import VIT_B_16, write_random_checkpoint  # noqa: E402

TAGS = ("cat", "dog", "person")
LABEL_CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="mask" toName="image">{labels}</BrushLabels>
<RectangleLabels name="box" toName="image">{labels}</RectangleLabels>
<PolygonLabels name="poly" toName="image">{labels}</PolygonLabels></View>"""


def photo(height: int, width: int, seed: int) -> Image.Image:
    """A smooth random photo-like image (blocks of colour, bicubically enlarged)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def timed(function, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one warm-up call, and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def label_studio_payload(result, tags: tuple[str, ...]) -> dict[str, int]:
    """Bytes of the Label Studio results the backend's converters make from a mask result."""
    from label_studio_sdk.label_interface import LabelInterface

    from backend.converters.brush import BrushLabelsConverter
    from backend.converters.polygon import PolygonLabelsConverter
    from backend.converters.rectangle import RectangleLabelsConverter

    config = LABEL_CONFIG.format(labels="".join(f'<Label value="{t}"/>' for t in tags))
    interface = LabelInterface(config)
    output = {"labels": list(tags), "scores": [1.0] * len(tags), "tags": list(tags), "masks": result.to_json()}
    sizes = {}
    for name, converter in (
        ("mask", BrushLabelsConverter()),
        ("box", RectangleLabelsConverter()),
        ("poly", PolygonLabelsConverter()),
    ):
        plan = converter.plan(interface.get_control(name), {"image": "image"}, config, None)
        sizes[f"ls_{name}_bytes"] = len(json.dumps(converter.to_regions(output, plan)))
    return sizes


def run_scenario(args: argparse.Namespace) -> dict:
    """One image size in this process; returns the figures."""
    torch.set_num_threads(args.threads)
    height, width = args.size
    clip = load_clip(ModelSpec(checkpoint=args.checkpoint, cache_dir=args.cache))
    engine = TagCLIP(clip, EngineConfig(), text_cache_dir=Path(args.cache))
    engine.set_classes(VOC_CLASSES + tuple(t for t in TAGS if t not in VOC_CLASSES), background="voc")
    segmenter = Segmenter(clip, MaskConfig(), text_cache_dir=Path(args.cache))
    image = photo(height, width, seed=0)
    figures: dict = {"size": f"{width}x{height}", "threads": torch.get_num_threads(), "tags": len(TAGS)}
    tag_s, predictions = timed(lambda: engine.predict([image]), args.repeats)
    prediction = predictions[0]
    figures["model_input"] = "x".join(str(s) for s in prediction.input_size[::-1])
    figures["tag_s"] = round(tag_s, 4)
    coarse_s, coarse = timed(lambda: coarse_masks(prediction, TAGS), args.repeats)
    figures["coarse_s"] = round(coarse_s, 4)
    figures["coarse_over_tagging"] = round(coarse_s / tag_s, 4)
    if not args.skip_clip_es:
        clip_es_s, clip_es = timed(lambda: segmenter.segment(image, TAGS), args.repeats)
        figures["clip_es_s"] = round(clip_es_s, 4)
        figures["clip_es_over_tagging"] = round(clip_es_s / tag_s, 4)
    for mode, result in (("coarse", coarse), ("clip_es", None if args.skip_clip_es else clip_es)):
        if result is None:
            continue
        figures[f"{mode}_neutral_bytes"] = len(json.dumps(result.to_json()))
        figures.update({f"{mode}_{k}": v for k, v in label_studio_payload(result, TAGS).items()})
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return figures


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="375x500,3000x4000", help="HxW list (default 375x500,3000x4000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measure after a warm-up")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-clip-es", action="store_true", help="time tagging and coarse masks only")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--scenario-size", type=parse_size, dest="size", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size is not None:
        print(json.dumps(run_scenario(args)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as work:
        checkpoint = write_random_checkpoint(Path(work) / "vit-b-16-random.pt", VIT_B_16, seed=0)
        for size in args.sizes.split(","):
            command = [
                sys.executable,
                __file__,
                "--scenario-size",
                size,
                "--checkpoint",
                str(checkpoint),
                "--cache",
                work,
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
            if args.skip_clip_es:
                command.append("--skip-clip-es")
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(output.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
