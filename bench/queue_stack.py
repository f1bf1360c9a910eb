"""What the service benchmarks share: a queue-mode stack on this machine (a redis-server of their own, backend and
workers as child processes on a random-weight checkpoint) and the way they report (JSON on stdout, optionally a
file). The processes come from tests/integration/stack.py, as in the integration tests."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.stack import Process, base_env, free_port, start_redis  # noqa: E402


def start_queue_redis(logs: Path) -> tuple[Process, str]:
    """A redis-server of the benchmark's own; returns it and its URL."""
    port = free_port()
    return start_redis(shutil.which("redis-server") or "redis-server", port, logs), f"redis://127.0.0.1:{port}/0"


def queue_env(redis_url: str, checkpoint: Path, **settings: str) -> dict[str, str]:
    """The environment of the backend and workers: queue mode on `redis_url`, the checkpoint on the CPU, images
    from 127.0.0.1 allowed; `settings` adds or overrides variables."""
    env = base_env()
    env.update(
        {
            "REDIS_URL": redis_url,
            "TAGCLIP_CHECKPOINT": str(checkpoint),
            "TAGCLIP_DEVICE": "cpu",
            "TAGCLIP_ALLOW_DOWNLOAD": "false",
            "ALLOWED_IMAGE_HOSTS": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            **settings,
        }
    )
    return env


def run_and_report(args: argparse.Namespace, run: Callable[[argparse.Namespace, Path], dict], prefix: str) -> int:
    """Run the benchmark in a temporary folder, print its figures as JSON and write them to `args.json` if set."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        figures = run(args, Path(tmp))
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0
