"""Class lists from the command line: `--labels cat,dog` or a labels file.

Labels file: one class per line; blank lines and lines starting with '#' are ignored. A line
"label: prompt1, prompt2" gives the class its own prompts (synonyms; the class scores the max over them,
and the label itself is a prompt only if listed); a line "label" uses the label as its only prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .errors import UsageError

_COMMENT = "#"
_PROMPT_SEPARATOR = ":"
_LIST_SEPARATOR = ","


class LabelEntry(NamedTuple):
    """One class: its label and its prompts (empty: the label is the prompt)."""

    label: str
    prompts: tuple[str, ...] = ()


def parse_label_list(text: str) -> tuple[LabelEntry, ...]:
    """Entries from a comma-separated list, e.g. "cat, dog,person"."""
    entries = tuple(LabelEntry(label.strip()) for label in text.split(_LIST_SEPARATOR) if label.strip())
    if not entries:
        raise UsageError(f"--labels names no label: {text!r}")
    return _check_unique(entries, "--labels")


def parse_label_lines(lines: list[str], source: str) -> tuple[LabelEntry, ...]:
    """Entries from the lines of a labels file; `source` names the file in error messages."""
    entries = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith(_COMMENT):
            continue
        label, _, prompt_text = line.partition(_PROMPT_SEPARATOR)
        if not label.strip():
            raise UsageError(f"{source}:{number}: no label before ':' in {raw.rstrip()!r}")
        prompts = tuple(p.strip() for p in prompt_text.split(_LIST_SEPARATOR) if p.strip())
        entries.append(LabelEntry(label.strip(), prompts))
    if not entries:
        raise UsageError(f"{source}: no labels (one label per line expected)")
    return _check_unique(tuple(entries), source)


def read_label_file(path: str) -> tuple[LabelEntry, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read labels file {path}: {error}") from error
    return parse_label_lines(text.splitlines(), path)


def _check_unique(entries: tuple[LabelEntry, ...], source: str) -> tuple[LabelEntry, ...]:
    labels = [entry.label for entry in entries]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UsageError(f"{source}: duplicate labels {duplicates}")
    return entries
