"""Fetch task images: relative Label Studio URLs, plain http(s) URLs, and cloud URIs through Label
Studio's resolve (presign) endpoint. Bounded in size and time. No torch here; the worker calls it.

Failures that may pass (a timeout, a refused connection or failed DNS lookup, a body that broke off, HTTP 5xx,
408, 429, and 401/403 from a revoked or disabled key) raise DownloadUnavailableError: the task is predicted
again later. The others (HTTP 404 and other 4xx, too large, refused by the address policy, an unsupported
reference) raise the other ImageFetchErrors: they fail the same way every time.

The Label Studio key (backend.labelstudio.auth) is only ever sent to the Label Studio origin, never to
other hosts, nor after a redirect to one. Every hop of a download obeys backend.netpolicy: untrusted hosts must
resolve to public addresses.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3

from .errors import (
    DownloadError,
    DownloadRefusedError,
    DownloadTooLargeError,
    DownloadUnavailableError,
    ImageSourceError,
    LabelStudioAuthError,
)
from .labelstudio.auth import LabelStudioAuth, Source, is_jwt, origin
from .netpolicy import REFUSED, AddressPolicy, GuardedSessions, is_refusal
from .redaction import scrub

# URI schemes Label Studio resolves through its cloud storages.
CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
# Label Studio's per-task resolver (the older /tasks/<id>/presign/ is an alias of it).
RESOLVE_PATH = "/tasks/{task_id}/resolve/?fileuri={fileuri}"
MAX_REDIRECTS = 3
_CHUNK = 64 * 1024
# HTTP statuses below 500 that may pass: a timeout, rate limiting, a key that was revoked or disabled.
TRANSIENT_STATUSES = frozenset({401, 403, 408, 429})
# Request failures that may pass: no connection (refused, DNS), no answer in time, a body that broke off.
_TRANSIENT_REQUEST_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout: float  # seconds for the whole download, redirects included


def redact(url: str) -> str:
    """The URL without its query string (presigned URLs carry signatures there)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class ImageFetcher:
    """Downloads one image reference to bytes, within `limits`."""

    def __init__(self, sessions: GuardedSessions, auth: LabelStudioAuth, limits: FetchLimits) -> None:
        self._sessions = sessions
        self._auth = auth
        self._limits = limits

    def fetch(self, ref: object, task_id: int, source: Source) -> bytes:
        url = self.resolve(ref, task_id, source)
        try:
            return self._download(url, source)
        except LabelStudioAuthError:
            raise
        except DownloadError as e:
            if getattr(e, "status", None) == 401 and source.api_key and is_jwt(source.api_key) and source.url:
                # The cached access token may have been revoked early: refresh once.
                self._auth.forget(source.url, source.api_key)
                return self._download(url, source)
            raise

    def resolve(self, ref: object, task_id: int, source: Source) -> str:
        """The http(s) URL to GET for an image reference."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageSourceError(f"task {task_id}: image reference must be a non-empty string, got {ref!r}")
        ref = ref.strip()
        scheme = urlsplit(ref).scheme.lower()
        if scheme in ("http", "https"):
            return ref
        if scheme in CLOUD_SCHEMES:
            if not source.url:
                raise ImageSourceError(
                    f"task {task_id}: {scheme}:// URI needs Label Studio's presign endpoint, but no Label Studio "
                    "URL is known (set LABEL_STUDIO_URL or connect through /setup)"
                )
            fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
            return source.url.rstrip("/") + RESOLVE_PATH.format(task_id=task_id, fileuri=fileuri)
        if scheme:
            raise ImageSourceError(f"task {task_id}: unsupported image URI scheme {scheme!r} in {redact(ref)}")
        if not source.url:
            raise ImageSourceError(
                f"task {task_id}: relative image URL {redact(ref)} needs a Label Studio URL "
                "(set LABEL_STUDIO_URL, or Label Studio sends its hostname in /setup)"
            )
        return urljoin(source.url.rstrip("/") + "/", ref.lstrip("/"))

    def _headers(self, url: str, source: Source) -> dict[str, str]:
        if source.url and source.api_key and origin(url) == origin(source.url):
            return {"Authorization": self._auth.header(source.url, source.api_key)}
        return {}

    def _download(self, url: str, source: Source) -> bytes:
        deadline = time.monotonic() + self._limits.timeout
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DownloadUnavailableError(f"GET {redact(url)} timed out after {self._limits.timeout:g} s")
            try:
                response = self._sessions.for_url(url).get(
                    url,
                    headers=self._headers(url, source),
                    stream=True,
                    allow_redirects=False,
                    timeout=(min(5.0, remaining), remaining),
                )
            except requests.RequestException as e:
                if is_refusal(e):
                    raise DownloadRefusedError(f"GET {redact(url)} {REFUSED}") from e
                error = DownloadUnavailableError if isinstance(e, _TRANSIENT_REQUEST_ERRORS) else DownloadError
                raise error(f"GET {redact(url)} failed: {type(e).__name__}: {scrub(str(e))}") from e
            with response:
                if response.is_redirect:
                    location = response.headers.get("Location", "")
                    if not location:
                        raise DownloadError(f"GET {redact(url)}: redirect without Location")
                    url = urljoin(url, location)
                    continue
                if response.status_code != 200:
                    raise _status_error(url, response.status_code)
                return self._read_body(response, url, deadline)
        raise DownloadError(f"GET {redact(url)}: more than {MAX_REDIRECTS} redirects")

    def _read_body(self, response: requests.Response, url: str, deadline: float) -> bytes:
        limit = self._limits.max_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise DownloadTooLargeError(f"{redact(url)} is {declared} bytes, over MAX_DOWNLOAD_BYTES={limit}")
        body = bytearray()
        raw = response.raw
        try:
            while True:
                # read1 returns what has arrived (up to the size), so the deadline holds for slow bodies.
                chunk = raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                body.extend(chunk)
                if len(body) > limit:
                    raise DownloadTooLargeError(f"{redact(url)} is over MAX_DOWNLOAD_BYTES={limit}")
                if time.monotonic() > deadline:
                    raise DownloadUnavailableError(f"GET {redact(url)} timed out after {self._limits.timeout:g} s")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise DownloadUnavailableError(f"GET {redact(url)} broke off: {type(e).__name__}: {scrub(str(e))}") from e
        if not body:
            raise DownloadError(f"GET {redact(url)} returned an empty body")
        return bytes(body)


def _status_error(url: str, status: int) -> DownloadError:
    """The error of a download answered with `status` (not 200), carrying it as `status`."""
    transient = status >= 500 or status in TRANSIENT_STATUSES
    error = (DownloadUnavailableError if transient else DownloadError)(f"GET {redact(url)} answered HTTP {status}")
    error.status = status  # type: ignore[attr-defined]
    return error


def make_fetcher(
    limits: FetchLimits, label_studio_url: str | None, allowed_hosts: tuple[str, ...], pool_size: int = 4
) -> ImageFetcher:
    """An image fetcher whose downloads (and Label Studio token refreshes) obey the address policy:
    `label_studio_url`'s host and `allowed_hosts` on any address, everything else only on public ones."""
    sessions = GuardedSessions(AddressPolicy.of(label_studio_url, allowed_hosts), pool_size)
    return ImageFetcher(sessions, LabelStudioAuth(sessions.for_url), limits)
