"""The export's image store against a real HTTP server on 127.0.0.1: downloads through the workers' fetcher
(Label Studio key on the Label Studio origin), bounded parallelism, content-hashed and deduplicated files, EXIF
orientation applied, failures with their reason, and a rerun that downloads only what is missing or altered.
Also: the whole dataset path (store, split, every format) runs where torch cannot be imported."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from backend.labelstudio.auth import Source
from backend.settings import Settings
from tagclip_cli.export_images import ImageRequest, ImageStore, make_fetcher
from tagclip_core.images import ImageLimits
from tests.fixtures.images import synthetic_pixels
from tests.unit.test_layers import run_without_torch

pytestmark = pytest.mark.unit

KEY = "secret-key"


def png(seed: int, height: int = 40, width: int = 60) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_pixels(height, width, seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def turned_jpeg() -> bytes:
    """A 60x40 JPEG whose EXIF says "turn 90 degrees clockwise to show" (orientation 6): shown 40x60."""
    image = Image.fromarray(synthetic_pixels(40, 60, 9))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


class ImageServer:
    """Serves fixed bodies by path, records each request's path and Authorization, and the peak concurrency."""

    def __init__(self, files: dict[str, bytes], delay: float = 0.0) -> None:
        self.files = files
        self.delay = delay
        self.requests: list[tuple[str, str | None]] = []
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                with server.lock:
                    server.requests.append((self.path, self.headers.get("Authorization")))
                    server.active += 1
                    server.peak = max(server.peak, server.active)
                try:
                    time.sleep(server.delay)
                    body = server.files.get(self.path)
                    self.send_response(200 if body is not None else 404)
                    self.send_header("Content-Length", str(len(body or b"")))
                    self.end_headers()
                    self.wfile.write(body or b"")
                finally:
                    with server.lock:
                        server.active -= 1

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return sorted(path for path, _ in self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    files = {
        "/data/upload/1/a.png": png(1),
        "/data/upload/1/copy-of-a.png": png(1),
        "/data/upload/1/turned.jpg": turned_jpeg(),
        "/data/upload/1/corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(100)),
    }
    server = ImageServer(files)
    yield server
    server.close()


REFS = ["a.png", "copy-of-a.png", "turned.jpg", "missing.png", "corrupt.png"]


def fetch(store: ImageStore, server: ImageServer, threads: int = 2):
    fetcher = make_fetcher(Settings.from_env({}), server.url, threads)  # the export's Label Studio is trusted
    source = Source(server.url, KEY)
    requests = [ImageRequest(f"/data/upload/1/{name}", 10 + i) for i, name in enumerate(REFS)]
    return store.fetch_all(
        requests, lambda r: fetcher.fetch(r.ref, r.task, source), ImageLimits(), threads, progress=False
    )


def test_downloads_are_hashed_deduplicated_turned_and_failures_have_reasons(tmp_path, server):
    store = ImageStore(tmp_path)
    report = fetch(store, server)
    assert sorted(report.downloaded) == sorted(f"/data/upload/1/{n}" for n in ("a.png", "copy-of-a.png", "turned.jpg"))
    assert {(f.task, f.image): f.reason for f in report.failures}.keys() == {
        (13, "/data/upload/1/missing.png"),
        (14, "/data/upload/1/corrupt.png"),
    }
    reasons = {f.task: f.reason for f in report.failures}
    assert "HTTP 404" in reasons[13] and "not an image in a supported format" in reasons[14]
    # The key went to the Label Studio origin with every request.
    assert {auth for _, auth in server.requests} == {f"Token {KEY}"}
    a, copy, turned = (report.images[f"/data/upload/1/{n}"] for n in ("a.png", "copy-of-a.png", "turned.jpg"))
    assert a == copy and a.file == hashlib.sha256(png(1)).hexdigest()[:32] + ".png"
    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert files == sorted([a.file, turned.file])  # one file per content
    assert (turned.width, turned.height) == (40, 60)
    with Image.open(tmp_path / "images" / turned.file) as stored:
        assert stored.size == (40, 60) and stored.getexif().get(0x0112, 1) == 1
    assert hashlib.sha256((tmp_path / "images" / turned.file).read_bytes()).hexdigest() == turned.sha256


def test_a_rerun_downloads_only_what_is_missing_or_altered(tmp_path, server):
    first = fetch(ImageStore(tmp_path), server)
    a = first.images["/data/upload/1/a.png"]
    turned = first.images["/data/upload/1/turned.jpg"]
    store = ImageStore(tmp_path)
    store.place(a, "train")
    store.place(turned, "val")
    server.requests.clear()
    again = fetch(ImageStore(tmp_path), server)
    assert again.downloaded == [] and len(again.reused) == 3
    assert server.paths() == ["/data/upload/1/corrupt.png", "/data/upload/1/missing.png"]  # failures are retried

    (tmp_path / "images" / "train" / a.file).unlink()  # deleted: both references to it come again
    (tmp_path / "images" / "val" / turned.file).write_bytes(b"altered")  # altered: its hash no longer verifies
    server.requests.clear()
    third = fetch(ImageStore(tmp_path), server)
    assert sorted(third.downloaded) == [f"/data/upload/1/{n}" for n in ("a.png", "copy-of-a.png", "turned.jpg")]
    assert third.images["/data/upload/1/turned.jpg"] == turned
    assert hashlib.sha256((tmp_path / "images" / turned.file).read_bytes()).hexdigest() == turned.sha256


def test_place_moves_between_splits_and_prune_removes_what_is_not_exported(tmp_path, server):
    report = fetch(ImageStore(tmp_path), server)
    store = ImageStore(tmp_path)
    a, turned = report.images["/data/upload/1/a.png"], report.images["/data/upload/1/turned.jpg"]
    assert store.place(a, "train") == tmp_path / "images" / "train" / a.file
    assert store.place(a, "test") == tmp_path / "images" / "test" / a.file  # moved, not downloaded
    assert not (tmp_path / "images" / "train" / a.file).exists()
    (tmp_path / "images" / "test" / "metadata.jsonl").write_text("{}\n")
    removed = store.prune({"test": {a.file}})
    assert [p.name for p in removed] == [turned.file]  # never placed: no task uses it any more
    assert sorted(p.name for p in (tmp_path / "images" / "test").iterdir()) == sorted([a.file, "metadata.jsonl"])


def test_parallel_downloads_are_bounded(tmp_path):
    files = {f"/img/{i}.png": png(i) for i in range(12)}
    server = ImageServer(files, delay=0.1)
    try:
        fetcher = make_fetcher(Settings.from_env({}), server.url, 3)
        requests = [ImageRequest(path, i) for i, path in enumerate(files)]
        report = ImageStore(tmp_path).fetch_all(
            requests, lambda r: fetcher.fetch(r.ref, r.task, Source(server.url, None)), ImageLimits(), 3, False
        )
    finally:
        server.close()
    assert len(report.downloaded) == 12 and 1 < server.peak <= 3  # parallel, never more than asked


def test_the_dataset_path_runs_without_torch(tmp_path):
    code = f"""
import io, json, hashlib
from pathlib import Path
from PIL import Image
import numpy as np
from tagclip_cli.dataset import read_config, task_record
from tagclip_cli.export_images import ImageStore
from tagclip_cli.export_formats import DatasetItem, write_dataset
from tagclip_cli.export import split_sample
from tagclip_cli.splits import SplitConfig, assign_splits
from tagclip_core.images import ImageLimits
root = Path({str(tmp_path)!r})
store = ImageStore(root)
config = read_config('<View><Image name="image" value="$image"/><Choices name="t" toName="image">'
    '<Choice value="A"/></Choices><PolygonLabels name="p" toName="image"><Label value="B"/></PolygonLabels></View>')
pairs = []
for i in range(6):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buffer, "PNG")
    image = store.store(buffer.getvalue(), ImageLimits(), "x")
    result = [{{"from_name": "t", "to_name": "image", "type": "choices", "value": {{"choices": ["A"]}}}},
              {{"from_name": "p", "to_name": "image", "type": "polygonlabels",
               "value": {{"points": [[10, 10], [50, 10], [30, 60]], "polygonlabels": ["B"]}}}}]
    task = {{"id": i, "data": {{"image": "x"}}, "annotations": [{{"id": i, "result": result}}]}}
    pairs.append((task_record(task, config, size=(image.width, image.height)), image))
splits = assign_splits([split_sample(r, im) for r, im in pairs], SplitConfig((0.5, 0.5, 0.0)))
items = [DatasetItem(r, splits[r["task"]], im) for r, im in pairs]
for item in items:
    store.place(item.image, item.split)
for fmt in ("hf", "coco", "yolo", "csv", "jsonl"):
    write_dataset(fmt, root, items, config)
import sys
assert "torch" not in sys.modules
print(sorted(p.name for p in root.iterdir()))
"""
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(
        sorted(["annotations", "data.yaml", "images", "labels", "train.csv", "train.jsonl", "val.csv", "val.jsonl"])
    )


def test_a_run_that_stops_halfway_keeps_what_it_downloaded(tmp_path, server):
    """The index is saved however the run ends, so the rerun downloads only what the stopped run had not."""
    fetcher = make_fetcher(Settings.from_env({}), server.url, 1)

    def download(request: ImageRequest) -> bytes:
        if request.ref.endswith("turned.jpg"):
            raise KeyboardInterrupt  # the user stops the command
        return fetcher.fetch(request.ref, request.task, Source(server.url, KEY))

    requests = [ImageRequest(f"/data/upload/1/{name}", i) for i, name in enumerate(REFS)]
    with pytest.raises(KeyboardInterrupt):
        ImageStore(tmp_path).fetch_all(requests, download, ImageLimits(), 1, progress=False)
    server.requests.clear()
    again = fetch(ImageStore(tmp_path), server)
    assert sorted(again.reused) == ["/data/upload/1/a.png", "/data/upload/1/copy-of-a.png"]
    assert "/data/upload/1/a.png" not in server.paths()
