"""tagclip_core.images: every case generated on the fly in tmp_path."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from tagclip_core.errors import ImageLoadError, ImageTooLargeError
from tagclip_core.images import ImageLimits, load_image, normalise_mode, read_image

pytestmark = pytest.mark.unit

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB) but that has no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def _save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def _noise_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _jpeg_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **params)
    return buffer.getvalue()


# ---- errors ------------------------------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="no such file") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="0 bytes") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("payload", [b"this is a text file, not an image\n", bytes(range(256)) * 4])
def test_non_image_is_refused(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "fake.jpg"
    path.write_bytes(payload)
    with pytest.raises(ImageLoadError, match="not an image in a supported format") as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "PCX", "TGA", "PPM", "SGI", "DDS"])
def test_only_photo_formats_are_opened(fmt: str) -> None:
    """Formats outside IMAGE_FORMATS are refused before any plugin decodes them (EPS would run Ghostscript)."""
    buffer = io.BytesIO()
    Image.fromarray(_noise_rgb(16, 16)).save(buffer, format=fmt)
    assert Image.open(io.BytesIO(buffer.getvalue())).format == fmt  # Pillow itself would open it
    with pytest.raises(ImageLoadError, match="not an image in a supported format"):
        load_image(buffer.getvalue())


def test_a_postscript_file_never_reaches_ghostscript(monkeypatch) -> None:
    import subprocess

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n%%EOF\n"
    with pytest.raises(ImageLoadError, match="not an image in a supported format"):
        load_image(eps)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "MPO"])
def test_photo_formats_decode(fmt: str) -> None:
    buffer = io.BytesIO()
    first, second = Image.fromarray(_noise_rgb(16, 24)), Image.fromarray(_noise_rgb(16, 24))
    first.save(buffer, format=fmt, **({"save_all": True, "append_images": [second]} if fmt == "MPO" else {}))
    assert Image.open(io.BytesIO(buffer.getvalue())).format == fmt
    assert load_image(buffer.getvalue()).size == (24, 16)


def test_corrupt_png_data_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_noise_rgb(32, 32)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    idat = data.index(b"IDAT") + 4
    data[idat + 10 : idat + 60] = b"\x00" * 50  # scramble the compressed pixel stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg_is_refused_without_global_side_effects(tmp_path: Path) -> None:
    data = _jpeg_bytes(Image.fromarray(_noise_rgb(64, 64)), quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    max_pixels_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError, match="truncated") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert max_pixels_before == Image.MAX_IMAGE_PIXELS


def test_name_overrides_the_source_in_messages() -> None:
    with pytest.raises(ImageLoadError, match="https://example.org/a.jpg"):
        load_image(b"garbage bytes", name="https://example.org/a.jpg")


def test_text_stream_is_refused() -> None:
    with pytest.raises(ImageLoadError, match="expected bytes"):
        load_image(io.StringIO("not bytes"))


def test_unsupported_source_type() -> None:
    with pytest.raises(ImageLoadError, match="int"):
        load_image(42)  # type: ignore[arg-type]


# ---- size limits ---------------------------------------------------------------------------------------


def test_png_header_claiming_50000x50000_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(50000, 50000))
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(info.value)
    assert isinstance(info.value, ImageLoadError)  # callers that catch load errors catch this too


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_our_pixel_limit_is_checked_on_the_header(tmp_path: Path) -> None:
    # 108 MP: under Pillow's own refusal (2 * MAX_IMAGE_PIXELS) but over our default 100 MP.
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(12000, 9000))
    with pytest.raises(ImageTooLargeError, match="12000x9000") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_custom_limits(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (10, 10)), tmp_path / "ten.png")
    assert load_image(path, ImageLimits(max_pixels=100)).size == (10, 10)
    with pytest.raises(ImageTooLargeError, match="10x10"):
        load_image(path, ImageLimits(max_pixels=99))
    with pytest.raises(ImageTooLargeError, match="bytes"):
        load_image(path, ImageLimits(max_bytes=10))
    with pytest.raises(ImageTooLargeError, match="bytes"):
        load_image(path.read_bytes(), ImageLimits(max_bytes=10))


# ---- sources and sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (10, 10), (7, 3)])
def test_small_images_round_trip(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    pixels = _noise_rgb(height, width, seed=width * 100 + height)
    path = _save(Image.fromarray(pixels), tmp_path / "small.png")
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (width, height)
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_bytes_stream_and_path_give_the_same_pixels(tmp_path: Path) -> None:
    pixels = _noise_rgb(12, 9)
    path = _save(Image.fromarray(pixels), tmp_path / "img.png")
    with path.open("rb") as stream:
        from_stream = load_image(stream)
    for image in (load_image(str(path)), load_image(path.read_bytes()), from_stream):
        np.testing.assert_array_equal(np.asarray(image), pixels)


@pytest.mark.parametrize("fmt,ext", [("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_other_lossless_formats(tmp_path: Path, fmt: str, ext: str) -> None:
    pixels = _noise_rgb(8, 6)
    params = {"lossless": True} if fmt == "WEBP" else {}
    path = _save(Image.fromarray(pixels), tmp_path / f"img.{ext}", format=fmt, **params)
    loaded = read_image(path)
    assert loaded.format == fmt
    np.testing.assert_array_equal(np.asarray(loaded.image), pixels)


# ---- modes ---------------------------------------------------------------------------------------------


def test_greyscale_is_kept(tmp_path: Path) -> None:
    pixels = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    image = load_image(_save(Image.fromarray(pixels, mode="L"), tmp_path / "grey.png"))
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_rgba_png_keeps_alpha(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[..., 3] = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    image = load_image(_save(Image.fromarray(pixels, mode="RGBA"), tmp_path / "rgba.png"))
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_sixteen_bit_png_is_scaled_by_its_range(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "grey16.png")
    loaded = read_image(path)
    assert loaded.source_mode.startswith("I")
    assert loaded.image.mode == "L"
    np.testing.assert_array_equal(np.asarray(loaded.image), [[0, 0, 1, 128, 255]])


def test_sixteen_bit_values_in_mode_i_are_scaled_as_16_bit(tmp_path: Path) -> None:
    values = np.array([[0, 4096, 32768, 65535]], dtype=np.int32)
    path = _save(Image.fromarray(values, mode="I"), tmp_path / "grey16.tif")
    loaded = read_image(path)
    assert loaded.source_mode == "I"  # 32-bit integer pixels holding 16-bit values
    np.testing.assert_array_equal(np.asarray(loaded.image), [[0, 16, 128, 255]])


def test_big_endian_16_bit() -> None:
    values = np.array([[0, 32768, 65535]], dtype=">u2")
    image = normalise_mode(Image.frombytes("I;16B", (3, 1), values.tobytes()))
    np.testing.assert_array_equal(np.asarray(image), [[0, 128, 255]])


def test_int32_outside_16_bit_range_uses_the_int32_range() -> None:
    values = np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32)
    image = normalise_mode(Image.fromarray(values, mode="I"))
    np.testing.assert_array_equal(np.asarray(image), [[0, 128, 255]])


def test_float_images() -> None:
    unit = normalise_mode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F"))
    np.testing.assert_array_equal(np.asarray(unit), [[0, 128, 255]])
    wide = normalise_mode(Image.fromarray(np.array([[-2.0, 0.0, 2.0, np.nan]], dtype=np.float32), mode="F"))
    np.testing.assert_array_equal(np.asarray(wide), [[0, 128, 255, 0]])


def _palette_image() -> Image.Image:
    image = Image.new("P", (3, 2))
    image.putpalette([200, 10, 30, 5, 100, 250, 0, 255, 0] + [0, 0, 0] * 253)
    image.putdata([0, 1, 2, 2, 1, 0])
    return image


def test_palette_png_goes_through_the_palette(tmp_path: Path) -> None:
    loaded = read_image(_save(_palette_image(), tmp_path / "palette.png"))
    assert loaded.source_mode == "P"
    assert loaded.image.mode == "RGB"
    expected = [[(200, 10, 30), (5, 100, 250), (0, 255, 0)], [(0, 255, 0), (5, 100, 250), (200, 10, 30)]]
    np.testing.assert_array_equal(np.asarray(loaded.image), expected)


def test_palette_png_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    image = load_image(_save(_palette_image(), tmp_path / "palette_t.png", transparency=1))
    assert image.mode == "RGBA"
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[0, 0], (200, 10, 30, 255))
    assert pixels[0, 1, 3] == 0  # index 1 is the transparent one
    np.testing.assert_array_equal(pixels[0, 2], (0, 255, 0, 255))


def test_gif_first_frame_through_palette(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), RED), Image.new("RGB", (4, 4), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image = load_image(path)
    assert image.mode in ("RGB", "RGBA")
    np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[0, 0], RED)


def test_bilevel_becomes_l(tmp_path: Path) -> None:
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    loaded = load_image(_save(image, tmp_path / "bw.png"))
    assert loaded.mode == "L"
    np.testing.assert_array_equal(np.asarray(loaded), [[0, 255]])


def test_la_becomes_rgba(tmp_path: Path) -> None:
    pixels = np.array([[[10, 255], [200, 0]]], dtype=np.uint8)
    image = load_image(_save(Image.fromarray(pixels, mode="LA"), tmp_path / "la.png"))
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(image)[0, 0], (10, 10, 10, 255))
    assert np.asarray(image)[0, 1, 3] == 0


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    loaded = read_image(_save(cmyk, tmp_path / "cmyk.jpg", quality=95))
    assert loaded.source_mode == "CMYK"
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (16, 8)
    np.testing.assert_allclose(np.asarray(loaded.image)[4, 8], RED, atol=8)


def test_ycbcr_becomes_rgb() -> None:
    image = normalise_mode(Image.new("RGB", (2, 2), BLUE).convert("YCbCr"))
    assert image.mode == "RGB"
    np.testing.assert_allclose(np.asarray(image)[0, 0], BLUE, atol=3)


# ---- EXIF orientation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "orientation,corner",
    [
        (6, "top-right"),  # displayed = stored rotated 90 degrees clockwise
        (8, "bottom-left"),  # displayed = stored rotated 90 degrees counter-clockwise
        (3, "bottom-right"),  # rotated 180 degrees
        (1, "top-left"),
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, corner: str) -> None:
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # 64 wide, 32 high
    stored[:16, :16] = RED  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(stored), tmp_path / f"exif{orientation}.jpg", exif=exif, quality=95)

    loaded = read_image(path)
    assert loaded.stored_size == (32, 64)
    height, width = (32, 64) if orientation in (1, 3) else (64, 32)
    assert loaded.original_size == (height, width)
    assert loaded.image.size == (width, height)
    pixels = np.asarray(loaded.image).astype(int)
    corners = {
        "top-left": pixels[8, 8],
        "top-right": pixels[8, width - 8],
        "bottom-left": pixels[height - 8, 8],
        "bottom-right": pixels[height - 8, width - 8],
    }
    for name, value in corners.items():
        if name == corner:
            np.testing.assert_allclose(value, RED, atol=12)
        else:
            assert value.max() < 20, (name, value)
    # The orientation tag is consumed: transposing again (as a caller might) changes nothing.
    assert ImageOps.exif_transpose(loaded.image).size == loaded.image.size
