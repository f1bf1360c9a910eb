"""`tagclip tag PATH... --labels a,b,c`: tag images, one JSON line per image.

Module level imports stay light (argparse only) so `tagclip tag --help` does not import torch; the
engine is imported in `run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from typing import Any, TextIO

from .discover import IMAGE_EXTENSIONS, find_images
from .errors import UsageError
from .labels import LabelEntry, parse_label_list, read_label_file

# Exit status when the model cannot be loaded.
LOAD_FAILED_EXIT = 1
STDOUT = "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    extensions = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help=f"image files (always tried) or folders (searched recursively for {extensions})",
    )
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", help="comma-separated class labels, e.g. cat,dog,person")
    labels.add_argument(
        "--labels-file",
        metavar="FILE",
        help='one label per line; "label: prompt1, prompt2" gives a class its own prompts (synonyms)',
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--background",
        default="voc",
        help="background words: voc (default), coco, none, or a comma-separated word list",
    )
    parser.add_argument(
        "--max-side",
        type=_max_side,
        metavar="N",
        help="cap on the image's longer side before inference (engine default 1024); 'none' for no cap",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="N", help="images per predict call")
    parser.add_argument("--out", default=STDOUT, metavar="FILE", help="JSON lines output (default: stdout)")


def run(args: argparse.Namespace) -> int:
    entries = read_label_file(args.labels_file) if args.labels_file else parse_label_list(args.labels)
    paths = find_images(args.paths)
    _check_output_path(args.out)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UsageError(f"--checkpoint: no such file: {args.checkpoint}")
    if not paths:
        print(f"no images found in {' '.join(args.paths)}", file=sys.stderr)
        print("0 images, 0 errors", file=sys.stderr)
        return 0

    from tagclip_core import TagCLIPError

    from .tagging import tag_files

    try:
        engine = load_engine(args, entries)
    except TagCLIPError as error:
        print(f"tagclip tag: error: cannot load the model: {error}", file=sys.stderr)
        return LOAD_FAILED_EXIT
    with _open_output(args.out) as out:
        summary = tag_files(paths, engine.predict, out, args.batch_size)
    print(summary.line(), file=sys.stderr)
    return 0


def load_engine(args: argparse.Namespace, entries: tuple[LabelEntry, ...]) -> Any:
    """TagCLIP with the requested model and classes; raises TagCLIPError (ClassListError as UsageError)."""
    from tagclip_core import ClassListError, ClassSpec, ModelSpec, TagCLIP

    try:
        classes = [ClassSpec(entry.label, entry.prompts) for entry in entries]
    except ClassListError as error:
        raise UsageError(str(error)) from error
    engine = TagCLIP.load(ModelSpec(**model_spec_fields(args)), engine_config(args))
    try:
        engine.set_classes(classes, background=args.background)
    except ClassListError as error:
        raise UsageError(str(error)) from error
    return engine


def model_spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """ModelSpec keyword arguments for the options given; the rest keep ModelSpec's defaults."""
    given = {
        "model_name": args.model_name,
        "pretrained": args.pretrained,
        "checkpoint": args.checkpoint,
        "cache_dir": args.cache_dir,
        "device": args.device,
        "precision": args.precision,
    }
    fields = {key: value for key, value in given.items() if value is not None}
    if args.offline:
        fields["allow_download"] = False
    return fields


def engine_config(args: argparse.Namespace) -> Any:
    """EngineConfig with --max-side applied (0 = no cap); the engine's defaults otherwise."""
    from tagclip_core import EngineConfig, PreprocessConfig

    if args.max_side is None:
        return EngineConfig()
    return EngineConfig(preprocess=PreprocessConfig(max_side=args.max_side or None))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the CLIP model (shared by the commands that load one)."""
    model = parser.add_argument_group("model (defaults: the engine's, ViT-B-16 with OpenAI weights)")
    model.add_argument("--checkpoint", metavar="PATH", help="local CLIP checkpoint (OpenAI .pt or state dict)")
    model.add_argument("--model", dest="model_name", metavar="NAME", help="open_clip architecture name")
    model.add_argument("--pretrained", metavar="TAG", help="open_clip pretrained tag, used without --checkpoint")
    model.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    model.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="fp32 (default); bf16/fp16 on CUDA")
    model.add_argument("--cache-dir", metavar="DIR", help="weights and text-classifier cache")
    model.add_argument("--offline", action="store_true", help="never download weights")


def _max_side(text: str) -> int:
    """Positive pixel count, or 0 for 'none' (no cap)."""
    if text.strip().lower() == "none":
        return 0
    return _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _check_output_path(path: str) -> None:
    if path == STDOUT:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--out: folder does not exist: {folder}")
    if os.path.isdir(path):
        raise UsageError(f"--out: is a folder: {path}")


def _open_output(path: str) -> nullcontext[TextIO] | TextIO:
    if path == STDOUT:
        return nullcontext(sys.stdout)
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--out: cannot write {path}: {error}") from error
