"""docker-compose.yml: structure checked with PyYAML, and with the real Docker Compose v2 `config` (the docker
CLI plugin, or .venv-tools/bin/docker-compose that scripts/provision.sh installs)."""

from __future__ import annotations

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
}


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
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "weights" in COMPOSE["volumes"]


def test_docker_compose_config_passes(compose_command):
    for profiles in ([], ["--profile", "monitoring", "--profile", "cpu", "--profile", "gpu1"]):
        result = subprocess.run(
            [*compose_command, "-f", str(ROOT / "docker-compose.yml"), *profiles, "config", "--quiet"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
