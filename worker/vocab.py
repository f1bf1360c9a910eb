"""Building a vocabulary's text classifier in increments: the `<queue>-vocab` job, and the step /predict jobs
share.

A column is the unit: each is built under the engine lock and saved to the disk cache at once
(tagclip_core.text), so /predict jobs of other threads run between columns (embedded mode), a job timeout or a
killed worker loses at most one column, and whoever needs the vocabulary next resumes where the build stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from rq import get_current_job

from backend.contracts.predict import ControlSpec
from backend.contracts.vocab import SCHEMA, parse_payload
from backend.keys import RedisKeys
from backend.vocabulary import VocabularyClaims
from tagclip_core.prompts import resolve_background
from tagclip_core.types import ClassSpec

from .runtime import Runtime, current_runtime

log = logging.getLogger(__name__)

# Columns between two progress notes in the RQ job's meta.
PROGRESS_EVERY = 8


class ReadyColumns:
    """The text columns one job has made sure of. A job takes its images in groups (worker.loading) and asks for
    each control's classes once per group; the missing columns are looked up (a file test per prompt past the
    in-memory cache) and built only the first time a job asks for a set of classes."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._ready: set[tuple] = set()

    def classes(self, control: ControlSpec, background: str) -> list[ClassSpec]:
        """The control's classes as the engine takes them, their columns (and the background's) built and saved."""
        specs = [ClassSpec(label, prompts) for label, prompts in zip(control.labels, control.prompts, strict=True)]
        key = (control.labels, control.prompts, background)
        if key not in self._ready:
            build_columns(self._runtime, self._runtime.engine.text_prompts(specs, background))
            self._ready.add(key)
        return specs


def build_columns(runtime: Runtime, prompts: Sequence[str]) -> tuple[int, int]:
    """Build and save the columns of `prompts` that no one has built yet, one per engine-lock hold.
    Returns (built here, already cached)."""
    todo = runtime.engine.uncached_prompts(prompts)
    cached = len(dict.fromkeys(prompts)) - len(todo)
    job = get_current_job()
    built = 0
    for done, prompt in enumerate(todo, start=1):
        with runtime.engine_lock:
            built += runtime.engine.build_prompt(prompt)  # False: another thread built it meanwhile
        if job is not None and done % PROGRESS_EVERY == 0:
            job.meta["progress"] = {"columns_done": done, "columns": len(todo)}
            job.save_meta()
    return built, cached + len(todo) - built


def build_vocabulary(payload: dict[str, Any]) -> dict[str, Any]:
    """Build one part of a vocabulary (backend.contracts.vocab) and count it off the build's claim."""
    runtime = current_runtime()
    started = time.monotonic()
    part = parse_payload(payload)
    runtime.require_model(part.model_key, "the vocabulary")
    built, cached = build_columns(runtime, [*part.prompts, *resolve_background(part.background)])
    job = get_current_job()
    if job is not None:  # queue mode: the claim lives in Redis
        VocabularyClaims(job.connection, RedisKeys(runtime.settings.queue_name)).part_done(part.vocabulary)
    seconds = time.monotonic() - started
    log.info("vocabulary %s: %d columns built, %d cached, in %.1f s", part.vocabulary[:8], built, cached, seconds)
    return {
        "schema": SCHEMA,
        "vocabulary": part.vocabulary,
        "worker": runtime.name,
        "built": built,
        "cached": cached,
        "seconds": round(seconds, 3),
    }
