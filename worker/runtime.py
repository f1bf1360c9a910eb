"""The per-process runtime a job runs with: one engine, one HTTP session, bounded image loading.

A job reads it with `current_runtime()`. It is bound per call through a context variable by
`Runtime.run` (embedded mode) or by the worker around each job (`worker.main.TagclipWorker`), so no
module holds a mutable global and two runtimes never mix.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from backend.fetch import FetchLimits, ImageFetcher, LabelStudioAuth, make_session
from backend.identity import model_key
from backend.settings import Settings
from tagclip_core import EngineConfig, ModelSpec, TagCLIP
from tagclip_core.images import ImageLimits
from tagclip_core.model import resolve_device

log = logging.getLogger(__name__)

_CURRENT: ContextVar[Runtime | None] = ContextVar("tagclip_runtime", default=None)


class Runtime:
    """Everything a job needs that is expensive to build: built once per process."""

    def __init__(self, settings: Settings, engine: TagCLIP, name: str = "embedded") -> None:
        self.settings = settings
        self.engine = engine
        self.name = name
        self.model_key = model_key(settings)
        session = make_session(settings.download_threads)
        self.fetcher = ImageFetcher(
            session, LabelStudioAuth(session), FetchLimits(settings.max_download_bytes, settings.download_timeout)
        )
        self.image_limits = ImageLimits(max_pixels=settings.max_image_pixels, max_bytes=settings.max_download_bytes)
        self.downloads = ThreadPoolExecutor(settings.download_threads, thread_name_prefix="tagclip-download")
        # set_classes + predict is one critical section: embedded mode runs jobs on several threads.
        self.engine_lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings, name: str = "embedded") -> Runtime:
        started = time.monotonic()
        spec = ModelSpec(
            model_name=settings.model_name,
            pretrained=settings.pretrained,
            checkpoint=settings.checkpoint,
            cache_dir=settings.cache_dir,
            device=settings.device,
            precision=settings.precision,
            allow_download=settings.allow_download,
        )
        engine = TagCLIP.load(spec, EngineConfig())
        log.info("engine %s loaded on %s in %.1f s", engine.model_id, settings.device, time.monotonic() - started)
        return cls(settings, engine, name)

    @property
    def info(self) -> dict[str, Any]:
        """What a worker publishes about itself (see backend.presence)."""
        return {
            "model_id": self.engine.model_id,
            "model_key": self.model_key,
            "device": str(resolve_device(self.settings.device)),
        }

    @contextlib.contextmanager
    def activate(self) -> Iterator[Runtime]:
        """Bind this runtime for `current_runtime()` in the current context."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    def run(self, job: Callable[[dict[str, Any]], dict[str, Any]], payload: dict[str, Any]) -> dict[str, Any]:
        """Run a job function with this runtime bound (embedded mode's entry)."""
        with self.activate():
            return job(payload)

    def close(self) -> None:
        self.downloads.shutdown(wait=False, cancel_futures=True)


def current_runtime() -> Runtime:
    runtime = _CURRENT.get()
    if runtime is None:
        raise RuntimeError("no tagclip runtime is bound: run jobs with `tagclip worker` or the embedded backend")
    return runtime


def load_runtime(settings: Settings) -> Runtime:
    """Embedded mode's loader, reached by dotted path from backend.queue."""
    return Runtime.load(settings, name="embedded")
