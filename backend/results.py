"""A worker's output for one task -> a validated Label Studio prediction, or the reason there is none.

/predict (backend.web.service) and the bulk chunks (worker.bulk) both turn worker outputs into predictions
here: the converters make the regions, label-studio-sdk validates them against the label config.

A task's worker output (backend.contracts.predict) is `{"index", "outputs": {control: ...}}`, or
`{"index", "error": str, "kind": str}` when its image could not be fetched, decoded or predicted.

A failure is permanent (the same task fails the same way next time: not an image, HTTP 404, too large, refused
by the address policy) or transient (`UNAVAILABLE`: a download timeout, HTTP 5xx or 429, 401/403 from a revoked
or disabled key, a refused connection, a failed DNS lookup): /predict stores an empty prediction only for the
first kind, and bulk chunks retry the second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .converters import task_regions
from .converters.base import prediction_score
from .resolve import Resolution

MISSING = "missing"  # failure kind: the worker returned no entry for the task
UNAVAILABLE = "unavailable"  # failure kind: the image could not be fetched for a reason that may pass
# Failure kinds worth trying again later (the others fail the same way every time).
TRANSIENT_KINDS = frozenset({UNAVAILABLE, MISSING})


@dataclass(frozen=True)
class TaskResult:
    """A prediction body {"result", "score", "model_version"}, or a failure with its kind and reason."""

    prediction: dict[str, Any] | None
    kind: str  # "ok" or "empty" for a prediction; else the failure kind (download, image, engine, invalid, ...)
    reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.prediction is None

    @property
    def transient(self) -> bool:
        """Failed for a reason that may pass: predict it again later, never store it empty."""
        return self.failed and self.kind in TRANSIENT_KINDS


def task_result(output: Mapping[str, Any] | None, resolution: Resolution) -> TaskResult:
    """The prediction of one task from its worker output (None when the worker sent no entry for it)."""
    if output is None:
        return TaskResult(None, MISSING, "the worker returned no entry for this task")
    if output.get("error"):
        kind = str(output.get("kind") or "error")
        return TaskResult(None, kind, f"{kind}: {output['error']}")
    try:
        regions = task_regions(output.get("outputs") or {}, resolution.plan.controls)
    except (KeyError, TypeError, ValueError) as e:
        return TaskResult(None, "malformed", f"malformed worker output: {e}")
    errors = resolution.parsed.interface.validate_prediction({"result": regions}, return_errors=True)
    if errors:
        return TaskResult(None, "invalid", f"prediction failed validation: {errors}")
    body = {"result": regions, "score": prediction_score(regions), "model_version": resolution.model_version}
    return TaskResult(body, "ok" if regions else "empty")
