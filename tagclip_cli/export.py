"""`tagclip export --project ID --format jsonl|csv|coco [--out FILE]`: the reviewed annotations of a Label
Studio project as a curated dataset, one record per task with its image reference (see dataset.py).

Goes through an export snapshot (POST /api/projects/ID/exports/, then its JSON download), which holds the
full annotations; only tasks with a submitted, not cancelled annotation are exported, each from its latest.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import UsageError
from .studio import add_studio_arguments, project_snapshot

FORMATS = ("jsonl", "csv", "coco")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_studio_arguments(parser)
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
    parser.add_argument("--out", help="output file (default: stdout)")


def run(args: argparse.Namespace) -> int:
    from .dataset import read_config, records, to_coco, to_csv

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
    print(f"exported {len(rows)} reviewed task(s) of project {args.project} as {args.format}", file=sys.stderr)
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
