"""tagclip_core.weights: a verified, atomic, locked weights download from a real local HTTP server, and the
whole-file fingerprint behind model_version."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.identity import checkpoint_fingerprint
from tagclip_core.errors import WeightsUnavailableError
from tagclip_core.weights import FINGERPRINTS_FILE, download_verified, expected_sha256, file_sha256
from tests.fixtures.http_server import serve_directory

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def weights_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / SHA).mkdir()
    (root / SHA / "ViT-B-16.pt").write_bytes(PAYLOAD)
    with serve_directory(root) as server:
        yield server


def test_openai_urls_name_their_sha256():
    url = (
        "https://openaipublic.azureedge.net/clip/models/"
        + "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"
    )
    assert expected_sha256(url) == "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
    assert expected_sha256("https://example.com/weights/model.pt") is None


def test_download_is_verified_and_renamed_into_place(weights_server, tmp_path):
    url = f"{weights_server.url}/{SHA}/ViT-B-16.pt"
    target = tmp_path / "weights" / "ViT-B-16.pt"
    assert download_verified(url, target, expected_sha256(url)) == target
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".part")] == []
    # A verified copy is not downloaded again.
    before = len(weights_server.requests)
    download_verified(url, target, SHA)
    assert len(weights_server.requests) == before


def test_a_checksum_mismatch_leaves_nothing_behind(weights_server, tmp_path):
    url = f"{weights_server.url}/{SHA}/ViT-B-16.pt"
    target = tmp_path / "ViT-B-16.pt"
    with pytest.raises(WeightsUnavailableError, match="expected 0000"):
        download_verified(url, target, "0" * 64)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_a_truncated_file_from_an_earlier_start_is_replaced(weights_server, tmp_path):
    url = f"{weights_server.url}/{SHA}/ViT-B-16.pt"
    target = tmp_path / "ViT-B-16.pt"
    target.write_bytes(PAYLOAD[:1000])  # what a killed, unlocked download used to leave
    download_verified(url, target, SHA)
    assert target.read_bytes() == PAYLOAD


def test_two_processes_downloading_at_once_leave_one_complete_file(weights_server, tmp_path):
    url = f"{weights_server.url}/{SHA}/ViT-B-16.pt"
    target = tmp_path / "shared-volume" / "ViT-B-16.pt"
    code = (
        "import sys; from pathlib import Path; from tagclip_core.weights import download_verified; "
        f"download_verified({url!r}, Path({str(target)!r}), {SHA!r})"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert target.read_bytes() == PAYLOAD
    downloads = [r for r in weights_server.requests if r["path"].endswith("ViT-B-16.pt")]
    assert len(downloads) == 1  # the others waited on the lock, then found the verified file


def test_the_fingerprint_covers_the_whole_file_and_is_remembered(tmp_path):
    cache = tmp_path / "cache"
    path = tmp_path / "ckpt.pt"
    data = bytearray(os.urandom(5 * 1024 * 1024))
    path.write_bytes(data)
    first = checkpoint_fingerprint(str(path), str(cache))
    assert first == hashlib.sha256(data).hexdigest()[:16]
    assert (cache / FINGERPRINTS_FILE).is_file()
    data[len(data) // 2] ^= 0xFF  # a change in the middle, which the first/last-MiB fingerprint missed
    path.write_bytes(data)
    assert checkpoint_fingerprint(str(path), str(cache)) != first
    # Remembered by real path, size and mtime: the stored digest is what a second call returns ...
    memo = json.loads((cache / FINGERPRINTS_FILE).read_text())
    stat = os.stat(path)
    key = f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    assert memo[key] == hashlib.sha256(data).hexdigest()
    memo[key] = "f" * 64
    (cache / FINGERPRINTS_FILE).write_text(json.dumps(memo))
    assert file_sha256(path, cache) == "f" * 64
    # ... until the file changes (another mtime): then it is hashed again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_sha256(path, cache) == hashlib.sha256(data).hexdigest()
