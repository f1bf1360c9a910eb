"""Layers run one way: the web process imports neither torch nor tagclip_core (it reaches the engine
only by dotted path), and importing backend modules has no side effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

BLOCK_TORCH = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'tagclip_core', 'open_clip', 'worker'):
            raise ImportError('blocked in the web process: ' + name)
sys.meta_path.insert(0, Blocker())
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], cwd=ROOT, capture_output=True, text=True)


def test_backend_imports_and_serves_without_torch():
    code = """
from backend.app import create_app
from backend.settings import Settings
app = create_app(Settings(redis_url='redis://127.0.0.1:1/0'))
client = app.test_client()
assert client.get('/health').status_code == 200
config = '<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'
r = client.post('/setup', json={'project': '1.1', 'schema': config})
assert r.status_code == 200, r.data
print(r.json['model_version'])
"""
    result = run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tagclip-")


def test_wsgi_module_is_two_lines():
    lines = [line for line in (ROOT / "_wsgi.py").read_text().splitlines() if line.strip()]
    assert lines == ["from backend.app import create_app", "app = create_app()"]


def test_importing_backend_starts_nothing():
    code = """
import threading
before = threading.active_count()
import backend.app, backend.queue, backend.fetch, backend.labelconfig, backend.metrics
assert threading.active_count() == before
"""
    result = run(code)
    assert result.returncode == 0, result.stderr
