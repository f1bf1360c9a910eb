"""Write a bulk chunk's predictions to Label Studio under the ledger's claims (see backend.bulk.ledger).

Two methods (a job names one, or "auto": per chunk the cheaper so far, see backend.bulk.method):
* "import": one `POST /api/projects/<id>/import/predictions` for the chunk (Label Studio 1.23 stores them
  with one bulk insert); a 4xx answer (e.g. a task deleted meanwhile) falls back to one POST per task, so
  only the bad task fails;
* "single": one `POST /api/predictions` per task.

The claims' lease is renewed while the chunk writes. Before each write its tasks are put in doubt for as long
as the write may take to land (backend.bulk.timing). A write that ends without a clear answer (a timeout, a
5xx, a reset connection) is never simply sent again: the chunk asks Label Studio, with backoff, until the
predictions show up (then they are done) or the doubt has passed (then the write did not land, and the next
round sends it). After MAX_WRITE_ROUNDS unclear rounds, or when Label Studio stays unreachable past
TRANSIENT_RETRY_TIME, the chunk fails with the claims still in doubt, and its next run (RQ's retry, or
another worker) starts by asking Label Studio.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from backend.bulk.backoff import LABEL_STUDIO_BACKOFF, refused, retrying
from backend.bulk.ledger import Ledger
from backend.bulk.method import WriteCosts
from backend.bulk.timing import MAX_WRITE_ROUNDS, WriteTiming
from backend.contracts.bulk import WriteMethod
from backend.errors import LabelStudioAPIError, WriteInDoubtError
from backend.labelstudio.client import LabelStudioClient

log = logging.getLogger(__name__)

NOT_STORED = "Label Studio did not store the prediction (rejected by its validation; see its log)"


@dataclass
class WriteOutcome:
    written: list[int] = field(default_factory=list)  # stored by this call
    recovered: list[int] = field(default_factory=list)  # already had their prediction: not written again
    failed: dict[int, str] = field(default_factory=dict)  # task -> reason
    elsewhere: dict[int, str] = field(default_factory=dict)  # being written by another live worker -> its name
    seconds: float = 0.0  # the whole write phase: claims, the Label Studio check, the writes
    store_seconds: float = 0.0  # only the calls that store predictions (import or POSTs)
    methods: dict[str, tuple[int, float]] = field(default_factory=dict)  # method -> (tasks stored, seconds)
    error: LabelStudioAPIError | None = None  # why the write phase stopped early (the chunk then fails)

    def tally(self, method: str, stored: int, seconds: float) -> None:
        before = self.methods.get(method, (0, 0.0))
        self.methods[method] = (before[0] + stored, before[1] + seconds)


class PredictionWriter:
    def __init__(
        self,
        client: LabelStudioClient,
        ledger: Ledger,
        project: int,
        model_version: str,
        method: str,
        owner: str,
        timing: WriteTiming,
        costs: WriteCosts | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.project = project
        self.model_version = model_version
        self.method = method
        self.owner = owner
        self.timing = timing
        self.costs = costs or WriteCosts(ledger.redis, ledger.keys, ledger.project)
        self.sleep = sleep

    def write(self, items: Mapping[int, Mapping[str, Any]]) -> WriteOutcome:
        """Write `items` (task id -> prediction body) exactly once each. When Label Studio leaves writes unclear
        past the retries, `error` says so and the unresolved tasks stay claimed and in doubt."""
        started = time.perf_counter()
        outcome = WriteOutcome()
        lease = self.timing.lease
        claims, busy = self.ledger.claim_waiting(list(items), self.owner, lease, patience=lease)
        outcome.recovered += claims.done
        outcome.elsewhere.update(busy)
        if claims.claimed:
            with self._renewing(claims.claimed):
                try:
                    self._write_claimed(claims.claimed, items, outcome)
                except LabelStudioAPIError as e:
                    outcome.error = e
        outcome.seconds = time.perf_counter() - started
        return outcome

    # --- rounds: settle what is in doubt, write what is known to be missing ---
    def _write_claimed(self, todo: list[int], items: Mapping[int, Mapping[str, Any]], outcome: WriteOutcome) -> None:
        for round_ in range(MAX_WRITE_ROUNDS + 1):
            todo = self._settle(todo, outcome)
            if not todo:
                return
            if round_ == MAX_WRITE_ROUNDS:
                break
            todo = self._store(todo, items, outcome)
            if not todo:
                return
        raise WriteInDoubtError(
            f"Label Studio did not confirm the write of {len(todo)} task(s) in {MAX_WRITE_ROUNDS} tries "
            f"(each waited up to {self.timing.doubt:g} s for it to land); the next run of the chunk asks it again"
        )

    def _settle(self, todo: list[int], outcome: WriteOutcome) -> list[int]:
        """Ask Label Studio which of `todo` have their prediction (those are done), waiting, with backoff, while
        a write of the others may still land. Returns the tasks known to have none."""
        attempt = 0
        while True:
            present = self._ask(todo)
            if present:
                self.ledger.confirm(sorted(present))
                outcome.recovered += sorted(present)
                todo = [t for t in todo if t not in present]
            if not todo:
                return []
            now = self.ledger.now()
            doubt = max((c.doubt_until for c in self.ledger.claims(todo).values() if c is not None), default=0.0)
            if doubt <= now:
                return todo
            delay = min(LABEL_STUDIO_BACKOFF.delay(attempt), doubt - now + 0.1)
            log.info(
                "%d task(s) in doubt for %.0f s more: asking Label Studio again in %.1f s",
                len(todo),
                doubt - now,
                delay,
            )
            self.sleep(delay)
            attempt += 1

    def _ask(self, ids: Sequence[int]) -> set[int]:
        """Which of `ids` have a prediction of the version, asking again while Label Studio fails."""
        return retrying(
            lambda: self.client.tasks_with_version(self.project, list(ids), self.model_version),
            self.timing.retry_time,
            sleep=self.sleep,
        )

    # --- writes ---
    def _store(self, todo: list[int], items: Mapping[int, Mapping[str, Any]], outcome: WriteOutcome) -> list[int]:
        """Write `todo` by the planned methods; returns the tasks whose write was unclear or not sent."""
        unclear: list[int] = []
        for method, count in self.costs.plan(self.method, len(todo)):
            part, todo = todo[:count], todo[count:]
            if unclear:  # Label Studio just failed to answer: the rest waits for the next round
                unclear += part
                continue
            unclear += self._write_part(method, part, items, outcome)
        return unclear

    def _write_part(
        self, method: str, part: list[int], items: Mapping[int, Mapping[str, Any]], outcome: WriteOutcome
    ) -> list[int]:
        written, seconds = len(outcome.written), outcome.store_seconds
        if method == WriteMethod.IMPORT:
            unclear = self._import(part, items, outcome)
        else:
            unclear = self._single(part, items, outcome)
        written, seconds = len(outcome.written) - written, outcome.store_seconds - seconds
        outcome.tally(method, written, seconds)
        self.costs.record(method, seconds, written)
        return unclear

    def _armed(self, ids: list[int], outcome: WriteOutcome) -> list[int]:
        """Put `ids` in doubt for the write about to be sent; only the ones this owner still holds may be sent."""
        held = set(self.ledger.arm(ids, self.owner, self.timing.lease, self.timing.doubt))
        for task in ids:
            if task not in held:  # the claim was taken over (this worker stalled past its lease)
                outcome.elsewhere[task] = "another worker"
        return [t for t in ids if t in held]

    def _import(self, todo: list[int], items: Mapping[int, Mapping[str, Any]], outcome: WriteOutcome) -> list[int]:
        todo = self._armed(todo, outcome)
        if not todo:
            return []
        started = time.perf_counter()
        try:
            created = self.client.import_predictions(self.project, [items[t] for t in todo])
        except LabelStudioAPIError as e:
            outcome.store_seconds += time.perf_counter() - started
            if not refused(e):
                log.warning(
                    "import of %d prediction(s) unclear (%s): asking Label Studio before writing again", len(todo), e
                )
                return todo
            return self._single(todo, items, outcome)
        outcome.store_seconds += time.perf_counter() - started
        if created == len(todo):
            self.ledger.confirm(todo)
            outcome.written += todo
            return []
        stored = self._ask(todo)
        self.ledger.confirm(sorted(stored))
        outcome.written += sorted(stored)
        lost = [t for t in todo if t not in stored]
        self.ledger.release(lost, self.owner)
        outcome.failed.update({t: NOT_STORED for t in lost})
        return []

    def _single(self, todo: list[int], items: Mapping[int, Mapping[str, Any]], outcome: WriteOutcome) -> list[int]:
        for index, task in enumerate(todo):
            if not self._armed([task], outcome):
                continue
            started = time.perf_counter()
            try:
                self.client.create_prediction(items[task])
            except LabelStudioAPIError as e:
                outcome.store_seconds += time.perf_counter() - started
                if not refused(e):
                    log.warning("write of task %d unclear (%s): asking Label Studio before writing again", task, e)
                    return todo[index:]
                self.ledger.release([task], self.owner)
                outcome.failed[task] = f"write refused: {e}"
                continue
            outcome.store_seconds += time.perf_counter() - started
            self.ledger.confirm([task])
            outcome.written.append(task)
        return []

    # --- the lease ---
    @contextmanager
    def _renewing(self, ids: list[int]) -> Iterator[None]:
        """Renew this owner's lease on `ids` every `renew_every` seconds while the block runs."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.timing.renew_every):
                try:
                    self.ledger.renew(ids, self.owner, self.timing.lease)
                except RedisError as e:  # the next renewal tries again; the lease has margin
                    log.warning("could not renew write claims: %s", e)

        thread = threading.Thread(target=renew, name="tagclip-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
