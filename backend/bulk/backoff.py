"""Waiting between tries: exponential, capped, jittered, so workers that failed together (Label Studio went
down under all of them) do not all come back at the same moment; and Label Studio calls retried that way while
they fail for a reason that may pass."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import LabelStudioAPIError

log = logging.getLogger(__name__)

T = TypeVar("T")
# Client errors that say nothing about whether a call was carried out, or that may pass: not a refusal.
_UNCLEAR_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Backoff:
    # Seconds before the first retry.
    first: float = 1.0
    # Each retry waits this many times longer than the one before...
    factor: float = 2.0
    # ...up to this many seconds.
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry `attempt` (0 = the first): half of the exponential step fixed, half
        random ("equal jitter"), so a retry never comes much sooner than planned but never in lockstep."""
        step = min(self.cap, self.first * self.factor ** max(0, attempt))
        return step / 2 + (rng or random).uniform(0, step / 2)


# Waits between calls to a Label Studio that fails, or while a write is in doubt.
LABEL_STUDIO_BACKOFF = Backoff(first=1.0, factor=2.0, cap=15.0)


def refused(e: LabelStudioAPIError) -> bool:
    """Label Studio answered with a clear refusal (a 4xx other than 408 and 429): nothing of the call was done,
    and asking again will not change that."""
    return e.ls_status is not None and 400 <= e.ls_status < 500 and e.ls_status not in _UNCLEAR_CLIENT_ERRORS


def retrying(
    call: Callable[[], T],
    budget: float,
    backoff: Backoff = LABEL_STUDIO_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call` (a Label Studio read), retried with backoff while Label Studio fails (no answer, 5xx, 408, 429) for
    up to `budget` seconds; a refusal, or a failure past the budget, is raised."""
    deadline = time.monotonic() + budget
    attempt = 0
    while True:
        try:
            return call()
        except LabelStudioAPIError as e:
            delay = backoff.delay(attempt)
            if refused(e) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s; asking again in %.1f s", e, delay)
            sleep(delay)
            attempt += 1
