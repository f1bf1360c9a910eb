"""Image fetching against a real local HTTP server: URL resolution, auth only to Label Studio's origin,
redirects, size and time bounds, clear errors."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from backend.errors import DownloadError, DownloadTooLargeError, ImageSourceError
from backend.fetch import FetchLimits, ImageFetcher, redact
from backend.labelstudio.auth import LabelStudioAuth, Source, is_jwt, jwt_expiry
from tests.fixtures.http_server import serve_directory

pytestmark = pytest.mark.unit


@pytest.fixture
def server(tmp_path):
    with serve_directory(tmp_path) as s:
        yield s


@pytest.fixture
def other_server(tmp_path_factory):
    with serve_directory(tmp_path_factory.mktemp("other")) as s:
        yield s


def fetcher(max_bytes: int = 10_000, timeout: float = 5.0) -> ImageFetcher:
    session = requests.Session()
    return ImageFetcher(session, LabelStudioAuth(session), FetchLimits(max_bytes, timeout))


def test_relative_url_uses_label_studio_host_and_legacy_token(server):
    server.put("img.png", b"png-bytes")
    data = fetcher().fetch("/img.png", 1, Source(server.url, "legacy-key"))
    assert data == b"png-bytes"
    assert server.requests[-1]["headers"]["Authorization"] == "Token legacy-key"


def test_key_is_never_sent_to_another_host(server, other_server):
    url = other_server.put("x.png", b"other")
    assert fetcher().fetch(url, 1, Source(server.url, "secret")) == b"other"
    assert "Authorization" not in other_server.requests[-1]["headers"]
    # Nor after a redirect from Label Studio's host to another one (presigned URLs do this).
    assert fetcher().fetch(f"/redirect?to={url}", 1, Source(server.url, "secret")) == b"other"
    assert server.requests[-1]["headers"]["Authorization"] == "Token secret"
    assert "Authorization" not in other_server.requests[-1]["headers"]


def test_errors_are_specific_and_name_the_url_without_query(server):
    with pytest.raises(DownloadError, match=r"answered HTTP 404"):
        fetcher().fetch(server.url + "/missing.png?X-Amz-Signature=abc", 1, Source(None, None))
    with pytest.raises(ImageSourceError, match="needs a Label Studio URL"):
        fetcher().fetch("/data/upload/1/x.png", 1, Source(None, None))
    with pytest.raises(ImageSourceError, match="unsupported image URI scheme 'file'"):
        fetcher().fetch("file:///etc/passwd", 1, Source(server.url, "k"))
    with pytest.raises(ImageSourceError, match="non-empty string"):
        fetcher().fetch(None, 1, Source(server.url, "k"))
    with pytest.raises(ImageSourceError, match="presign"):
        fetcher().fetch("s3://bucket/key.png", 1, Source(None, None))
    with pytest.raises(DownloadError, match="failed: ConnectionError"):
        fetcher().fetch("http://127.0.0.1:9/x.png", 1, Source(None, None))


def test_cloud_uri_goes_through_label_studio_resolver(server):
    url = fetcher().resolve("s3://bucket/a b.png", 7, Source(server.url + "/", "k"))
    prefix = server.url + "/tasks/7/resolve/?fileuri="
    assert url.startswith(prefix)
    assert base64.urlsafe_b64decode(url[len(prefix) :]).decode() == "s3://bucket/a b.png"


def test_size_limit_declared_and_streamed(server):
    server.put("big.png", b"x" * 20_000)
    with pytest.raises(DownloadTooLargeError, match="MAX_DOWNLOAD_BYTES=10000"):
        fetcher().fetch(server.url + "/big.png", 1, Source(None, None))
    with pytest.raises(DownloadTooLargeError):
        fetcher().fetch(server.url + "/big-undeclared?n=20000", 1, Source(None, None))


def test_whole_download_is_time_bounded(server):
    with pytest.raises(DownloadError, match="timed out"):
        fetcher(max_bytes=10**7, timeout=1.0).fetch(server.url + "/slow", 1, Source(None, None))


def _jwt(claims: dict) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.signature"


def test_jwt_detection_and_expiry():
    token = _jwt({"exp": 1234, "token_type": "refresh"})
    assert is_jwt(token) and jwt_expiry(token) == 1234
    assert not is_jwt("0123456789abcdef0123456789abcdef01234567")
    assert not is_jwt("a.b.c")


def test_redact_drops_query():
    assert redact("https://h/p.png?sig=1") == "https://h/p.png"
