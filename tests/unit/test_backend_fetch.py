"""Image fetching against a real local HTTP server: URL resolution, auth only to Label Studio's origin,
redirects, size and time bounds, clear errors."""

from __future__ import annotations

import base64
import json
import time

import pytest

from backend.errors import (
    DownloadError,
    DownloadRefusedError,
    DownloadTooLargeError,
    DownloadUnavailableError,
    ImageSourceError,
)
from backend.fetch import FetchLimits, ImageFetcher, make_fetcher, redact
from backend.labelstudio.auth import Source, is_jwt, jwt_expiry
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


def fetcher(
    max_bytes: int = 10_000, timeout: float = 5.0, allowed: tuple[str, ...] = ("127.0.0.1",), ls_url: str | None = None
) -> ImageFetcher:
    """The workers' fetcher; the test servers listen on 127.0.0.1, a private address, so it is allowed."""
    return make_fetcher(FetchLimits(max_bytes, timeout), ls_url, allowed)


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


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408, 401, 403])
def test_answers_that_may_pass_are_unavailable_not_failures_for_good(server, status):
    with pytest.raises(DownloadUnavailableError, match=f"answered HTTP {status}"):
        fetcher().fetch(f"{server.url}/status/{status}", 1, Source(None, None))


@pytest.mark.parametrize("status", [404, 410, 400, 451])
def test_answers_that_will_not_change_are_failures_for_good(server, status):
    with pytest.raises(DownloadError, match=f"answered HTTP {status}") as raised:
        fetcher().fetch(f"{server.url}/status/{status}", 1, Source(None, None))
    assert not isinstance(raised.value, DownloadUnavailableError)


def test_unreachable_hosts_and_timeouts_are_unavailable_policy_and_size_refusals_are_not(server):
    server.put("big.png", b"x" * 20_000)
    unavailable = [
        "http://127.0.0.1:9/x.png",  # connection refused
        "http://no-such-host.invalid/x.png",  # DNS lookup fails
        server.url + "/slow",  # the body does not arrive in time
    ]
    for url in unavailable:
        with pytest.raises(DownloadUnavailableError):
            fetcher(max_bytes=10**7, timeout=1.0).fetch(url, 1, Source(None, None))
    for url, error in [
        (server.url + "/big.png", DownloadTooLargeError),
        ("http://169.254.169.254/latest/meta-data", DownloadRefusedError),
        ("file:///etc/passwd", ImageSourceError),
    ]:
        with pytest.raises(error) as raised:
            fetcher().fetch(url, 1, Source(server.url, "k"))
        assert not isinstance(raised.value, DownloadUnavailableError), url


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


# --- the address policy (backend.netpolicy) ---
def test_private_addresses_are_refused_by_policy_unless_allowed(server):
    url = server.put("img.png", b"png-bytes")
    for allowed in ((), ("localhost",), ("*.example.com",)):
        with pytest.raises(DownloadRefusedError, match="refused by policy") as info:
            fetcher(allowed=allowed).fetch(url, 1, Source(None, None))
        assert "127.0.0.1" not in str(info.value).replace(server.url, "")  # names no internal address
    assert server.requests == []  # nothing was sent
    assert fetcher(allowed=("127.0.0.1",)).fetch(url, 1, Source(None, None)) == b"png-bytes"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://10.1.2.3/x.png",
        "http://192.168.0.1/x.png",
        "http://[::1]:9/x.png",
        "http://[::ffff:127.0.0.1]:9/x.png",
        "http://100.64.0.1/x.png",  # carrier-grade NAT
        "http://0.0.0.0:9/x.png",
    ],
)
def test_non_public_addresses_are_refused_without_connecting(url):
    started = time.monotonic()
    with pytest.raises(DownloadRefusedError, match="refused by policy"):
        fetcher(allowed=()).fetch(url, 1, Source(None, None))
    assert time.monotonic() - started < 1.0  # refused at the check, not after a connect timeout


def test_every_redirect_hop_obeys_the_policy(server, other_server):
    """A trusted host redirecting to a private host that is not trusted: the second hop is refused, unsent."""
    target = other_server.put("x.png", b"other")
    trusted = server.url.replace("127.0.0.1", "localhost")
    with pytest.raises(DownloadRefusedError, match="refused by policy"):  # other_server is on 127.0.0.1, not allowed
        fetcher(allowed=("localhost",)).fetch(f"{trusted}/redirect?to={target}", 1, Source(None, None))
    assert [r["path"] for r in server.requests] == ["/redirect"]
    assert other_server.requests == []


def test_label_studio_url_host_is_trusted_on_any_address(server):
    server.put("img.png", b"png-bytes")
    fetched = fetcher(allowed=(), ls_url=server.url).fetch("/img.png", 1, Source(server.url, "k"))
    assert fetched == b"png-bytes"


def test_the_checked_address_is_the_one_connected_to(monkeypatch):
    """DNS answers a public address at the check and a private one afterwards: the download connects to the
    checked address (and fails there, nothing listens), it never resolves the name a second time."""
    import socket

    real = socket.getaddrinfo
    answers = iter(["192.0.2.10", "127.0.0.1", "127.0.0.1"])  # 192.0.2.10 is TEST-NET-1: public, unroutable
    calls = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.example.test":
            return real(host, port, *args, **kwargs)
        address = next(answers)
        calls.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(DownloadError):
        fetcher(allowed=(), timeout=1.0).fetch("http://rebind.example.test:9/x.png", 1, Source(None, None))
    assert calls == ["192.0.2.10"]
