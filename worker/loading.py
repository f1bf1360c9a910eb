"""Task images fetched and decoded a bounded few at a time.

A chunk may hold up to a thousand tasks (bulk) and an image up to MAX_IMAGE_PIXELS (a 100 MP photo is ~300 MB
decoded), so a worker never decodes a whole chunk at once: tasks come in groups of half IMAGES_IN_MEMORY, and the
next group downloads while the current one is predicted. At most IMAGES_IN_MEMORY tasks' images are decoded at
any time, whatever the chunk's size.

A task whose image cannot be fetched or decoded fails alone: its group carries the error and the others go on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from PIL import Image

from backend.contracts.predict import ChunkSpec, TaskRef
from backend.contracts.source import resolve_source
from backend.errors import DownloadUnavailableError, ImageFetchError
from backend.fetch import redact
from backend.labelstudio.auth import Source
from backend.memory.cache import image_digest
from backend.redaction import scrub
from backend.results import UNAVAILABLE
from tagclip_core.errors import ImageLoadError
from tagclip_core.images import load_image

from .runtime import Runtime

log = logging.getLogger(__name__)

# A task's decoded images by data key.
TaskImages = dict[str, Image.Image]
# Each image's SHA-256 by task index and data key (what the memory's image cache is keyed by).
Digests = dict[int, dict[str, str]]


@dataclass
class LoadedGroup:
    """Some of a chunk's tasks with their images: `spec` is the chunk narrowed to these tasks; `images` holds the
    tasks that loaded, `errors` (kind, message) the ones that did not, by task index."""

    spec: ChunkSpec
    images: dict[int, TaskImages]
    errors: dict[int, tuple[str, str]]


def group_size(images_in_memory: int) -> tuple[int, bool]:
    """(tasks per group, whether the next group downloads ahead) for at most `images_in_memory` tasks' images
    decoded at once."""
    if images_in_memory < 2:
        return 1, False
    return images_in_memory // 2, True


def load_in_groups(spec: ChunkSpec, runtime: Runtime, digests: Digests | None = None) -> Iterator[LoadedGroup]:
    """The chunk's tasks in order, a group at a time, each with its images decoded; a group's images are
    cleared when the next group is asked for (keep what you need from them, not the images). Raises
    LabelStudioAuthError when this worker has no key for the payload's Label Studio (a setup mistake: the job
    fails and is retried). `digests`, when given, receives each image's SHA-256."""
    loader = _Loader(spec, runtime, digests)
    size, ahead = group_size(runtime.settings.images_in_memory)
    groups = [spec.tasks[start : start + size] for start in range(0, len(spec.tasks), size)]
    pending: dict[int, Future[TaskImages]] = {}
    try:
        for number, group in enumerate(groups):
            current = pending or loader.start(group)
            pending = loader.start(groups[number + 1]) if ahead and number + 1 < len(groups) else {}
            loaded = LoadedGroup(dataclasses.replace(spec, tasks=tuple(group)), *loader.collect(group, current))
            del current  # the group's futures hold its images too
            yield loaded
            loaded.images.clear()  # gone before the next group downloads, even if the caller still holds `loaded`
    finally:
        for future in pending.values():
            future.cancel()


def fetch_failure_kind(error: ImageFetchError) -> str:
    """The failure kind of a task whose image could not be fetched: UNAVAILABLE when the failure may pass (a
    timeout, HTTP 5xx, a revoked or disabled key: the task is predicted again later, never stored empty),
    "download" when it will fail the same way every time (not found, too large, refused by policy)."""
    return UNAVAILABLE if isinstance(error, DownloadUnavailableError) else "download"


class _Loader:
    """Fetches and decodes tasks' images on the runtime's download threads."""

    def __init__(self, spec: ChunkSpec, runtime: Runtime, digests: Digests | None) -> None:
        self._keys = sorted({c.data_key for c in spec.controls})
        self._source: Source = resolve_source(spec.source, runtime.settings.label_studio)
        self._runtime = runtime
        self._digests = digests

    def start(self, tasks: Sequence[TaskRef]) -> dict[int, Future[TaskImages]]:
        return {task.index: self._runtime.downloads.submit(self._load, task) for task in tasks}

    def collect(
        self, tasks: Sequence[TaskRef], futures: dict[int, Future[TaskImages]]
    ) -> tuple[dict[int, TaskImages], dict[int, tuple[str, str]]]:
        images: dict[int, TaskImages] = {}
        errors: dict[int, tuple[str, str]] = {}
        for task in tasks:
            try:
                images[task.index] = futures[task.index].result()
            except ImageFetchError as e:
                errors[task.index] = (fetch_failure_kind(e), str(e))
            except ImageLoadError as e:
                errors[task.index] = ("image", str(e))
            except Exception as e:  # a bug in one task's path must not sink the chunk
                log.exception("task %s: unexpected error while loading its image", task.id)
                errors[task.index] = ("internal", scrub(f"{type(e).__name__}: {e}"))
        for index, (kind, message) in errors.items():
            log.warning("task index %d: %s error: %s", index, kind, message)
        return images, errors

    def _load(self, task: TaskRef) -> TaskImages:
        out = {}
        for key in self._keys:
            ref = task.images.get(key)
            if ref is None:
                raise ImageFetchError(f"task {task.id} has no data[{key!r}]")
            data = self._runtime.fetcher.fetch(ref, task.id or 0, self._source)
            out[key] = load_image(data, self._runtime.image_limits, name=redact(str(ref)))
            if self._digests is not None:
                self._digests.setdefault(task.index, {})[key] = image_digest(data)
        return out
