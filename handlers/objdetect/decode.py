"""Decode: untrusted image bytes -> an upright RGB uint8 tensor, refusing what should not be decoded.

Pillow reads every format the API promises (JPEG, PNG, WebP, BMP, TIFF, GIF) and the EXIF
orientation. Only those formats are opened: Pillow's other plugins (EPS through Ghostscript,
among others) are attack surface nobody asked for. The pixel limit is checked from the header,
before any pixel is decoded, so a 30000x30000 PNG bomb costs a few bytes of parsing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import RequestError

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# A progressive JPEG is decoded scan by scan, each pass over the whole image (about 9 ms per
# 12 megapixels here): libjpeg and mozjpeg write 8-11 scans, while 40,000 scans in 1.5 MB held a
# worker for a minute. Past this many the file is refused before any decoding, so decoding stays
# within about three times a normal decode of the same pixels.
MAX_JPEG_SCANS = 32
_START_OF_SCAN = b"\xff\xda"  # never inside entropy-coded data, where 0xFF is always followed by 0x00
# Transparent pixels are composited onto white, as a browser on a white page shows them.
_MATTE = (255, 255, 255)
# decode_image enforces its own, configurable limit from the header, with a message that says
# so; Pillow's fixed one (89 megapixels) would refuse first with another message.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    pixels: torch.Tensor  # (3, h, w) uint8 RGB, upright; smaller than the original when drafted
    width: int  # the upright original's size, which boxes refer to
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per decoded pixel, along x and y."""
        return self.width / self.pixels.shape[2], self.height / self.pixels.shape[1]


def decode_image(data: bytes, max_pixels: int,
                 used_size: Callable[[int, int], tuple[int, int]] | None = None) -> DecodedImage:
    """Decode `data`. With `used_size` (width, height -> the size the pixels will be used at), a JPEG
    is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT-domain downscaling, Pillow's draft mode)
    when that still gives at least that size: a phone photo's 12 megapixels are never decoded for
    a model that looks at 0.3 of them."""
    if not data:
        raise RequestError("empty_body", "the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise RequestError("not_an_image", f"the body is not a readable image: not {', '.join(FORMATS)}, "
                           "or a header that cannot be valid (a zero width or height, say)") from None
    except Exception as error:  # any parser failure on untrusted bytes is the input's fault
        raise RequestError("corrupt_image", f"the image header cannot be read: {error}") from None

    with image:
        width, height = image.size  # as Pillow presents it: a TIFF is already upright here, a JPEG is not
        if width <= 0 or height <= 0:
            raise RequestError("empty_image", f"the image has no pixels ({width}x{height})")
        _check_pixels(width, height, max_pixels)
        if image.format == "JPEG":
            _check_scans(data)
        try:
            if used_size is not None and image.format == "JPEG":
                image.draft("RGB", used_size(*image.size))
            stored = image.size  # drafted: smaller by a power of two
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of the pixels when upright
            rgb = _to_rgb(image)
        except Exception as error:
            raise RequestError("corrupt_image", f"the image is truncated or corrupt: {error}") from None
    # The orientation, whoever applied it, turned the pixels a quarter: so did the original's size.
    if (rgb.shape[1], rgb.shape[0]) != stored:
        width, height = height, width
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)  # a view: no copy
    return DecodedImage(pixels, width, height)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any mode -> (h, w, 3) uint8: grayscale, palette, CMYK, alpha and 16-bit images included."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Pillow's own conversion clips 16-bit values at 255 (a white image); scale them instead.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        matte = Image.new("RGBA", rgba.size, _MATTE + (255,))
        return np.array(Image.alpha_composite(matte, rgba).convert("RGB"))
    # np.array, not asarray: Pillow hands out read-only memory, and tensors want it writable.
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise RequestError("image_too_large", f"the image is {width}x{height} ({width * height / 1e6:.1f} "
                           f"megapixels): the limit is {max_pixels / 1e6:.1f} megapixels", status=413)


def _check_scans(data: bytes) -> None:
    scans = data.count(_START_OF_SCAN)  # an upper bound: an EXIF thumbnail's scan counts too
    if scans > MAX_JPEG_SCANS:
        raise RequestError("corrupt_image", f"the JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are decoded "
                           "(encoders write 8-11)")


def decode_jpeg_on_gpu(data: bytes, max_pixels: int, device: torch.device) -> DecodedImage:
    """A JPEG decoded by nvJPEG on `device` (torchvision.io), EXIF orientation applied there.
    The header is still read, and the pixel limit checked, by Pillow first. Raises for anything
    nvJPEG cannot take (CMYK, progressive corner cases); the caller falls back to decode_image."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with Image.open(io.BytesIO(data), formats=("JPEG",)) as header:
        _check_pixels(*header.size, max_pixels)
    _check_scans(data)
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    pixels = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    return DecodedImage(pixels, pixels.shape[2], pixels.shape[1])
