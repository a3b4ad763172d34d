"""Decoding: every promised format and mode becomes upright RGB; bad bytes become clear 4xx errors."""

import io

import numpy as np
import pytest
from PIL import Image

from objdetect.decode import decode_image
from objdetect.errors import RequestError
from objdetect.synthetic import encode

pytestmark = pytest.mark.unit

LIMIT = 40_000_000
RED = (220, 30, 30)


def decoded_colour(data: bytes) -> tuple[int, ...]:
    image = decode_image(data, LIMIT)
    return tuple(int(v) for v in image.pixels[:, image.pixels.shape[1] // 2, image.pixels.shape[2] // 2])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_promised_format_decodes_to_rgb(fmt):
    image = decode_image(encode(Image.new("RGB", (64, 48), RED), fmt), LIMIT)
    assert (image.width, image.height) == (64, 48)
    assert image.pixels.shape == (3, 48, 64) and image.pixels.dtype.is_floating_point is False
    assert np.allclose(image.pixels[:, 24, 32].tolist(), RED, atol=12)


def test_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert np.allclose(decoded_colour(buffer.getvalue()), RED, atol=12)


@pytest.mark.parametrize("mode, value, expected", [
    ("L", 100, (100, 100, 100)),
    ("P", 0, RED),  # palette entry 0 is red
    ("I;16", 65535, (255, 255, 255)),
    ("I;16", 32896, (128, 128, 128)),
])
def test_grayscale_palette_and_16_bit_become_rgb(mode, value, expected):
    image = Image.new(mode, (16, 16), value)
    if mode == "P":
        image.putpalette(RED)
    assert decoded_colour(encode(image, "PNG")) == expected


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("RGB", (32, 32), RED).convert("CMYK")
    assert np.allclose(decoded_colour(encode(cmyk, "JPEG", quality=95)), RED, atol=20)


def test_transparent_pixels_are_composited_on_white():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    assert decoded_colour(encode(rgba, "PNG")) == (255, 255, 255)
    half = Image.new("RGBA", (16, 16), (0, 0, 0, 128))
    assert decoded_colour(encode(half, "PNG")) == (127, 127, 127)


def test_exif_orientation_is_applied_and_sizes_are_upright():
    # Stored 40 wide and 20 high, left half red; orientation 6 means "rotate 90 degrees clockwise to view".
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), LIMIT)
    assert (image.width, image.height) == (20, 40)
    assert image.pixels.shape == (3, 40, 20)
    top = image.pixels[:, 5, 10].tolist()  # the stored left (red) half is on top once upright
    assert top[0] > 150 and top[2] < 100


UPRIGHT_TO_STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                     4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
                     7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_every_orientation_is_applied_once_in_every_format(fmt, orientation):
    """Upright 64x40 with a red top-left corner, stored as the orientation tag says a camera would
    store it: decoded, it is upright again (pixels and the reported size)."""
    upright = Image.new("RGB", (64, 40), (0, 0, 255))
    upright.paste(RED, (0, 0, 16, 10))
    stored = upright.transpose(UPRIGHT_TO_STORED[orientation]) if orientation > 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = io.BytesIO()
    if fmt == "TIFF":
        stored.save(data, fmt, tiffinfo={0x0112: orientation})
    else:
        stored.save(data, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    for used_size in (None, lambda w, h: (w, h)):
        image = decode_image(data.getvalue(), LIMIT, used_size)
        assert (image.width, image.height) == (64, 40)
        assert image.pixels.shape == (3, 40, 64)
        corner, far = image.pixels[:, 3, 3].tolist(), image.pixels[:, 36, 60].tolist()
        assert corner[0] > 150 and corner[2] < 100 and far[2] > 150


def progressive_jpeg(size: tuple[int, int], scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has `scans` (libjpeg decodes each)."""
    encoded = encode(Image.new("RGB", size, RED), "JPEG", progressive=True)
    last = encoded.rindex(b"\xff\xda")
    written = encoded.count(b"\xff\xda")
    return encoded[:last] + encoded[last:-2] * (scans - written + 1) + b"\xff\xd9"


def test_a_jpeg_of_many_scans_is_refused_before_decoding():
    bomb = progressive_jpeg((4000, 3000), 40_000)  # about 6 minutes of libjpeg's time if decoded
    error = error_of(bomb)
    assert error.code == "corrupt_image" and "40000 scans" in error.message
    ordinary = decode_image(progressive_jpeg((400, 300), 11), LIMIT)  # what mozjpeg writes at most
    assert ordinary.pixels.shape == (3, 300, 400)


def test_jpeg_draft_decodes_fewer_pixels_but_reports_the_original_size():
    photo = Image.new("RGB", (4000, 3000), RED)
    image = decode_image(encode(photo, "JPEG"), LIMIT, used_size=lambda w, h: (w * 600 // h, 600))
    assert (image.width, image.height) == (4000, 3000)
    assert image.pixels.shape == (3, 750, 1000)  # 1/4 scale: the smallest that keeps 600 px
    assert image.scale == (4.0, 4.0)
    assert np.allclose(image.pixels[:, 300, 500].tolist(), RED, atol=12)


def test_a_jpeg_the_model_uses_whole_is_decoded_whole():
    image = decode_image(encode(Image.new("RGB", (640, 480), RED), "JPEG"), LIMIT, used_size=lambda w, h: (w, h))
    assert image.pixels.shape == (3, 480, 640)


def test_png_is_never_drafted():
    image = decode_image(encode(Image.new("RGB", (800, 600), RED), "PNG"), LIMIT, used_size=lambda w, h: (80, 60))
    assert image.pixels.shape == (3, 600, 800) and image.scale == (1.0, 1.0)


def error_of(data: bytes, limit: int = LIMIT) -> RequestError:
    with pytest.raises(RequestError) as caught:
        decode_image(data, limit)
    return caught.value


def test_a_pixel_bomb_is_refused_from_its_header(png_header):
    # 30000 x 30000 claimed, a few bytes of data: decoding it would fail as corrupt, so a
    # "too large" answer shows the refusal came from the header, before any decoding.
    error = error_of(png_header(30000, 30000))
    assert (error.code, error.status) == ("image_too_large", 413)
    assert "30000x30000" in error.message and "40.0 megapixels" in error.message


def test_the_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert error_of(data, limit=9_999).code == "image_too_large"
    assert decode_image(data, 10_000).width == 100


@pytest.mark.parametrize("data, code", [
    (b"", "empty_body"),
    (b"hello, I am text", "not_an_image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not_an_image"),  # Pillow reads EPS; we do not
])
def test_bad_bytes_get_a_named_error(data, code):
    assert error_of(data).code == code


@pytest.mark.parametrize("width, height, code", [(0, 10, "not_an_image"), (10, 0, "not_an_image"),
                                                  (64, 64, "corrupt_image")])
def test_a_png_header_without_valid_pixels_gets_a_named_error(png_header, width, height, code):
    assert error_of(png_header(width, height)).code == code


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_images_are_corrupt(fmt):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    assert error_of(data[: len(data) // 2]).code == "corrupt_image"
