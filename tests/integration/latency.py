"""Label Studio's wall-clock contracts for an ML backend: /health answers within 1 s and /setup within 3 s (its
request timeouts), even while /predict runs.

One stalled request on a loaded 2-core machine says little; a backend that makes them wait (a lock, a blocking
Redis call) makes most of them slow. So a contract is checked on several samples: the median must be within
the limit and at most MAX_SLOW_SHARE of the samples over it. A request that times out counts as a slow sample
at its timeout, never as a missing one; any other failure (an error status, a refused connection) is raised
in the test, also when the samples are taken in a helper thread. Every sample is reported.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

HEALTH_LIMIT_S = 1.0
SETUP_LIMIT_S = 3.0
MIN_SAMPLES = 5
MAX_SLOW_SHARE = 0.2
# A request is given this many times its limit before it counts as a (slow) timed-out sample.
TIMEOUT_FACTOR = 3


@dataclass
class Samples:
    """Seconds taken by the calls of one route, against the route's limit."""

    route: str
    limit: float
    seconds: list[float] = field(default_factory=list)

    def time(self, call: Callable[[float], requests.Response]) -> None:
        """One sample of call(timeout): its duration, or the timeout when it timed out; raises on a non-200."""
        timeout = TIMEOUT_FACTOR * self.limit
        started = time.perf_counter()
        try:
            response = call(timeout)
        except requests.Timeout:
            self.seconds.append(max(time.perf_counter() - started, timeout))
            return
        self.seconds.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise AssertionError(f"{self.route} answered {response.status_code}: {response.text[:300]}")

    def check(self) -> None:
        slow = [s for s in self.seconds if s > self.limit]
        assert len(self.seconds) >= MIN_SAMPLES, f"{self.route}: only {len(self.seconds)} samples"
        assert statistics.median(self.seconds) <= self.limit and len(slow) <= MAX_SLOW_SHARE * len(self.seconds), (
            f"{self.route} over {self.limit:g} s: median {statistics.median(self.seconds):.3f} s, "
            f"{len(slow)} of {len(self.seconds)} slow; samples {self.report()}"
        )

    def report(self) -> list[float]:
        return [round(s, 3) for s in self.seconds]


class Prober:
    """Samples routes in a helper thread until stopped (and until each has MIN_SAMPLES). stop() returns the
    samples and re-raises, in the test's thread, whatever failed in the helper."""

    def __init__(self, routes: dict[str, tuple[float, Callable[[float], requests.Response]]], pause: float = 0.2):
        self.samples = {route: Samples(route, limit) for route, (limit, _) in routes.items()}
        self._calls = {route: call for route, (_, call) in routes.items()}
        self._pause = pause
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="latency-prober", daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() or any(len(s.seconds) < MIN_SAMPLES for s in self.samples.values()):
                for route, call in self._calls.items():
                    self.samples[route].time(call)
                time.sleep(self._pause)
        except BaseException as error:  # handed to the test's thread by results()
            self._error = error

    def results(self) -> dict[str, Samples]:
        """The samples, once the prober has stopped; raises what failed in the helper thread."""
        if self._thread.is_alive():
            raise AssertionError("the latency prober did not stop within 60 s")
        if self._error is not None:
            raise self._error
        return self.samples
