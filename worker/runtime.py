"""The per-process runtime a job runs with: one engine, one HTTP session, bounded image loading.

A job reads it with `current_runtime()`. It is bound per call through a context variable by
`Runtime.run` (embedded mode) or by the worker around each job (`worker.main.TagclipWorker`), so no
module holds a mutable global and two runtimes never mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from backend.contracts.source import SourceRef, configured_studio, resolve_source
from backend.errors import ModelMismatchError
from backend.fetch import FetchLimits, make_fetcher
from backend.labelstudio.auth import Source
from backend.labelstudio.client import LabelStudioClient
from backend.memory.cache import ImageCache, LocalImageCache, RedisImageCache
from backend.memory.redis_store import RedisMemoryStore
from backend.memory.store import MemoryStore, open_store
from backend.netpolicy import AddressPolicy, GuardedSessions
from backend.resolve import Resolver
from backend.settings import Settings
from tagclip_core.config import EngineConfig, MaskConfig, ModelSpec
from tagclip_core.images import ImageLimits
from tagclip_core.masks import Segmenter
from tagclip_core.model import resolve_cache_dir, resolve_device
from tagclip_core.predictor import TagCLIP
from tagclip_core.types import MaskMode

from .memory import ProjectMemories

log = logging.getLogger(__name__)

_CURRENT: ContextVar[Runtime | None] = ContextVar("tagclip_runtime", default=None)
# CLIP-ES Segmenters kept per (background words, minimum region size); the oldest goes beyond this.
MAX_SEGMENTERS = 16


class Runtime:
    """Everything a job needs that is expensive to build: built once per process."""

    def __init__(
        self, settings: Settings, engine: TagCLIP, name: str = "embedded", mask_config: MaskConfig | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        # Masks: the engine's defaults; a job sets the mode, the background words and the minimum region size.
        self.mask_config = mask_config or MaskConfig()
        self._segmenters: dict[tuple[str, int], Segmenter] = {}
        self.name = name
        # The memory of reviewed examples (backend.memory), opened on first use: Redis in queue mode, SQLite in
        # embedded mode; with what each image's embedding and scores are cached under.
        self._memory: MemoryStore | None = None
        self._image_cache: ImageCache | None = None
        self._memory_lock = threading.Lock()
        # Learning projects' examples and calibrations as predictions read them (worker.memory).
        self.memories = ProjectMemories(lambda: self.memory)
        # Resolves bulk chunks' label configs and versions as /setup does; its caches live across chunks.
        self.resolver = Resolver(settings, generations=lambda project: self.memory.generation(project))
        self.model_key = self.resolver.model_key
        self.fetcher = make_fetcher(
            FetchLimits(settings.max_download_bytes, settings.download_timeout),
            settings.label_studio_url,
            settings.allowed_hosts,
            settings.download_threads,
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
    def memory(self) -> MemoryStore:
        """The memory store (opened on first use)."""
        return self._open_memory()[0]

    @property
    def image_cache(self) -> ImageCache:
        """Each image's embedding and scores for the memory: shared in Redis (queue mode), in-process otherwise."""
        return self._open_memory()[1]

    def _open_memory(self) -> tuple[MemoryStore, ImageCache]:
        with self._memory_lock:
            if self._memory is None or self._image_cache is None:
                store = open_store(self.settings)
                if isinstance(store, RedisMemoryStore):
                    self._image_cache = RedisImageCache(store.redis, store.keys)
                else:
                    self._image_cache = LocalImageCache()
                self._memory = store
            return self._memory, self._image_cache

    def mask_settings(self, mode: MaskMode, background: str, min_region_area: int) -> MaskConfig:
        """The mask config for one control of a job (background: a set name or a comma list of words)."""
        return dataclasses.replace(self.mask_config, mode=mode, background=background, min_region_area=min_region_area)

    def segmenter(self, background: str, min_region_area: int) -> Segmenter:
        """A CLIP-ES Segmenter on the engine's loaded CLIP (no second model), one per background and region
        size. Call it under `engine_lock` (its caches are not thread-safe)."""
        key = (background, min_region_area)
        if key not in self._segmenters:
            if len(self._segmenters) >= MAX_SEGMENTERS:
                self._segmenters.pop(next(iter(self._segmenters)))
            self._segmenters[key] = Segmenter(
                self.engine.clip,
                self.mask_settings(MaskMode.CLIP_ES, background, min_region_area),
                self.engine.config.preprocess,
                text_cache_dir=resolve_cache_dir(ModelSpec(cache_dir=self.settings.cache_dir)),
            )
        return self._segmenters[key]

    @property
    def info(self) -> dict[str, Any]:
        """What a worker publishes about itself (see backend.presence)."""
        return {
            "model_id": self.engine.model_id,
            "model_key": self.model_key,
            "device": str(resolve_device(self.settings.device)),
            # Which Label Studio this worker holds a key for (its origin's id, never the key): jobs for it
            # need not carry one (backend.contracts.source).
            "studio_key": configured_studio(self.settings),
        }

    def require_model(self, model_key: str, what: str) -> None:
        """Refuse a job made for other weights or settings (`what` names its sender, e.g. "the backend")."""
        if model_key != self.model_key:
            raise ModelMismatchError(
                f"{what} expects model {model_key!r}, worker {self.name} runs {self.model_key!r}: "
                "give the backend and the workers the same TAGCLIP_* settings and weights"
            )

    def source(self, ref: SourceRef, job_key: str | None = None) -> Source:
        """The Label Studio (URL and key) a payload names, with the key from wherever the payload says it is."""
        return resolve_source(ref, self.settings.label_studio, job_key)

    def label_studio_client(self, source: Source) -> LabelStudioClient:
        """A client of a payload's Label Studio: its URL came from a caller, so it obeys the address policy."""
        policy = AddressPolicy.of(self.settings.label_studio_url, self.settings.allowed_hosts)
        return LabelStudioClient(source, session=GuardedSessions(policy).for_url(source.url or ""))

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
        with self._memory_lock:
            if self._memory is not None:
                self._memory.close()


def current_runtime() -> Runtime:
    runtime = _CURRENT.get()
    if runtime is None:
        raise RuntimeError("no tagclip runtime is bound: run jobs with `tagclip worker` or the embedded backend")
    return runtime


def load_runtime(settings: Settings) -> Runtime:
    """Embedded mode's loader, reached by dotted path from backend.web.dispatch."""
    return Runtime.load(settings, name="embedded")
