"""How long a bulk write may take, from the settings: the lease of a write claim, how long a sent write stays in
doubt, how long failing Label Studio calls and downloads are retried, and the RQ timeout of a chunk that may
spend all of these.

A write sent to Label Studio may land as late as LABEL_STUDIO_TIMEOUT (the call's own timeout) plus
WRITE_SETTLE_TIMEOUT after it was sent (a slow commit, a gateway still holding the request): that is its
doubt. A claim's lease outlives the slowest call and is renewed while its owner writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings

# Seconds a lease outlives the slowest Label Studio call (it is renewed long before it lapses).
LEASE_MARGIN = 30.0
# Most renewals between two lease expiries; and the longest wait between two renewals.
RENEWALS_PER_LEASE = 4
MAX_RENEW_INTERVAL = 10.0
# Writes of the same tasks a chunk sends before it gives up for this run (each after an unclear answer
# whose doubt has passed); the chunk then fails and RQ runs it again.
MAX_WRITE_ROUNDS = 3


@dataclass(frozen=True)
class WriteTiming:
    # LABEL_STUDIO_TIMEOUT: seconds one Label Studio call may take.
    call_timeout: float
    # WRITE_SETTLE_TIMEOUT: seconds after its timeout that an unanswered write may still land.
    settle: float
    # TRANSIENT_RETRY_TIME: seconds failing Label Studio calls and transient download failures are retried.
    retry_time: float

    @classmethod
    def of(cls, settings: Settings) -> WriteTiming:
        return cls(settings.label_studio_timeout, settings.write_settle_timeout, settings.transient_retry_time)

    @property
    def doubt(self) -> float:
        """Seconds after sending that a write may still land in Label Studio."""
        return self.call_timeout + self.settle

    @property
    def lease(self) -> float:
        """Seconds a claim holds without renewal: longer than the slowest call."""
        return self.call_timeout + LEASE_MARGIN

    @property
    def renew_every(self) -> float:
        return min(MAX_RENEW_INTERVAL, self.lease / RENEWALS_PER_LEASE)

    @property
    def write_budget(self) -> float:
        """The longest a chunk's write phase may take: every round's doubt, and the retries of the checks."""
        return (MAX_WRITE_ROUNDS + 1) * (self.doubt + self.retry_time)


def chunk_timeout(settings: Settings) -> int:
    """The RQ timeout of a bulk chunk: JOB_TIMEOUT to predict, plus the retries of transient failures and the
    write phase (a chunk waiting on Label Studio must not be killed while it waits)."""
    timing = WriteTiming.of(settings)
    return int(settings.job_timeout + timing.retry_time + timing.write_budget)
