"""The JSON lines `tagclip tag` writes and `tagclip eval` reads.

Prediction line: {"image": path, "scores": {label: float}, "tags": [label, ...], "error": null}
Failed image:    {"image": path, "scores": null, "tags": null, "error": "message"}
Ground truth:    {"image": path, "labels": [label, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import UsageError


def result_record(image: str, scores: Mapping[str, float], tags: Sequence[str]) -> dict[str, Any]:
    return {
        "image": image,
        "scores": {label: float(s) for label, s in scores.items()},
        "tags": list(tags),
        "error": None,
    }


def error_record(image: str, message: str) -> dict[str, Any]:
    return {"image": image, "scores": None, "tags": None, "error": message}


def write_record(stream: TextIO, record: Mapping[str, Any]) -> None:
    stream.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for each non-blank line; `where` is "path:line" for error messages."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{where}: not valid JSON: {error}") from error
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise UsageError(f'{where}: expected an object with an "image" string, got {line[:80]!r}')
        yield where, record
