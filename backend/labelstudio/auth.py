"""Who a Label Studio is and how to authenticate to it: a `Source` (its URL and key, always one pair) and the
Authorization header for a key.

A key only ever travels with the URL it came with: the environment's LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY,
the hostname and token Label Studio sends in /setup, or a URL and key a caller of /jobs supplies together.
`task_source` is the one rule for /predict.

A legacy key goes as `Authorization: Token <key>`. A personal access token (a JWT refresh token) is exchanged at
POST /api/token/refresh/ for an access token (300 s), cached until shortly before it expires, and sent as
`Bearer`. Callers send the header only to the Source's own origin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import LabelStudioAuthError
from ..redaction import scrub

TOKEN_REFRESH_PATH = "/api/token/refresh/"
# Refresh a Bearer access token this many seconds before it expires.
TOKEN_REFRESH_MARGIN = 30.0
# Access tokens kept per process (one per Label Studio and key).
MAX_CACHED_TOKENS = 256


@dataclass(frozen=True)
class Source:
    """Where relative URLs point and which key Label Studio takes."""

    url: str | None
    api_key: str | None


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def same_origin(a: str | None, b: str | None) -> bool:
    return bool(a and b) and origin(a) == origin(b)  # type: ignore[arg-type]


def origin_id(url: str) -> str:
    """A short stable name of a URL's origin (scheme, host, port) for Redis key names."""
    scheme, host, port = origin(url)
    return hashlib.sha256(f"{scheme}://{host}:{port}".encode()).hexdigest()[:12]


def task_source(configured: Source | None, announced: Source | None) -> Source:
    """Where a task's relative image URLs point and the key they take.

    configured: LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY (None when LABEL_STUDIO_URL is unset);
    announced: the hostname and token Label Studio sent in /setup (None before any /setup).
    The configured URL wins; its key is the configured one, or, when none is configured, the token Label
    Studio itself sent (a caller's own token, sent to the operator's Label Studio). Without a configured
    URL, /setup's hostname goes with /setup's token. The configured key never goes anywhere but its URL.
    """
    if configured is not None and configured.url:
        return Source(configured.url, configured.api_key or (announced.api_key if announced else None))
    if announced is not None and announced.url:
        return Source(announced.url, announced.api_key)
    return Source(None, None)


def is_jwt(key: str) -> bool:
    """A personal access token is a JWT: three base64url segments, the first a JSON header."""
    segments = key.split(".")
    if len(segments) != 3 or not all(segments):
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(segments[0] + "=" * (-len(segments[0]) % 4)))
    except ValueError:
        return False
    return isinstance(header, dict) and "alg" in header


def jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class LabelStudioAuth:
    """Authorization headers for Label Studio; caches Bearer access tokens exchanged from PATs (the most
    recently used MAX_CACHED_TOKENS)."""

    def __init__(self, session_for: Callable[[str], requests.Session], timeout: float = 10.0) -> None:
        self._session_for = session_for  # the session to use for a URL (backend.netpolicy)
        self._timeout = timeout
        self._tokens: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def header(self, base_url: str, key: str) -> str:
        if not is_jwt(key):
            return f"Token {key}"
        cache_key = (base_url, key)
        with self._lock:
            cached = self._tokens.get(cache_key)
            if cached and cached[1] - TOKEN_REFRESH_MARGIN > time.time():
                self._tokens.move_to_end(cache_key)
                return f"Bearer {cached[0]}"
            access, expires = self._refresh(base_url, key)
            self._tokens[cache_key] = (access, expires)
            while len(self._tokens) > MAX_CACHED_TOKENS:
                self._tokens.popitem(last=False)
            return f"Bearer {access}"

    def forget(self, base_url: str, key: str) -> None:
        with self._lock:
            self._tokens.pop((base_url, key), None)

    def _refresh(self, base_url: str, key: str) -> tuple[str, float]:
        url = urljoin(base_url.rstrip("/") + "/", TOKEN_REFRESH_PATH.lstrip("/"))
        try:
            response = self._session_for(url).post(url, json={"refresh": key}, timeout=self._timeout)
        except requests.RequestException as e:
            raise LabelStudioAuthError(f"token refresh at {url} failed: {type(e).__name__}: {scrub(str(e))}") from e
        if response.status_code != 200:
            raise LabelStudioAuthError(
                f"token refresh at {url} answered {response.status_code}: the personal access token was refused"
            )
        try:
            access = str(response.json()["access"])
        except (ValueError, KeyError) as e:
            raise LabelStudioAuthError(f"token refresh at {url} gave no access token") from e
        return access, jwt_expiry(access) or time.time() + 300.0
