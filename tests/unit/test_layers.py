"""Layers run one way, split by what they import:

* the core (`backend`, minus `backend.web`) imports neither flask nor torch: every process can import it;
* the web process (`backend.web`) imports no torch: it reaches the engine only by dotted path;
* the worker (`worker`) imports no flask;
* the engine (`tagclip_core`) imports none of the service side (flask, rq, redis, label-studio-sdk, backend).

Each check imports every module of its layer in a fresh interpreter where the forbidden packages cannot be
imported. Importing a layer also starts no thread (no side effects at import time).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

TORCH = ("torch", "torchvision", "open_clip")
FLASK = ("flask", "werkzeug", "gunicorn")
SERVICE = ("flask", "werkzeug", "gunicorn", "rq", "redis", "label_studio_sdk", "backend", "worker", "tagclip_cli")

BLOCKER = """
import sys
BLOCKED = {blocked!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:  # as if the package were not installed
            raise ModuleNotFoundError('blocked in this layer: ' + name, name=name)
sys.meta_path.insert(0, Blocker())
"""

IMPORT_LAYER = """
import importlib, pkgutil, threading
before = threading.active_count()
names = []
for package in {packages!r}:
    root = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(getattr(root, '__path__', []), package + '.'):
        if not any(info.name == x or info.name.startswith(x + '.') for x in {excluded!r}):
            importlib.import_module(info.name)
            names.append(info.name)
assert threading.active_count() == before, 'importing started a thread'
print(len(names))
"""


def run(code: str, blocked: tuple[str, ...] = (*TORCH, "tagclip_core", "worker")) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where the `blocked` top-level packages cannot be imported."""
    prelude = BLOCKER.format(blocked=tuple(blocked))
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return run(code, blocked=(*TORCH, "worker"))


def import_layer(packages: tuple[str, ...], blocked: tuple[str, ...], excluded: tuple[str, ...] = ()) -> int:
    result = run(IMPORT_LAYER.format(packages=packages, excluded=excluded), blocked)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


# backend.app re-exports backend.web.app for old imports: it belongs to the web layer.
WEB_MODULES = ("backend.web", "backend.app")


@pytest.mark.parametrize(
    ("packages", "blocked", "excluded"),
    [
        pytest.param(("backend",), (*TORCH, *FLASK, "worker", "tagclip_cli"), WEB_MODULES, id="core"),
        pytest.param(WEB_MODULES, (*TORCH, "worker", "tagclip_cli"), (), id="web"),
        pytest.param(("worker",), (*FLASK, "tagclip_cli"), (), id="worker"),
        pytest.param(("tagclip_core",), SERVICE, (), id="engine"),
    ],
)
def test_layer_imports_only_what_it_may(packages, blocked, excluded):
    assert import_layer(packages, blocked, excluded) > len(packages)


def test_the_web_process_serves_without_torch():
    code = """
from backend.web.app import create_app
from backend.settings import Settings
app = create_app(Settings(redis_url='redis://127.0.0.1:1/0'))
client = app.test_client()
assert client.get('/health').status_code == 200
config = '<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'
r = client.post('/setup', json={'project': '1.1', 'schema': config})
assert r.status_code == 200, r.data
print(r.json['model_version'])
"""
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tagclip-")


def test_the_engine_package_imports_lazily():
    """`import tagclip_core` loads no torch; its torch-free helpers work without torch."""
    code = """
import tagclip_core
from tagclip_core.geometry import rle_decode, rle_encode
from tagclip_core.metrics import average_precision
from tagclip_core.tags import tag_labels
import numpy as np
assert tag_labels(['a', 'b'], np.array([0.9, 0.1], np.float32), 0.5) == ('a',)
print(sorted(tagclip_core.__all__)[0])
"""
    result = run(code, blocked=TORCH)
    assert result.returncode == 0, result.stderr


def test_wsgi_module_is_two_lines():
    lines = [line for line in (ROOT / "_wsgi.py").read_text().splitlines() if line.strip()]
    assert lines == ["from backend.web.app import create_app", "app = create_app()"]


def test_a_command_whose_extra_is_missing_names_the_extra():
    code = """
from tagclip_cli.main import main
raise SystemExit(main(['serve']))
"""
    result = run(code, blocked=("gunicorn",))
    assert result.returncode == 2
    assert "pip install 'tagclip-studio[server]'" in result.stderr and "gunicorn" in result.stderr
