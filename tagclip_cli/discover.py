"""Which files `tagclip tag` reads: explicit files always, folders recursively by image extension."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from .errors import UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def find_images(paths: Sequence[str]) -> list[str]:
    """Files to tag, in argument order, each folder walked in sorted order, duplicates dropped.

    An explicit file is always tried, whatever its extension. Inside folders, files with an image
    extension (any case) are taken; hidden files and folders (names starting with '.') are skipped.
    """
    found: dict[str, str] = {}
    for path in paths:
        for file in _expand(path):
            found.setdefault(os.path.normpath(file), file)
    return list(found.values())


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _expand(path: str) -> Iterator[str]:
    if os.path.isfile(path):
        yield path
    elif os.path.isdir(path):
        yield from _walk(path)
    else:
        raise UsageError(f"no such file or folder: {path}")


def _walk(folder: str) -> Iterator[str]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and is_image_name(name):
                yield os.path.join(root, name)
