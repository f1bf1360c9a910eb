"""Image downloads against a real Label Studio: legacy token, personal access token (exchanged for a
Bearer access token), a refused key, and a cloud URI through the task resolver with no storage."""

from __future__ import annotations

import pytest

from backend.errors import DownloadError, LabelStudioAuthError
from backend.fetch import FetchLimits, make_fetcher
from backend.labelstudio.auth import Source, is_jwt

from .stack import image_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def uploaded(label_studio):
    project = label_studio.create_project("TagCLIP fetch", '<View><Image name="image" value="$image"/></View>')
    task_id = label_studio.upload_images(project, image_files(1, "fetch"))[0]
    task = label_studio.api("GET", f"/api/tasks/{task_id}").json()
    return task_id, task["data"]["image"]


@pytest.fixture(scope="module")
def personal_access_token(label_studio) -> str:
    """A new personal access token of the admin user. The session's Label Studio is fresh and nothing else
    creates one, so anything but 201 (409: one exists, listed without its secret) is a failure, not a skip."""
    created = label_studio.session.post(label_studio.url + "/api/token/", timeout=30)
    assert created.status_code == 201, f"POST /api/token/ -> {created.status_code}: {created.text[:300]}"
    return created.json()["token"]


@pytest.fixture
def fetcher(label_studio):
    """The workers' fetcher, with this Label Studio as LABEL_STUDIO_URL (its host is trusted on loopback)."""
    return lambda: make_fetcher(FetchLimits(10 * 1024 * 1024, 20), label_studio.url, ())


def test_relative_upload_url_with_legacy_token(label_studio, uploaded, fetcher):
    task_id, url = uploaded
    assert url.startswith("/data/upload/")
    assert fetcher().fetch(url, task_id, Source(label_studio.url, label_studio.token)).startswith(b"\x89PNG")


def test_personal_access_token_is_exchanged_and_cached(label_studio, uploaded, personal_access_token, fetcher):
    task_id, url = uploaded
    assert is_jwt(personal_access_token)
    f = fetcher()
    source = Source(label_studio.url, personal_access_token)
    assert f.fetch(url, task_id, source).startswith(b"\x89PNG")
    assert f.fetch(url, task_id, source).startswith(b"\x89PNG")  # second time from the cached access token


def test_refused_keys_give_clear_errors(label_studio, uploaded, fetcher):
    task_id, url = uploaded
    with pytest.raises(DownloadError, match="HTTP 401"):
        fetcher().fetch(url, task_id, Source(label_studio.url, "wrong-legacy-token"))
    bogus_pat = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjF9.c2ln"
    with pytest.raises(LabelStudioAuthError, match="personal access token was refused"):
        fetcher().fetch(url, task_id, Source(label_studio.url, bogus_pat))


def test_cloud_uri_without_storage_is_a_clear_error(label_studio, uploaded, fetcher):
    task_id, _ = uploaded
    with pytest.raises(DownloadError, match=r"/tasks/\d+/resolve/ answered HTTP 404"):
        fetcher().fetch("s3://no-such-bucket/image.png", task_id, Source(label_studio.url, label_studio.token))
