"""A small client of Label Studio's REST API for the bulk path: projects, task pages, predictions (one POST
per task or the bulk import), export snapshots, label-config updates. No torch; the CLI, the backend and
the workers use it.

Auth is `backend.labelstudio.auth.LabelStudioAuth`: a legacy key goes as `Token`, a personal access token is exchanged
for a short-lived `Bearer` (refreshed once on a 401). Every error becomes `LabelStudioAPIError` naming the
call and Label Studio's status, never the answer's body (a caller-supplied URL may point anywhere: what that
host answers is not echoed); the key never appears in messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import requests

from ..errors import LabelStudioAPIError, LabelStudioAuthError
from ..netpolicy import REFUSED, is_refusal
from ..redaction import scrub
from .auth import LabelStudioAuth, Source, is_jwt

# Seconds for one REST call (a 10,000-task export or a page of 1,000 tasks takes a few seconds).
DEFAULT_TIMEOUT = 120.0
# Task ids per export call that selects tasks (they travel in the query string).
_IDS_PER_CALL = 200
# Export snapshots are built synchronously by Label Studio 1.23 but the API allows "in_progress".
EXPORT_POLL_INTERVAL = 0.5


class LabelStudioClient:
    """REST calls against one Label Studio (`source.url`) with one key (`source.api_key`)."""

    def __init__(self, source: Source, session: requests.Session | None = None, timeout: float = DEFAULT_TIMEOUT):
        if not source.url:
            raise LabelStudioAPIError("no Label Studio URL (set LABEL_STUDIO_URL or pass --url)")
        if not source.api_key:
            raise LabelStudioAPIError("no Label Studio API key (set LABEL_STUDIO_API_KEY or pass --api-key)")
        self.source = source
        self.base = source.url.rstrip("/")
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.timeout = timeout
        self._auth = LabelStudioAuth(lambda _url: self.session)

    # --- plumbing ---
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        body: Any = None,
        expect: Sequence[int] = (200, 201),
        timeout: float | None = None,
    ) -> requests.Response:
        """One call; retried once with a fresh access token when a personal access token gets a 401."""
        response = self._send(method, path, params, body, timeout)
        if response.status_code == 401 and is_jwt(self.source.api_key or ""):
            self._auth.forget(self.base, self.source.api_key or "")
            response = self._send(method, path, params, body, timeout)
        if response.status_code not in expect:
            raise LabelStudioAPIError(
                f"Label Studio {method} {path} answered HTTP {response.status_code}", response.status_code
            )
        return response

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None,
        body: Any,
        timeout: float | None,
    ) -> requests.Response:
        try:
            header = self._auth.header(self.base, self.source.api_key or "")
        except LabelStudioAuthError as e:
            raise LabelStudioAPIError(str(e), 401) from e
        try:
            return self.session.request(
                method,
                self.base + path,
                params=params,
                json=body,
                headers={"Authorization": header},
                timeout=timeout or self.timeout,
            )
        except requests.RequestException as e:
            if is_refusal(e):
                raise LabelStudioAPIError(f"Label Studio {method} {path} {REFUSED}") from e
            raise LabelStudioAPIError(
                f"Label Studio {method} {path} failed: {type(e).__name__}: {scrub(str(e))}"
            ) from e

    def get_json(self, path: str, params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None) -> Any:
        response = self.request("GET", path, params=params)
        try:
            return response.json()
        except ValueError as e:
            raise LabelStudioAPIError(f"Label Studio GET {path} did not answer JSON") from e

    # --- projects ---
    def project(self, project: int) -> dict[str, Any]:
        return self.get_json(f"/api/projects/{project}")

    def ml_backends(self, project: int) -> list[dict[str, Any]]:
        answer = self.get_json("/api/ml", {"project": project})
        return answer if isinstance(answer, list) else []

    def view(self, view: int) -> dict[str, Any]:
        return self.get_json(f"/api/dm/views/{view}")

    def update_label_config(self, project: int, label_config: str) -> dict[str, Any]:
        return self.request("PATCH", f"/api/projects/{project}", body={"label_config": label_config}).json()

    # --- tasks ---
    def task_page(
        self, project: int, query: Mapping[str, Any], page_size: int, fields: str = "task_only"
    ) -> list[dict[str, Any]]:
        """The first page of the Data Manager task list for `query` (filters, ordering, selectedItems); `fields`
        "all" adds each task's predictions and annotations."""
        answer = self.get_json(
            "/api/tasks",
            {"project": project, "query": json.dumps(query), "page": 1, "page_size": page_size, "fields": fields},
        )
        tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
        return [t for t in tasks if isinstance(t, dict)]

    def tasks_by_id(self, project: int, task_ids: Sequence[int]) -> list[dict[str, Any]]:
        """The given tasks (those that still exist), in id order."""
        if not task_ids:
            return []
        query = {"selectedItems": {"all": False, "included": list(task_ids)}, "ordering": ["tasks:id"]}
        return self.task_page(project, query, len(task_ids))

    def tasks_with_version(self, project: int, task_ids: Sequence[int], model_version: str) -> set[int]:
        """Which of `task_ids` already have a prediction of `model_version` (one call)."""
        if not task_ids:
            return set()
        query = {
            "filters": {"conjunction": "and", "items": [version_filter("contains", model_version)]},
            "selectedItems": {"all": False, "included": list(task_ids)},
        }
        return {int(t["id"]) for t in self.task_page(project, query, len(task_ids))}

    def annotated_tasks(self, project: int, task_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """The project's tasks that have annotations (of `task_ids` only, when given), each with its data and full
        annotations, through the export endpoint (GET /api/projects/<id>/export?exportType=JSON): unlike
        GET /api/tasks/<id>, it never makes Label Studio ask the backend for predictions, and it writes no
        export snapshot."""
        if task_ids is not None and not task_ids:
            return []
        batches = (
            [None]
            if task_ids is None
            else [task_ids[i : i + _IDS_PER_CALL] for i in range(0, len(task_ids), _IDS_PER_CALL)]
        )
        tasks: list[dict[str, Any]] = []
        for batch in batches:
            params: list[tuple[str, Any]] = [("exportType", "JSON")]
            params += [("ids[]", int(t)) for t in batch or ()]
            answer = self.get_json(f"/api/projects/{project}/export", params)
            tasks += [t for t in answer if isinstance(t, dict)] if isinstance(answer, list) else []
        return tasks

    # --- predictions ---
    def create_prediction(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """POST /api/predictions: one prediction of one task."""
        return self.request("POST", "/api/predictions", body=dict(item), expect=(201,)).json()

    def import_predictions(self, project: int, items: Sequence[Mapping[str, Any]]) -> int:
        """POST /api/projects/<id>/import/predictions: many predictions in one call; returns how many were
        created (Label Studio drops ones its validation rejects, logging them only)."""
        response = self.request(
            "POST", f"/api/projects/{project}/import/predictions", body=[dict(i) for i in items], expect=(201,)
        )
        return int(response.json().get("created", 0))

    def task_predictions(self, project: int, task_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """The predictions of the given tasks (those that still exist), in one Data Manager call."""
        if not task_ids:
            return {}
        query = {"selectedItems": {"all": False, "included": list(task_ids)}, "ordering": ["tasks:id"]}
        tasks = self.task_page(project, query, len(task_ids), fields="all")
        return {int(t["id"]): [p for p in t.get("predictions") or [] if isinstance(p, dict)] for t in tasks}

    def predictions(self, project: int) -> list[dict[str, Any]]:
        answer = self.get_json("/api/predictions", {"project": project})
        return answer if isinstance(answer, list) else []

    def delete_prediction(self, prediction: int) -> None:
        self.request("DELETE", f"/api/predictions/{prediction}", expect=(204, 200, 404))

    # --- export snapshots ---
    def export_snapshot(
        self,
        project: int,
        title: str,
        only_annotated: bool = True,
        full_predictions: bool = False,
        view: int | None = None,
        timeout: float = 600.0,
    ) -> list[dict[str, Any]]:
        """Create an export snapshot and download it as JSON (a list of tasks with annotations, and
        predictions as full objects when `full_predictions`)."""
        task_filter: dict[str, Any] = {"annotated": "only"} if only_annotated else {}
        if view is not None:
            task_filter["view"] = view
        body = {
            "title": title,
            "task_filter_options": task_filter,
            "serialization_options": {"predictions": {"only_id": not full_predictions}},
        }
        snapshot = self.request("POST", f"/api/projects/{project}/exports/", body=body, expect=(201, 200)).json()
        export_id = snapshot["id"]
        deadline = time.monotonic() + timeout
        while snapshot.get("status") not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise LabelStudioAPIError(f"export snapshot {export_id} not completed within {timeout:g} s")
            time.sleep(EXPORT_POLL_INTERVAL)
            snapshot = self.get_json(f"/api/projects/{project}/exports/{export_id}")
        if snapshot.get("status") != "completed":
            raise LabelStudioAPIError(f"export snapshot {export_id} failed in Label Studio")
        download = f"/api/projects/{project}/exports/{export_id}/download"
        response = self.request("GET", download, params={"exportType": "JSON"}, timeout=timeout)
        try:
            tasks = response.json()
        except ValueError as e:
            raise LabelStudioAPIError(f"export snapshot {export_id} is not JSON") from e
        return tasks if isinstance(tasks, list) else []


def version_filter(operator: str, model_version: str) -> dict[str, Any]:
    """A Data Manager filter item on the tasks' prediction model versions ("contains" / "not_contains")."""
    return {
        "filter": "filter:tasks:predictions_model_versions",
        "operator": operator,
        "type": "List",
        "value": [model_version],
    }


def id_after_filter(last_id: int) -> dict[str, Any]:
    """A Data Manager filter item: task id > last_id (keyset pagination)."""
    return {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": last_id}
