"""`tagclip export --project ID --out DIR --format hf|coco|yolo|csv|jsonl`: the reviewed annotations of a Label
Studio project as a dataset folder a training script opens: the images downloaded (through the workers'
fetcher, resumable), split train/val/test, in the format's own layout, with a dataset card (README.md) and a
summary (export.json). `--no-images` writes the records with image references only, as one file (jsonl,
csv or coco; default stdout).

Goes through an export snapshot (POST /api/projects/ID/exports/, then its JSON download), which holds the
full annotations; only tasks with a submitted, not cancelled annotation are exported, each from its latest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .studio import add_studio_arguments, project_snapshot

FORMATS = ("jsonl", "csv", "coco", "hf", "yolo")
REFERENCE_FORMATS = ("jsonl", "csv", "coco")
SUMMARY_FILE = "export.json"
README_FILE = "README.md"
# Exit status when some tasks could not be exported (their images failed); the rest was written.
PARTIAL_EXIT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_studio_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
    parser.add_argument("--out", help="dataset folder (with --no-images: output file, default stdout)")
    parser.add_argument(
        "--no-images", action="store_true", help="records with image references only, one file (jsonl, csv, coco)"
    )
    parser.add_argument("--split", default="0.8,0.1,0.1", metavar="T,V,T", help="train,val,test fractions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument(
        "--near-duplicates",
        type=int,
        metavar="BITS",
        help="images whose 64-bit difference hashes differ in at most BITS bits stay in one split "
        "(default 6; -1: only identical files)",
    )
    parser.add_argument("--downloads", type=int, metavar="N", help="parallel downloads (default DOWNLOAD_THREADS)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.no_images:
        return run_references(args)
    return run_dataset(args)


# --- without images: one file of records with image references ---
def run_references(args: argparse.Namespace) -> int:
    from .dataset import read_config, records, to_coco, to_csv

    if args.format not in REFERENCE_FORMATS:
        raise UsageError(f"--no-images writes {', '.join(REFERENCE_FORMATS)}; {args.format} needs the images")
    _, project, tasks = project_snapshot(args, "export")
    config = read_config(project["label_config"])
    rows = records(tasks, config)
    if args.format == "jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif args.format == "csv":
        text = to_csv(rows, config)
    else:
        text = json.dumps(to_coco(rows, config), ensure_ascii=False)
    write_text(text, args.out)
    skipped = sum(len(row["skipped_regions"]) for row in rows)
    print(
        f"exported {len(rows)} reviewed task(s) of project {args.project} as {args.format}"
        + (f"; {skipped} region(s) skipped" if skipped else ""),
        file=sys.stderr,
    )
    return 0


def write_text(text: str, path: str | None) -> None:
    if path is None or path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e}") from e


# --- the dataset folder ---
@dataclass(frozen=True)
class DatasetOptions:
    """What `tagclip export` was asked for (folder mode)."""

    root: Path
    fmt: str
    split: Any  # tagclip_cli.splits.SplitConfig
    downloads: int  # parallel downloads
    progress: bool


def dataset_options(args: argparse.Namespace, settings: Any) -> DatasetOptions:
    from .splits import DEFAULT_MAX_DISTANCE, SplitConfig, parse_fractions

    if not args.out or args.out == "-":
        raise UsageError("--out DIR is required (or --no-images for one file of records on stdout)")
    try:
        fractions = parse_fractions(args.split)
    except ValueError as e:
        raise UsageError(f"--split: {e}") from e
    downloads = settings.download_threads if args.downloads is None else args.downloads
    if downloads < 1:
        raise UsageError(f"--downloads must be >= 1, got {downloads}")
    distance = DEFAULT_MAX_DISTANCE if args.near_duplicates is None else args.near_duplicates
    root = Path(args.out)
    check_output_folder(root)
    split = SplitConfig(fractions=fractions, seed=args.seed, max_distance=distance)
    return DatasetOptions(root, args.format, split, downloads, progress=not args.quiet)


def check_output_folder(root: Path) -> None:
    """Refuse a folder that holds other things than an earlier export (its files would be pruned)."""
    from .export_images import INDEX_PATH

    if root.exists() and not root.is_dir():
        raise UsageError(f"--out {root} is a file; give a folder (or --no-images to write one file)")
    earlier = (root / SUMMARY_FILE).exists() or (root / INDEX_PATH).exists()
    if root.is_dir() and any(root.iterdir()) and not earlier:
        raise UsageError(f"--out {root} is not empty and holds no earlier tagclip export; give a new or empty folder")


def run_dataset(args: argparse.Namespace) -> int:
    from backend.settings import Settings

    from .dataset import read_config

    settings = Settings.from_env()
    options = dataset_options(args, settings)
    client, project, tasks = project_snapshot(args, "export", full_predictions=True, settings=settings)
    config = read_config(project["label_config"])
    check_format(options.fmt, config)
    result = export_dataset(options, config, tasks, client.source, settings)
    origin = {"project": args.project, "title": project.get("title") or "", "view": args.view, "url": client.base}
    summary = write_card_and_summary(options, config, result, origin)
    return report(options, summary)


def check_format(fmt: str, config: Any) -> None:
    from .export_formats import region_kinds

    if fmt == "yolo" and not region_kinds(config):
        raise UsageError("--format yolo needs RectangleLabels, PolygonLabels or BrushLabels in the label config")


@dataclass
class ExportResult:
    items: list[Any]  # tagclip_cli.export_formats.DatasetItem, one per exported task
    reviewed: list[dict[str, Any]]  # the snapshot's reviewed tasks
    fetched: Any  # tagclip_cli.export_images.FetchReport
    failures: list[dict[str, Any]]  # {"task", "image", "reason"} per task not exported
    warnings: list[str]


def export_dataset(
    options: DatasetOptions, config: Any, tasks: list[dict[str, Any]], source: Any, settings: Any
) -> ExportResult:
    """Download, split, place and write the format's files."""
    from tagclip_core.images import ImageLimits

    from .dataset import latest_annotation
    from .export_formats import write_dataset
    from .export_images import ImageRequest, ImageStore, make_fetcher

    reviewed = sorted((t for t in tasks if latest_annotation(t) is not None), key=lambda t: t.get("id") or 0)
    key = next(iter(config.images.values()), None)
    requests, failures = [], []
    for task in reviewed:
        ref = (task.get("data") or {}).get(key) if key else None
        if isinstance(ref, str) and ref.strip():
            requests.append(ImageRequest(ref, int(task["id"])))
        else:
            failures.append({"task": task.get("id"), "image": None, "reason": f"no image reference in data[{key!r}]"})
    store = ImageStore(options.root)
    fetcher = make_fetcher(settings, source.url, options.downloads)
    limits = ImageLimits(max_pixels=settings.max_image_pixels, max_bytes=settings.max_download_bytes)
    fetched = store.fetch_all(
        requests, lambda r: fetcher.fetch(r.ref, r.task, source), limits, options.downloads, options.progress
    )
    failures += _failures_by_task(requests, fetched)
    items = build_items(reviewed, config, fetched.images, key, options.split)
    keep: dict[str, set[str]] = {}
    for item in items:
        store.place(item.image, item.split)
        keep.setdefault(item.split, set()).add(item.image.file)
    store.prune(keep)
    warnings = write_dataset(options.fmt, options.root, items, config)
    return ExportResult(items, reviewed, fetched, failures, warnings)


def _failures_by_task(requests: list[Any], fetched: Any) -> list[dict[str, Any]]:
    """Every task whose image reference failed (a reference shared by tasks fails for each)."""
    from backend.fetch import redact

    reasons = {f.image: f.reason for f in fetched.failures}
    return [{"task": r.task, "image": redact(r.ref), "reason": reasons[r.ref]} for r in requests if r.ref in reasons]


def build_items(
    tasks: list[dict[str, Any]], config: Any, images: dict[str, Any], key: str | None, split_config: Any
) -> list[Any]:
    """The exported items: each task with a stored image, its record in the image's pixels, and its split."""
    from .dataset import task_record
    from .export_formats import DatasetItem
    from .splits import assign_splits

    records = []
    for task in tasks:
        image = images.get((task.get("data") or {}).get(key)) if key else None
        if image is not None:
            records.append((task_record(task, config, size=(image.width, image.height)), image))
    splits = assign_splits([split_sample(record, image) for record, image in records], split_config)
    return [DatasetItem(record, splits[record["task"]], image) for record, image in records]


def split_sample(record: dict[str, Any], image: Any) -> Any:
    """What the splitter needs of a record: its image's hashes, its labels and kinds of annotation."""
    from .export_formats import REGION_KINDS
    from .splits import Sample

    labels = [(c, x) for c, xs in record["tags"].items() for x in xs]
    labels += [(r["control"], r["label"]) for kind in REGION_KINDS for r in record[kind]]
    kinds = (["tags"] if any(record["tags"].values()) else []) + [k for k in REGION_KINDS if record[k]]
    return Sample(record["task"], image.sha256, image.dhash, frozenset(labels), frozenset(kinds))


def write_card_and_summary(
    options: DatasetOptions, config: Any, result: ExportResult, origin: dict[str, Any]
) -> dict[str, Any]:
    """DIR/README.md (the dataset card) and DIR/export.json (the summary, machine-readable); returns the
    summary."""
    from .dataset_card import CardSource, render_card, review_summary
    from .export_formats import by_split, write_text_file
    from .splits import split_counts

    items = result.items
    exported_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    exported = {i.record["task"] for i in items}
    review = review_summary([t for t in result.reviewed if t.get("id") in exported], config)
    skipped = [{"task": i.record["task"], **region} for i in items for region in i.record["skipped_regions"]]
    summary = {
        **origin,
        "exported_at": exported_at,
        "format": options.fmt,
        "split": asdict(options.split),
        "tasks": len(items),
        "splits": split_counts({i.record["task"]: i.split for i in items}),
        "images": {
            "files": sum(len({i.image.file for i in group}) for group in by_split(items).values()),
            "downloaded": len(result.fetched.downloaded),
            "reused": len(result.fetched.reused),
            "failed": len(result.fetched.failures),
        },
        "model_versions": review.versions,
        "failed": result.failures,
        "skipped_regions": skipped,
        "warnings": result.warnings,
    }
    source = CardSource(origin["url"], origin["project"], origin["title"], origin["view"], exported_at, options.fmt)
    card = render_card(source, items, review, options.split, len(result.failures), len(skipped))
    write_text_file(options.root / README_FILE, card)
    write_text_file(options.root / SUMMARY_FILE, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def report(options: DatasetOptions, summary: dict[str, Any]) -> int:
    """Failures, warnings and one summary line on stderr; the exit status."""
    for failure in summary["failed"]:
        print(f"task {failure['task']}: {failure['reason']}", file=sys.stderr)
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    splits = ", ".join(f"{name} {count}" for name, count in summary["splits"].items()) or "no tasks"
    images = summary["images"]
    skipped = len(summary["skipped_regions"])
    print(
        f"exported {summary['tasks']} reviewed task(s) of project {summary['project']} as {options.fmt} into "
        f"{options.root} ({splits}); images: {images['downloaded']} downloaded, {images['reused']} already there, "
        f"{images['failed']} failed" + (f"; {skipped} region(s) skipped" if skipped else ""),
        file=sys.stderr,
    )
    return PARTIAL_EXIT if summary["failed"] else 0
