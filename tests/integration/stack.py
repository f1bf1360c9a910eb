"""Real processes for the integration tests: Label Studio 1.23.2 (from .venv-ls), redis-server, the backend
under gunicorn (`tagclip serve`) and workers (`tagclip worker`). No fakes: each is the real program."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from tests.fixtures.images import synthetic_pixels

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("LS_VENV", ROOT / ".venv-ls"))
LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"
LS_USER = "admin@example.com"
LS_PASSWORD = "adminpass123"
LS_VERSION = os.environ.get("LS_VERSION", "1.23.2")  # as scripts/setup_ls.sh reads it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the service is not up yet
            last_error = e
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:g} s (last error: {last_error})")


@dataclass
class Process:
    """A child process with its log file; stopped gracefully, or killed."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path = ROOT) -> Process:
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    popen = subprocess.Popen(
        argv, env=dict(env), cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    log_file.close()
    return Process(name, popen, log_path)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGCLIP_", "LABEL_STUDIO_", "BASIC_AUTH"))}
    env.pop("REDIS_URL", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- Redis ---
def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis(binary: str, port: int, log_dir: Path) -> Process:
    """A redis-server of our own on 127.0.0.1:port, no persistence."""
    proc = spawn(
        f"redis-{port}",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        os.environ,
        log_dir,
    )
    import redis

    wait_until(lambda: redis.Redis(port=port, socket_connect_timeout=0.5).ping(), 20, what=f"redis on {port}")
    return proc


# --- Label Studio ---
def installed_label_studio() -> Path | None:
    """.venv-ls's label-studio when scripts/setup_ls.sh finished installing it (its marker file is there)."""
    binary = LS_VENV / "bin" / "label-studio"
    installed = (LS_VENV / f".installed-label-studio-{LS_VERSION}").is_file() and binary.is_file()
    return binary if installed else None


@dataclass
class LabelStudio:
    url: str
    token: str
    process: Process
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.headers["Authorization"] = f"Token {self.token}"
        self.session.trust_env = False

    def api(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201), **kwargs) -> requests.Response:
        response = self.session.request(method, self.url + path, timeout=kwargs.pop("timeout", 120), **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in expected, f"{method} {path} -> {response.status_code}: {response.text[:500]}"
        return response

    def create_project(self, title: str, label_config: str) -> int:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": label_config}).json()["id"]

    def upload_images(self, project: int, files: list[tuple[str, bytes]]) -> list[int]:
        """Upload image files as tasks (relative /data/upload/... URLs); returns task ids in upload order."""
        # One form field per file: Label Studio iterates request.FILES by field name.
        payload = [(f"file{i}", (name, io.BytesIO(data), "image/png")) for i, (name, data) in enumerate(files)]
        self.api("POST", f"/api/projects/{project}/import", files=payload)
        tasks = self.api("GET", f"/api/tasks?project={project}&page_size=1000").json()
        tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
        by_name = {}
        for task in tasks:
            url = next(iter(task["data"].values()))
            by_name[url.rsplit("/", 1)[-1].split("-", 1)[-1]] = task["id"]
        return [by_name[name] for name, _ in files]

    def connect_backend(self, project: int, url: str, **extra) -> dict:
        body = {"url": url, "project": project, "title": "TagCLIP", "is_interactive": False, **extra}
        return self.api("POST", "/api/ml", json=body).json()

    def retrieve_predictions(self, project: int, task_ids: list[int]) -> dict:
        return self.api(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": False, "included": task_ids}},
        ).json()

    def predictions(self, project: int) -> list[dict]:
        return self.api("GET", f"/api/predictions?project={project}").json()


def start_label_studio(binary: Path, data_dir: Path, log_dir: Path, predict_timeout: int = 100) -> LabelStudio:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(
        {
            "LABEL_STUDIO_USERNAME": LS_USER,
            "LABEL_STUDIO_PASSWORD": LS_PASSWORD,
            "LABEL_STUDIO_USER_TOKEN": LS_TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_HOST": url,
            "SSRF_PROTECTION_ENABLED": "false",
            "ML_BLOCK_LOCAL_IP": "false",
            "ML_TIMEOUT_PREDICT": str(predict_timeout),
            "LATEST_VERSION_CHECK": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env["PATH"] = f"{LS_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    process = spawn(
        "label-studio",
        [
            str(binary),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env,
        log_dir,
    )
    studio = LabelStudio(url, LS_TOKEN, process)

    def up() -> bool:
        if process.popen.poll() is not None:
            raise RuntimeError(f"Label Studio exited:\n{process.log_tail()}")
        return studio.session.get(url + "/api/current-user/whoami", timeout=5).status_code == 200

    try:
        wait_until(up, 300, interval=1.0, what="Label Studio /api/current-user/whoami")
    except Exception:
        process.stop()
        raise
    return studio


# --- backend and workers ---
def start_backend(env: Mapping[str, str], log_dir: Path, name: str = "backend") -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = spawn(
        name,
        [sys.executable, "-m", "tagclip_cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env,
        log_dir,
    )

    def up() -> bool:
        if process.popen.poll() is not None:
            raise RuntimeError(f"backend exited:\n{process.log_tail()}")
        return requests.get(url + "/health", timeout=2).status_code == 200

    wait_until(up, 60, what="backend /health")
    return process, url


def start_worker(env: Mapping[str, str], log_dir: Path, name: str) -> Process:
    return spawn(name, [sys.executable, "-m", "tagclip_cli.main", "worker", "--name", name], env, log_dir)


def wait_workers(backend_url: str, count: int, timeout: float = 120, auth=None) -> dict:
    return wait_until(
        lambda: (lambda h: h if h.get("workers", 0) >= count and h["ready"] else None)(
            requests.get(backend_url + "/health", timeout=2, auth=auth).json()
        ),
        timeout,
        interval=0.5,
        what=f"{count} worker(s) alive",
    )


# --- data ---
def png_bytes(height: int, width: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_pixels(height, width, seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_files(count: int, prefix: str, size: tuple[int, int] = (224, 224)) -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i:03d}.png", png_bytes(size[0], size[1], seed=1000 + i)) for i in range(count)]


CORRUPT_PNG = b"\x89PNG\r\n\x1a\n" + bytes(np.arange(200, dtype=np.uint8))


@contextlib.contextmanager
def stopping(*processes: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for p in processes:
            p.stop()
