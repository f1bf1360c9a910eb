"""Write a bulk chunk's predictions to Label Studio under the ledger's claims (see backend.bulk.ledger).

Two methods (a job names one, or "auto": per chunk the cheaper so far, see backend.bulk.method):
* "import": one `POST /api/projects/<id>/import/predictions` for the chunk (Label Studio 1.23 stores them
  with one bulk insert); a 4xx answer (e.g. a task deleted meanwhile) falls back to one POST per task, so
  only the bad task fails;
* "single": one `POST /api/predictions` per task.

A 5xx answer or no answer raises (the chunk fails and RQ retries it) and keeps the claims: the retry, or
another worker once the lease lapses, asks Label Studio before writing again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.bulk.ledger import Ledger
from backend.bulk.method import WriteCosts
from backend.contracts.bulk import WriteMethod
from backend.errors import LabelStudioAPIError
from backend.labelstudio.client import LabelStudioClient

NOT_STORED = "Label Studio did not store the prediction (rejected by its validation; see its log)"


@dataclass
class WriteOutcome:
    written: list[int] = field(default_factory=list)  # stored by this call
    recovered: list[int] = field(default_factory=list)  # already had their prediction: not written again
    failed: dict[int, str] = field(default_factory=dict)  # task -> reason
    elsewhere: list[int] = field(default_factory=list)  # being written by another live worker
    seconds: float = 0.0  # the whole write phase: claims, the Label Studio check, the writes
    store_seconds: float = 0.0  # only the calls that store predictions (import or POSTs)
    methods: dict[str, tuple[int, float]] = field(default_factory=dict)  # method -> (tasks stored, seconds)

    def tally(self, method: str, stored: int, seconds: float) -> None:
        before = self.methods.get(method, (0, 0.0))
        self.methods[method] = (before[0] + stored, before[1] + seconds)


def _client_error(e: LabelStudioAPIError) -> bool:
    return e.ls_status is not None and 400 <= e.ls_status < 500


class PredictionWriter:
    def __init__(
        self,
        client: LabelStudioClient,
        ledger: Ledger,
        project: int,
        model_version: str,
        method: str,
        owner: str,
        costs: WriteCosts | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.project = project
        self.model_version = model_version
        self.method = method
        self.owner = owner
        self.costs = costs or WriteCosts(ledger.redis, ledger.keys, ledger.project)

    def write(self, items: Mapping[int, Mapping[str, Any]]) -> WriteOutcome:
        """Write `items` (task id -> prediction body) exactly once each."""
        started = time.perf_counter()
        outcome = WriteOutcome()
        claims, busy = self.ledger.claim_waiting(list(items), self.owner)
        outcome.recovered += claims.done
        outcome.elsewhere += list(busy)
        if claims.claimed:
            present = self.client.tasks_with_version(self.project, claims.claimed, self.model_version)
            self.ledger.confirm(sorted(present))
            outcome.recovered += sorted(present)
            todo = [t for t in claims.claimed if t not in present]
            for method, count in self.costs.plan(self.method, len(todo)):
                part, todo = todo[:count], todo[count:]
                self._write_part(method, part, items, outcome)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _write_part(
        self, method: str, part: list[int], items: Mapping[int, Mapping[str, Any]], outcome: WriteOutcome
    ) -> None:
        written, seconds = len(outcome.written), outcome.store_seconds
        if method == WriteMethod.IMPORT:
            self._import(part, items, outcome)
        else:
            self._single(part, items, outcome)
        written, seconds = len(outcome.written) - written, outcome.store_seconds - seconds
        outcome.tally(method, written, seconds)
        self.costs.record(method, seconds, written)

    def _import(self, todo: list[int], items: Mapping[int, Mapping[str, Any]], outcome: WriteOutcome) -> None:
        if not todo:
            return
        started = time.perf_counter()
        try:
            created = self.client.import_predictions(self.project, [items[t] for t in todo])
        except LabelStudioAPIError as e:
            outcome.store_seconds += time.perf_counter() - started
            if not _client_error(e):
                raise
            self._single(todo, items, outcome)
            return
        outcome.store_seconds += time.perf_counter() - started
        if created == len(todo):
            self.ledger.confirm(todo)
            outcome.written += todo
            return
        stored = self.client.tasks_with_version(self.project, todo, self.model_version)
        self.ledger.confirm(sorted(stored))
        outcome.written += sorted(stored)
        lost = [t for t in todo if t not in stored]
        self.ledger.release(lost, self.owner)
        outcome.failed.update({t: NOT_STORED for t in lost})

    def _single(self, todo: list[int], items: Mapping[int, Mapping[str, Any]], outcome: WriteOutcome) -> None:
        for task in todo:
            started = time.perf_counter()
            try:
                self.client.create_prediction(items[task])
            except LabelStudioAPIError as e:
                outcome.store_seconds += time.perf_counter() - started
                if not _client_error(e):
                    raise
                self.ledger.release([task], self.owner)
                outcome.failed[task] = f"write refused: {e}"
                continue
            outcome.store_seconds += time.perf_counter() - started
            self.ledger.confirm([task])
            outcome.written.append(task)
