"""The images of a curated dataset on disk: downloaded once through the workers' fetcher, checked by decoding,
stored under content-hashed names, and found again on a rerun.

Layout under the dataset folder DIR:
    images/<split>/<sha256[:32]>.<ext>    the images, placed in their split's folder (`place`)
    images/<sha256[:32]>.<ext>            a download not placed yet (a run stopped before the split)
    .tagclip/images.json                  image reference -> stored file, size and hashes (the resume index)

A rerun reuses every reference whose file is still somewhere under images/ and whose bytes hash to the name;
everything else is downloaded again. Downloads run on a bounded thread pool; the Label Studio key goes only to
the Label Studio origin, within the size and time limits of the workers (backend.fetch). An image that cannot
be fetched or decoded is a failure with its reason; the others are stored.

A file is stored as downloaded, except an image with an EXIF orientation, which is stored turned as a browser
(and Label Studio) shows it, so that every loader sees the pixels the annotations were drawn on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tagclip_core.weights import file_sha256

from .splits import SPLIT_NAMES

IMAGES_DIR = "images"
INDEX_PATH = ".tagclip/images.json"
# Hex digits of the SHA-256 in a stored file's name.
NAME_DIGITS = 32
# Pillow format -> the extension a stored file gets; any other format is stored as PNG.
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
STORED_SUFFIXES = frozenset(EXTENSIONS.values())
# JPEG quality of an EXIF-turned photo stored again.
TURNED_JPEG_QUALITY = 95
# Downloads between two saves of the resume index (a run stopped halfway keeps most of its downloads).
INDEX_SAVE_EVERY = 50
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class StoredImage:
    """One image in the store."""

    file: str  # "<sha256[:32]>.<ext>"
    sha256: str  # of the stored bytes
    dhash: str  # 64-bit difference hash of the pixels, 16 hex digits
    width: int  # as shown (EXIF orientation applied)
    height: int


@dataclass(frozen=True)
class ImageRequest:
    """An image reference to have on disk, and the task it is fetched for (cloud URIs resolve per task)."""

    ref: str
    task: int


@dataclass(frozen=True)
class ImageFailure:
    task: int
    image: str
    reason: str


@dataclass
class FetchReport:
    """What `ImageStore.fetch_all` did."""

    images: dict[str, StoredImage] = field(default_factory=dict)  # ref -> stored image
    downloaded: list[str] = field(default_factory=list)  # refs downloaded by this run
    reused: list[str] = field(default_factory=list)  # refs found on disk, verified
    failures: list[ImageFailure] = field(default_factory=list)


def make_fetcher(settings: Any, label_studio_url: str | None, pool_size: int) -> Any:
    """The image fetcher of the export: the workers' fetcher (backend.fetch.make_fetcher) with the workers' limits
    and address policy. The Label Studio the export reads from is trusted like LABEL_STUDIO_URL (it is the
    user's own); task image URLs must be public addresses or in ALLOWED_IMAGE_HOSTS."""
    from backend.fetch import FetchLimits
    from backend.fetch import make_fetcher as workers_fetcher

    limits = FetchLimits(settings.max_download_bytes, settings.download_timeout)
    return workers_fetcher(limits, label_studio_url, settings.allowed_hosts, pool_size)


class ImageStore:
    """Content-addressed images under DIR/images and the index that finds them again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images_dir = root / IMAGES_DIR
        self.index_path = root / INDEX_PATH
        self.index: dict[str, StoredImage] = self._read_index()

    def _read_index(self) -> dict[str, StoredImage]:
        try:
            raw = json.loads(self.index_path.read_text(encoding="utf-8"))
            return {ref: StoredImage(**entry) for ref, entry in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}  # no index (a first run) or an unreadable one: everything is fetched again

    def save_index(self) -> None:
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({ref: asdict(image) for ref, image in sorted(self.index.items())}, indent=0)
        _write_atomically(self.index_path, text.encode("utf-8"))

    def locate(self, image: StoredImage) -> Path | None:
        """Where the image's file is (any split folder, or not placed yet), if it is there with the right bytes."""
        for folder in (*(self.images_dir / s for s in SPLIT_NAMES), self.images_dir):
            path = folder / image.file
            if path.is_file() and file_sha256(path, None) == image.sha256:
                return path
        return None

    def fetch_all(
        self,
        requests: Iterable[ImageRequest],
        download: Callable[[ImageRequest], bytes],
        image_limits: Any,
        threads: int,
        progress: bool = True,
    ) -> FetchReport:
        """Have every requested reference on disk: reuse what verifies, download the rest on `threads` threads."""
        from tqdm import tqdm

        report = FetchReport()
        pending: list[ImageRequest] = []
        for request in _unique_refs(requests):
            known = self.index.get(request.ref)
            if known is not None and self.locate(known) is not None:
                report.images[request.ref] = known
                report.reused.append(request.ref)
            else:
                pending.append(request)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(pending), desc="downloading images", unit=" img", disable=not progress, file=sys.stderr)
        try:
            with bar, ThreadPoolExecutor(max(1, threads), thread_name_prefix="tagclip-export") as pool:
                outcomes = pool.map(lambda r: self._download_one(r, download, image_limits), pending)
                for done, (request, outcome) in enumerate(zip(pending, outcomes, strict=True), start=1):
                    bar.update(1)
                    if isinstance(outcome, ImageFailure):
                        report.failures.append(outcome)
                    else:
                        self.index[request.ref] = outcome
                        report.images[request.ref] = outcome
                        report.downloaded.append(request.ref)
                    if done % INDEX_SAVE_EVERY == 0:
                        self.save_index()
        finally:  # an interrupted run keeps what it downloaded
            self.save_index()
        return report

    def _download_one(
        self, request: ImageRequest, download: Callable[[ImageRequest], bytes], image_limits: Any
    ) -> StoredImage | ImageFailure:
        from backend.errors import BackendError
        from backend.fetch import redact
        from tagclip_core.errors import TagCLIPError

        try:
            data = download(request)
            return self.store(data, image_limits, redact(request.ref))
        except (BackendError, TagCLIPError) as error:
            return ImageFailure(request.task, request.ref, str(error))
        except OSError as error:
            return ImageFailure(request.task, request.ref, f"cannot write the image: {error}")

    def store(self, data: bytes, image_limits: Any, name: str) -> StoredImage:
        """Decode (checked within `image_limits`), then write under DIR/images/ by content hash (unless a file
        with these bytes is already there)."""
        from tagclip_core.images import read_image

        from .splits import dhash_hex

        loaded = read_image(data, image_limits, name=name)
        content, extension = stored_bytes(data, loaded)
        sha = hashlib.sha256(content).hexdigest()
        height, width = loaded.original_size
        image = StoredImage(f"{sha[:NAME_DIGITS]}{extension}", sha, dhash_hex(loaded.image), width, height)
        if self.locate(image) is None:
            _write_atomically(self.images_dir / image.file, content)
        return image

    def place(self, image: StoredImage, split: str) -> Path:
        """Move the image's file into its split's folder (from wherever it is) and return its path there."""
        target = self.images_dir / split / image.file
        if target.is_file():
            return target
        found = self.locate(image)
        if found is None:
            raise FileNotFoundError(f"{image.file} is no longer under {self.images_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(found, target)
        return target

    def prune(self, keep: Mapping[str, set[str]]) -> list[Path]:
        """Delete image files that are not in `keep` (split -> file names): images of tasks no longer exported,
        in another split now, or downloaded and never placed, so that no loader lists them. Returns them."""
        removed = []
        for split in ("", *SPLIT_NAMES):
            folder = self.images_dir / split
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.is_file() and path.suffix.lower() in STORED_SUFFIXES and path.name not in keep.get(split, ()):
                    path.unlink()
                    removed.append(path)
        return removed


def _unique_refs(requests: Iterable[ImageRequest]) -> list[ImageRequest]:
    """The first request of each reference, in order."""
    seen: dict[str, ImageRequest] = {}
    for request in requests:
        seen.setdefault(request.ref, request)
    return list(seen.values())


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".partial-", delete=False) as f:
        f.write(data)
        temporary = Path(f.name)
    os.replace(temporary, path)


def stored_bytes(data: bytes, loaded: Any) -> tuple[bytes, str]:
    """(bytes, extension) to store for a decoded image: as downloaded, unless the file has an EXIF orientation
    or a format loaders may not read; then the pixels as shown, re-encoded (JPEG for photos, else PNG)."""
    if _orientation(data) == 1 and loaded.format in EXTENSIONS:
        return data, EXTENSIONS[loaded.format]
    buffer = io.BytesIO()
    if loaded.format in ("JPEG", "MPO") and loaded.image.mode in ("RGB", "L"):
        loaded.image.save(buffer, format="JPEG", quality=TURNED_JPEG_QUALITY)
        return buffer.getvalue(), ".jpg"
    loaded.image.save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


def _orientation(data: bytes) -> int:
    """The EXIF orientation tag (1 = as stored; also for a missing or unreadable EXIF block, as browsers do)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1
    return value if isinstance(value, int) else 1
