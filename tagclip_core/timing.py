"""Optional per-stage wall-clock timing of the engine, for benchmarks and logs."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Accumulates seconds per named stage; synchronises CUDA so GPU work is charged to its stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self.seconds[name] += time.perf_counter() - started
            self.calls[name] += 1


class NullTimer(StageTimer):
    """A timer that measures nothing (the default)."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
