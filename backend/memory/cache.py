"""Per image, what the engine computed for the memory: CLIP's global embedding and TagCLIP's scores per set of
classes, keyed by the image bytes' SHA-256 (and the weights' identity). A project that learns caches them when
/predict sees an image, so the learning job that follows the reviewer's submit finds them and runs no model.

Queue mode: a Redis hash per image, shared by the workers, expiring IMAGE_CACHE_TTL after its last write.
Embedded mode: an in-process LRU (the same process predicts and learns).
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from redis import Redis

from ..keys import RedisKeys

# Seconds an image's cache entry lives in Redis after its last write (reviews usually follow predictions).
IMAGE_CACHE_TTL = 7 * 24 * 3600
# Images kept by the in-process cache.
LOCAL_CACHE_IMAGES = 4096
_EMBEDDING = "embedding"
_SCORES = "scores:"


@dataclass
class CachedImage:
    embedding: np.ndarray | None = None  # [D] float32
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # control fingerprint -> [C] float32


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_tag(model_key: str) -> str:
    """A short key part for the weights' identity."""
    return hashlib.sha256(model_key.encode()).hexdigest()[:12]


class ImageCache(ABC):
    @abstractmethod
    def get(self, model_key: str, image: str) -> CachedImage: ...

    @abstractmethod
    def put(self, model_key: str, image: str, embedding: np.ndarray | None, scores: dict[str, np.ndarray]) -> None: ...


class RedisImageCache(ImageCache):
    def __init__(self, redis: Redis, keys: RedisKeys, ttl: int = IMAGE_CACHE_TTL) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl

    def get(self, model_key: str, image: str) -> CachedImage:
        fields = self.redis.hgetall(self.keys.image_cache(model_tag(model_key), image))
        cached = CachedImage()
        for name, value in fields.items():
            name = name.decode() if isinstance(name, bytes) else name
            if name == _EMBEDDING:
                cached.embedding = np.frombuffer(value, dtype="<f4").copy()
            elif name.startswith(_SCORES):
                cached.scores[name[len(_SCORES) :]] = np.frombuffer(value, dtype="<f4").copy()
        return cached

    def put(self, model_key: str, image: str, embedding: np.ndarray | None, scores: dict[str, np.ndarray]) -> None:
        mapping = {f"{_SCORES}{fp}": np.asarray(s, dtype="<f4").tobytes() for fp, s in scores.items()}
        if embedding is not None:
            mapping[_EMBEDDING] = np.asarray(embedding, dtype="<f4").tobytes()
        if not mapping:
            return
        key = self.keys.image_cache(model_tag(model_key), image)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.ttl)
            pipe.execute()


class LocalImageCache(ImageCache):
    def __init__(self, max_images: int = LOCAL_CACHE_IMAGES) -> None:
        self.max_images = max_images
        self._items: OrderedDict[tuple[str, str], CachedImage] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_key: str, image: str) -> CachedImage:
        with self._lock:
            item = self._items.get((model_key, image))
            if item is None:
                return CachedImage()
            self._items.move_to_end((model_key, image))
            return CachedImage(item.embedding, dict(item.scores))

    def put(self, model_key: str, image: str, embedding: np.ndarray | None, scores: dict[str, np.ndarray]) -> None:
        with self._lock:
            item = self._items.setdefault((model_key, image), CachedImage())
            self._items.move_to_end((model_key, image))
            if embedding is not None:
                item.embedding = np.asarray(embedding, dtype=np.float32).copy()
            item.scores.update({fp: np.asarray(s, dtype=np.float32).copy() for fp, s in scores.items()})
            while len(self._items) > self.max_images:
                self._items.popitem(last=False)
