"""Integration fixtures: a redis-server of the run's own, real `tagclip worker` processes, the backend under
gunicorn (`tagclip serve`), a real Label Studio 1.23.2 started once per session from .venv-ls, and Chromium.
The programs come through fixtures that require them (tests/fixtures/components.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.components import require

from .browser import chromium_binary
from .stack import (
    ROOT,
    Process,
    base_env,
    free_port,
    installed_label_studio,
    redis_server_binary,
    start_backend,
    start_label_studio,
    start_redis,
    start_worker,
)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Logs of every process started here (and figures.json), kept after the run for CI to show."""
    path = ROOT / "test-artifacts" / "integration"
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.log"):
        old.unlink()
    return path


@pytest.fixture(scope="session")
def redis_server() -> str:
    return require(redis_server_binary(), "redis-server", "scripts/provision.sh redis-server")


@pytest.fixture(scope="session")
def label_studio_binary() -> Path:
    return require(installed_label_studio(), "Label Studio 1.23.2 in .venv-ls", "scripts/provision.sh label-studio")


@pytest.fixture(scope="session")
def chromium() -> str:
    return require(chromium_binary(), "chromium", "scripts/provision.sh chromium")


@pytest.fixture(scope="session")
def redis_url(redis_server, artifacts) -> Iterator[str]:
    """A redis-server of this run's own on a free port: no other run shares its keys, queues or RQ's suspend
    switch, and the machine's Redis (if any) is never touched."""
    port = free_port()
    process = start_redis(redis_server, port, artifacts)
    yield f"redis://127.0.0.1:{port}/0"
    process.stop()


@pytest.fixture(scope="session")
def label_studio(label_studio_binary, tmp_path_factory, artifacts):
    studio = start_label_studio(label_studio_binary, tmp_path_factory.mktemp("label-studio-data"), artifacts)
    yield studio
    studio.process.stop()


@pytest.fixture(scope="session")
def engine_env(tiny_checkpoint, tmp_path_factory) -> dict[str, str]:
    """Environment for backend and workers: the tiny random-weight checkpoint, CPU, fast heartbeats."""
    env = base_env()
    env.update(
        {
            "TAGCLIP_CHECKPOINT": str(tiny_checkpoint),
            "TAGCLIP_CACHE_DIR": str(tmp_path_factory.mktemp("tagclip-cache")),
            "TAGCLIP_DEVICE": "cpu",
            "TAGCLIP_ALLOW_DOWNLOAD": "false",
            "WORKER_HEARTBEAT": "1",
            # Label Studio and the tests' image servers listen on loopback, a private address.
            "ALLOWED_IMAGE_HOSTS": "127.0.0.1",
            "PREDICT_TIMEOUT": "80",
            "LOG_LEVEL": "INFO",
            # Two cores shared by Label Studio, the backend and the workers: one torch thread per worker.
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


@dataclass
class QueueStack:
    """A backend in queue mode on its own queue name, and the workers started for it."""

    env: dict[str, str]
    backend: Process
    url: str
    artifacts: Path
    workers: list[Process] = field(default_factory=list)

    @property
    def queue_name(self) -> str:
        return self.env["TAGCLIP_QUEUE"]

    def start_worker(self, name: str | None = None) -> Process:
        name = name or f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        process = start_worker(self.env, self.artifacts, name=f"{self.queue_name}-{name}")
        self.workers.append(process)
        return process

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.backend.stop()


def make_stack(env: dict[str, str], artifacts: Path, tag: str, **extra: str) -> QueueStack:
    env = {**env, "TAGCLIP_QUEUE": f"tagclip-it-{tag}-{uuid.uuid4().hex[:8]}", **extra}
    backend, url = start_backend(env, artifacts, name=f"backend-{env['TAGCLIP_QUEUE']}")
    return QueueStack(env, backend, url, artifacts)


@pytest.fixture(scope="module")
def stack(engine_env, redis_url, artifacts) -> Iterator[QueueStack]:
    queue_stack = make_stack({**engine_env, "REDIS_URL": redis_url}, artifacts, "main")
    yield queue_stack
    queue_stack.stop()
