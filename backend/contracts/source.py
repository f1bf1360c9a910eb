"""How a queue payload names its Label Studio: the URL, and where the worker finds the key. Keys stay out of
payloads when a worker can find them elsewhere, so job data and failure records in Redis hold no key:

    {"url": str | null, "api_key": str | null, "key": "payload" | "worker" | "bulk_job"}

* "worker": the URL is the workers' own LABEL_STUDIO_URL; each worker uses its LABEL_STUDIO_API_KEY. Used only
  when every live worker announces a key for that Label Studio (its presence's `studio_key`).
* "bulk_job": the bulk job's credential in Redis (backend.bulk.state), which lives only while the job does.
* "payload": the key travels in `api_key` (the token Label Studio sent in /setup, to a Label Studio the
  workers have no key for); such a job's data expires with it (backend.web.dispatch's TTLs).
A payload without "key" (from an older backend) carries its key in `api_key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import LabelStudioAuthError, PayloadError
from ..labelstudio.auth import Source, origin_id, same_origin
from ..settings import Settings


class KeyPlace(str, Enum):
    PAYLOAD = "payload"
    WORKER = "worker"
    BULK_JOB = "bulk_job"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SourceRef:
    """A payload's Label Studio: its URL, and the key or where to find it."""

    url: str | None
    api_key: str | None
    key: KeyPlace

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "api_key": self.api_key, "key": self.key.value}

    @classmethod
    def from_json(cls, data: Any) -> SourceRef:
        if not isinstance(data, Mapping):
            raise PayloadError(f"source must be an object, got {type(data).__name__}")
        try:
            place = KeyPlace(data.get("key") or KeyPlace.PAYLOAD.value)
        except ValueError as e:
            raise PayloadError(
                f"source.key must be one of {[p.value for p in KeyPlace]}, got {data.get('key')!r}"
            ) from e
        api_key = data.get("api_key") if place is KeyPlace.PAYLOAD else None
        return cls(url=data.get("url"), api_key=api_key, key=place)


def configured_studio(settings: Settings) -> str | None:
    """The origin id of the Label Studio a process holds a key for (LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY)."""
    configured = settings.label_studio
    return origin_id(configured.url) if configured and configured.url and configured.api_key else None


def source_ref(source: Source, workers_hold_key: bool, bulk_job: bool = False) -> SourceRef:
    """The reference a payload carries for `source`: the workers' own key when they all hold one for its Label
    Studio; else the bulk job's credential (bulk chunks); else the key itself."""
    if workers_hold_key:
        return SourceRef(source.url, None, KeyPlace.WORKER)
    if bulk_job and source.api_key:
        return SourceRef(source.url, None, KeyPlace.BULK_JOB)
    return SourceRef(source.url, source.api_key, KeyPlace.PAYLOAD)


def resolve_source(ref: SourceRef, configured: Source | None, job_key: str | None = None) -> Source:
    """The Source a worker downloads and writes with. Raises LabelStudioAuthError when the key is not where the
    payload says (a worker configured for another Label Studio, a bulk job whose credential expired)."""
    if ref.key is KeyPlace.PAYLOAD:
        return Source(ref.url, ref.api_key)
    if ref.key is KeyPlace.WORKER:
        if configured is None or not configured.api_key or not same_origin(ref.url, configured.url):
            raise LabelStudioAuthError(
                "the job uses the workers' Label Studio key, but this worker's LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY "
                "are unset or name another Label Studio: give workers the backend's settings"
            )
        return Source(ref.url, configured.api_key)
    if not job_key:
        raise LabelStudioAuthError("the bulk job's Label Studio key has expired: run the pre-annotation again")
    return Source(ref.url, job_key)
