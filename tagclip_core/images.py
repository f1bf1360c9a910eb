"""Safe image decoding: bounded, fully decoded, EXIF-oriented, normalised to "RGB", "RGBA" or "L".

The engine, the CLI and the workers read every image through `load_image` (or `read_image`, which also
reports where the pixels came from), so that a bad file fails here, with a message naming it, and never
half-way through inference.

Deliberate deviations from the reference (which calls `Image.open` and `np.array` and nothing else):
- EXIF orientation is applied, so masks and sizes match what a browser (and Label Studio) shows. A file
  whose EXIF block cannot be parsed is used as stored, as browsers do.
- 16-bit greyscale is scaled by the range of its type (value >> 8, so 65535 -> 255, 32768 -> 128); the
  reference wraps it to uint8 (value & 0xFF).
- Palette images go through their palette (to "RGBA" when they carry transparency, else "RGB"); the
  reference reads palette indices as grey levels.
- Alpha is kept: the engine resizes "RGBA" with its alpha and drops it afterwards, as the reference does.
ICC colour profiles are ignored, as in the reference.

Only raster photo formats are opened (IMAGE_FORMATS): Pillow never tries EPS/PS (which would run Ghostscript
where it is installed), PDF, ICNS or its other plugins on untrusted bytes.

No process-wide state is touched: `ImageFile.LOAD_TRUNCATED_IMAGES` stays off (a truncated file raises
`ImageLoadError`) and `Image.MAX_IMAGE_PIXELS` is left alone; the pixel limit is checked here on the
header size before decoding. Pillow's own bomb check still runs inside `Image.open`: it warns above
`Image.MAX_IMAGE_PIXELS` (about 89.5 MP by default) and refuses above twice that, so the effective limit
is min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS); its refusal is reported as `ImageTooLargeError` too.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import (  # noqa: F401 - importing a plugin registers its format, and only these are opened
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from .errors import ImageLoadError, ImageTooLargeError

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# Exceptions Pillow's format plugins raise on malformed input (OSError covers UnidentifiedImageError and
# "image file is truncated").
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    ZeroDivisionError,
)

# The formats Pillow may identify and decode (Pillow's format names); anything else is refused unread. JPEG's
# opener also returns multi-picture JPEGs (MPO, as phone cameras write them).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")

_OUTPUT_MODES = ("RGB", "RGBA", "L")
_UINT16_MAX = 65535
_INT32_MIN = -(2**31)
_BITS_16_TO_8 = 8
_BITS_32_TO_8 = 24
_UINT8_MAX = 255


@dataclass(frozen=True)
class ImageLimits:
    """What an image may cost before any pixel is decoded."""

    # Largest width * height accepted, read from the file header before decoding (Pillow refuses above
    # 2 * Image.MAX_IMAGE_PIXELS regardless).
    max_pixels: int = 100_000_000
    # Largest encoded size in bytes (file, bytes or stream) accepted.
    max_bytes: int = 200 * 1024 * 1024


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and what it was before normalisation."""

    # The pixels: mode "RGB", "RGBA" or "L", EXIF orientation applied.
    image: Image.Image
    # (height, width) as a browser shows it (after EXIF orientation): the image's "original size".
    original_size: tuple[int, int]
    # (height, width) as stored in the file, before EXIF orientation.
    stored_size: tuple[int, int]
    # Pillow mode of the decoded file before normalisation, e.g. "P", "I;16", "CMYK".
    source_mode: str
    # Pillow format name, e.g. "JPEG", "PNG".
    format: str | None
    # Name used in error messages: the path, the stream's name, or the caller's `name`.
    name: str


def load_image(source: ImageSource, limits: ImageLimits = DEFAULT_LIMITS, name: str | None = None) -> Image.Image:
    """Decode `source` (a path, bytes, or a binary file object) into a "RGB", "RGBA" or "L" image.

    `name` replaces the source's own name in error messages (e.g. the URL bytes were fetched from).
    Raises ImageTooLargeError over `limits`, ImageLoadError for anything else that is not a readable image.
    """
    return read_image(source, limits, name).image


def read_image(source: ImageSource, limits: ImageLimits = DEFAULT_LIMITS, name: str | None = None) -> LoadedImage:
    """Like `load_image`, and also report the original and stored sizes, source mode and format."""
    label = name if name is not None else _source_name(source)
    data = _read_bytes(source, limits, label)
    decoded = _decode(data, limits, label)
    stored_size = (decoded.height, decoded.width)
    source_format = decoded.format
    source_mode = decoded.mode
    oriented = _apply_exif_orientation(decoded)
    image = normalise_mode(oriented, label)
    return LoadedImage(
        image=image,
        original_size=(image.height, image.width),
        stored_size=stored_size,
        source_mode=source_mode,
        format=source_format,
        name=label,
    )


def _source_name(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    stream_name = getattr(source, "name", None)
    return stream_name if isinstance(stream_name, str) else "<stream>"


def _read_bytes(source: ImageSource, limits: ImageLimits, label: str) -> bytes:
    """The encoded bytes of `source`, refusing empty and oversized input."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(Path(source), limits, label)
    elif hasattr(source, "read"):
        data = _read_stream(source, limits, label)
    else:
        raise ImageLoadError(f"{label}: expected a path, bytes or a binary file object, got {type(source).__name__}")
    if not data:
        raise ImageLoadError(f"{label}: empty image data (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"{label}: {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes")
    return data


def _read_file(path: Path, limits: ImageLimits, label: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageTooLargeError(f"{label}: file of {size} bytes exceeds the limit of {limits.max_bytes} bytes")
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ImageLoadError(f"{label}: no such file") from e
    except IsADirectoryError as e:
        raise ImageLoadError(f"{label}: is a directory, not an image file") from e
    except OSError as e:
        raise ImageLoadError(f"{label}: cannot read file: {e.strerror or e}") from e


def _read_stream(stream: BinaryIO, limits: ImageLimits, label: str) -> bytes:
    try:
        data = stream.read(limits.max_bytes + 1)
    except OSError as e:
        raise ImageLoadError(f"{label}: cannot read stream: {e}") from e
    if not isinstance(data, (bytes, bytearray)):
        raise ImageLoadError(f"{label}: stream returned {type(data).__name__}, expected bytes (open it in 'rb')")
    return bytes(data)


def _decode(data: bytes, limits: ImageLimits, label: str) -> Image.Image:
    """Open, check the header size against the limit, then decode every pixel of the first frame."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{label}: {e}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageLoadError(f"{label}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from e
    except _DECODE_ERRORS as e:
        raise ImageLoadError(f"{label}: cannot read image header: {e}") from e
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"{label}: header claims {width}x{height} = {width * height} pixels, "
            f"over the limit of {limits.max_pixels} pixels"
        )
    if width == 0 or height == 0:
        raise ImageLoadError(f"{label}: image has no pixels ({width}x{height})")
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{label}: {e}") from e
    except _DECODE_ERRORS as e:
        raise ImageLoadError(f"{label}: corrupt or truncated {image.format or 'image'} data: {e}") from e
    return image


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip in place as the EXIF orientation tag says (no copy when there is none).

    An EXIF block that cannot be parsed leaves the image as stored, as browsers show it.
    """
    with contextlib.suppress(*_DECODE_ERRORS):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def normalise_mode(image: Image.Image, label: str = "<image>") -> Image.Image:
    """Convert any Pillow mode to exactly one of "RGB", "RGBA" or "L" (see the module docstring)."""
    if image.mode in _OUTPUT_MODES:
        return image
    convert = _CONVERTERS.get(image.mode)
    try:
        if convert is not None:
            return convert(image)
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageLoadError(f"{label}: unsupported image mode {image.mode!r}: {e}") from e


def _palette_to_colour(image: Image.Image) -> Image.Image:
    """Look each index up in the palette; keep transparency (tRNS / GIF transparency) as alpha."""
    has_alpha = "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")
    return image.convert("RGBA" if has_alpha else "RGB")


def _with_alpha(image: Image.Image) -> Image.Image:
    """ "LA", "La", "PA", "RGBa" and other modes with alpha become "RGBA" (premultiplied alpha undone)."""
    if image.mode == "La":
        image = image.convert("LA")
    return image.convert("RGBA")


def _bilevel_to_l(image: Image.Image) -> Image.Image:
    """Black-and-white ("1") to "L" with values 0 and 255."""
    return image.convert("L")


def _uint16_to_l(image: Image.Image) -> Image.Image:
    """16-bit unsigned greyscale ("I;16", "I;16B", ...) to 8 bits by the type's range: value >> 8."""
    values = np.asarray(image).astype(np.uint16)
    return Image.fromarray((values >> _BITS_16_TO_8).astype(np.uint8), mode="L")


def _int32_to_l(image: Image.Image) -> Image.Image:
    """32-bit integer greyscale ("I") to 8 bits.

    Pillow carries 16-bit samples in mode "I" (16-bit PGM, some TIFFs), so values within [0, 65535] are
    scaled as 16-bit (value >> 8); anything else is scaled by the int32 range ((value - INT32_MIN) >> 24).
    """
    values = np.asarray(image).astype(np.int64)
    if values.min() >= 0 and values.max() <= _UINT16_MAX:
        scaled = values >> _BITS_16_TO_8
    else:
        scaled = (values - _INT32_MIN) >> _BITS_32_TO_8
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _float_to_l(image: Image.Image) -> Image.Image:
    """32-bit float greyscale ("F") to 8 bits: [0, 1] scaled by 255 when every value lies there (the usual
    convention for float images), else min-max stretched to [0, 255]; NaN becomes 0."""
    values = np.asarray(image).astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if low < 0.0 or high > 1.0:
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
    scaled = np.rint(np.clip(values, 0.0, 1.0) * _UINT8_MAX)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


# Modes that need more than Pillow's convert("RGB"); every other mode (CMYK, YCbCr, LAB, HSV, RGBX, ...)
# is converted to "RGB" by Pillow.
_CONVERTERS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "P": _palette_to_colour,
    "PA": _with_alpha,
    "LA": _with_alpha,
    "La": _with_alpha,
    "RGBa": _with_alpha,
    "1": _bilevel_to_l,
    "I;16": _uint16_to_l,
    "I;16L": _uint16_to_l,
    "I;16B": _uint16_to_l,
    "I;16N": _uint16_to_l,
    "I": _int32_to_l,
    "F": _float_to_l,
}
