"""Label Studio access shared by the review commands (export, report): the project and connection options,
and one export snapshot of the project's tasks."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .errors import UsageError


def add_studio_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--view", type=int, help="only the tasks of this Data Manager view")
    add_connection_arguments(parser)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="Label Studio URL (LABEL_STUDIO_URL)")
    parser.add_argument("--api-key", help="Label Studio legacy token or personal access token (LABEL_STUDIO_API_KEY)")


def studio_client(args: argparse.Namespace, settings: Any = None):
    """A Label Studio client from --url/--api-key, else LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY (of `settings`,
    default: the environment's)."""
    from backend.labelstudio.auth import Source
    from backend.labelstudio.client import LabelStudioClient
    from backend.settings import Settings

    settings = settings or Settings.from_env()
    return LabelStudioClient(
        Source(url=args.url or settings.label_studio_url, api_key=args.api_key or settings.label_studio_api_key),
        timeout=settings.label_studio_timeout,
    )


def project_snapshot(
    args: argparse.Namespace, command: str, full_predictions: bool = False, settings: Any = None
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """(the client, the project, its tasks with annotations and predictions) through an export snapshot."""
    from backend.errors import BackendError

    try:
        client = studio_client(args, settings)
        project = client.project(args.project)
        title = f"tagclip {command} {time.strftime('%Y-%m-%d %H:%M')}"
        tasks = client.export_snapshot(args.project, title, full_predictions=full_predictions, view=args.view)
    except BackendError as e:
        raise UsageError(str(e)) from e
    return client, project, tasks
