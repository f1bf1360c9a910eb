"""`tagclip export --project ID --format jsonl|csv|coco [--out FILE]`: the reviewed annotations of a Label
Studio project as a curated dataset, one record per task with its image reference (see dataset.py).

Goes through an export snapshot (POST /api/projects/ID/exports/, then its JSON download), which holds the
full annotations; only tasks with a submitted, not cancelled annotation are exported, each from its latest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import UsageError

FORMATS = ("jsonl", "csv", "coco")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
    parser.add_argument("--out", help="output file (default: stdout)")
    parser.add_argument("--view", type=int, help="only the tasks of this Data Manager view")
    parser.add_argument("--url", help="Label Studio URL (LABEL_STUDIO_URL)")
    parser.add_argument("--api-key", help="Label Studio legacy token or personal access token (LABEL_STUDIO_API_KEY)")


def run(args: argparse.Namespace) -> int:
    from backend.errors import BackendError

    from .dataset import read_config, records, to_coco, to_csv

    try:
        client = studio_client(args)
        project = client.project(args.project)
        title = f"tagclip export {time.strftime('%Y-%m-%d %H:%M')}"
        tasks = client.export_snapshot(args.project, title, view=args.view)
    except BackendError as e:
        raise UsageError(str(e)) from e
    config = read_config(project["label_config"])
    rows = records(tasks, config)
    if args.format == "jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif args.format == "csv":
        text = to_csv(rows, config)
    else:
        text = json.dumps(to_coco(rows, config), ensure_ascii=False)
    write_text(text, args.out)
    print(f"exported {len(rows)} reviewed task(s) of project {args.project} as {args.format}", file=sys.stderr)
    return 0


def studio_client(args: argparse.Namespace):
    """A Label Studio client from --url/--api-key, else LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY."""
    from backend.fetch import Source
    from backend.lsapi import LabelStudioClient
    from backend.settings import Settings

    settings = Settings.from_env()
    return LabelStudioClient(
        Source(url=args.url or settings.label_studio_url, api_key=args.api_key or settings.label_studio_api_key)
    )


def write_text(text: str, path: str | None) -> None:
    if path is None or path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e}") from e
