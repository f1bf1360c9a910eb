"""Weights files on disk, without torch: the cache dir, a verified download, and a content fingerprint.

* `download_verified` downloads into a temporary file beside the target, checks its SHA-256 (OpenAI's URLs
  carry it as a path segment), and renames it into place, all under a file lock: two workers starting on one
  shared volume never leave a truncated file that breaks every later start.
* `file_sha256` hashes a whole file once and remembers the digest in the cache dir, keyed by the file's real
  path, size and modification time, so a restart does not hash 600 MB again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock
from platformdirs import user_cache_dir

from .errors import WeightsUnavailableError

_CHUNK = 8 * 1024 * 1024
# A path segment of 64 hex digits: the SHA-256 OpenAI's weight URLs carry.
_SHA256_SEGMENT = re.compile(r"^[0-9a-f]{64}$")
FINGERPRINTS_FILE = "fingerprints.json"


def default_cache_dir() -> Path:
    return Path(user_cache_dir("tagclip"))


def cache_dir_or_default(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def expected_sha256(url: str) -> str | None:
    """The SHA-256 a weights URL names in its path (OpenAI's do), or None."""
    return next((s for s in urlparse(url).path.split("/") if _SHA256_SEGMENT.match(s)), None)


def download_verified(url: str, target: Path, expected: str | None, timeout: float = 60.0) -> Path:
    """`target`, downloaded from `url` unless a verified copy is there. Raises WeightsUnavailableError when the
    download fails or its SHA-256 is not `expected` (nothing is left at `target` then)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file() and (expected is None or file_sha256(target, target.parent) == expected):
            return target
        part = _download_to_temporary(url, target.parent, target.name, timeout)
        digest = file_sha256(part, None)
        if expected is not None and digest != expected:
            part.unlink(missing_ok=True)
            raise WeightsUnavailableError(f"{url} downloaded with SHA-256 {digest}, expected {expected}: not used")
        os.replace(part, target)
        _remember(target, digest, target.parent)
    return target


def _download_to_temporary(url: str, directory: Path, name: str, timeout: float) -> Path:
    handle = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{name}.", suffix=".part", delete=False)  # noqa: SIM115
    part = Path(handle.name)
    try:
        with handle, urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - https URLs of open_clip
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise WeightsUnavailableError(f"downloading {url} failed: {e}") from e
    return part


def file_sha256(path: Path, cache_dir: Path | None) -> str:
    """SHA-256 of the whole file, remembered in `cache_dir` (None: not remembered) by real path, size and mtime."""
    key = _stat_key(path)
    if cache_dir is not None:
        known = _read_fingerprints(cache_dir).get(key)
        if known:
            return known
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    if cache_dir is not None:
        _remember(path, value, cache_dir)
    return value


def _stat_key(path: Path) -> str:
    stat = os.stat(path)
    return f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_fingerprints(cache_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((cache_dir / FINGERPRINTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(path: Path, digest: str, cache_dir: Path) -> None:
    """Best effort: a read-only cache dir only costs hashing again next time."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache_dir / FINGERPRINTS_FILE) + ".lock"):
            known = _read_fingerprints(cache_dir)
            known[_stat_key(path)] = digest
            tmp = cache_dir / f".{FINGERPRINTS_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(known, indent=0, sort_keys=True))
            os.replace(tmp, cache_dir / FINGERPRINTS_FILE)
    except OSError:
        pass
