"""The model_version a project's predictions carry, computed exactly as /setup computes it: the project's
label config and its ML backend's extra_params, through `Predictor.options` and `Predictor.version`.

The CLI, the backend and each worker compute it from their own settings; a worker whose weights or
options give another version refuses the chunk, so a stored version never lies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BulkSetupError
from ..labelconfig import ParsedConfig
from ..predict import Options, Predictor
from ..projects import ProjectContext, ProjectStore
from ..settings import Settings


@dataclass(frozen=True)
class ResolvedVersion:
    """A label config resolved for prediction: what to predict, with which options, under which version."""

    parsed: ParsedConfig
    options: Options
    model_version: str
    model_key: str


def versions_predictor(settings: Settings) -> Predictor:
    """A Predictor used only for its options/version logic (it never dispatches or counts)."""
    return Predictor(settings, dispatcher=None, projects=ProjectStore(), metrics=None)  # type: ignore[arg-type]


def resolve_version(predictor: Predictor, label_config: str, extra_params: Mapping[str, Any] | None) -> ResolvedVersion:
    """Parse `label_config` with the project's `extra_params` and compute its model_version as /setup does."""
    options = predictor.options(ProjectContext(extra_params=dict(extra_params or {}), schema=label_config))
    parsed = predictor.configs.get(label_config, options.threshold, options.masks)
    return ResolvedVersion(parsed, options, predictor.version(parsed, options), predictor.model_key)


def project_extra_params(ml_backends: list[dict[str, Any]]) -> dict[str, Any]:
    """The extra_params of the project's ML backend (the first one that has any; {} without one)."""
    for backend in ml_backends:
        extra = backend.get("extra_params")
        if isinstance(extra, Mapping) and extra:
            return dict(extra)
        if isinstance(extra, str) and extra.strip():
            raise BulkSetupError(f"ML backend {backend.get('id')}: extra_params is not a JSON object: {extra[:80]!r}")
    return {}
