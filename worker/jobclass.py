"""The RQ job class the workers run: only this project's job functions (backend.contracts.JOB_FUNCTIONS), never a
callback. RQ would otherwise import and call whatever dotted path a job in Redis names (its function, or its
success/failure/stopped callback), so anyone who can write to Redis could run code in the workers."""

from __future__ import annotations

from typing import Any

from rq.job import Job

from backend.contracts import JOB_FUNCTIONS
from backend.errors import JobRefusedError


class ProjectJob(Job):
    """A Job that refuses to run anything but JOB_FUNCTIONS, and has no callbacks whatever Redis says."""

    def perform(self) -> Any:
        if self.instance is not None or self.func_name not in JOB_FUNCTIONS:
            raise JobRefusedError(f"job {self.id}: {self.func_name!r} is not one of the workers' job functions")
        if self._success_callback_name or self._failure_callback_name or self._stopped_callback_name:
            raise JobRefusedError(f"job {self.id} asks for callbacks, which the workers never run")
        return super().perform()

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None
