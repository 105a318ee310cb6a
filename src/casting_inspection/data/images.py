"""Decode, check and resize one image: the single preprocessing path for training and prediction.

One decoding policy for every consumer: a file is read only if it is small enough and in a format on the
allow-list (what a line camera writes), its pixel count is checked from the header before any pixel is
decoded, and every decoder failure becomes a `BadImage` with a one-line reason. Pillow is never asked to
try other formats, so no external program (Ghostscript for EPS) and no exotic decoder ever sees an input.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class BadImage(Exception):
    """The reason an input file cannot be used, worded for a rejection list."""


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What an input image must be and how it is resized: from `prepare` params, carried by the checkpoint and
    the ONNX metadata, so that every consumer of the model checks and resizes exactly as training did."""

    image_size: int
    color_mode: str
    allowed_modes: list[str]
    min_side: int
    max_pixels: int
    allowed_formats: list[str]
    max_file_bytes: int


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return f"{type(exc).__name__}: {text[:200]}"


def _open(data: bytes, spec: ImageSpec) -> Image.Image:
    """Read the header only, with nothing but the allowed format plugins."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=list(spec.allowed_formats))
        except UnidentifiedImageError:
            raise BadImage(f"not an image in an accepted format ({', '.join(spec.allowed_formats)})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage(f"absurd size: over prepare.max_pixels={spec.max_pixels} pixels (decompression bomb?)") from None
        except Exception as exc:  # a crafted header can make any plugin raise anything
            raise BadImage(f"unreadable image header ({_one_line(exc)})") from None


def load_image(data: bytes, spec: ImageSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the image as a uint8 array of shape (C, size, size) and its original (width, height)."""
    if not data:
        raise BadImage("empty file")
    if len(data) > spec.max_file_bytes:
        raise BadImage(f"file too large: {len(data)} bytes is over prepare.max_file_bytes={spec.max_file_bytes}")
    image = _open(data, spec)
    width, height = image.size
    if width * height > spec.max_pixels:
        raise BadImage(f"absurd size: {width}x{height} is over prepare.max_pixels={spec.max_pixels}")
    if min(width, height) < spec.min_side:
        raise BadImage(f"too small: {width}x{height} is under prepare.min_side={spec.min_side}")
    if image.mode not in spec.allowed_modes:
        raise BadImage(f"unsupported colour mode {image.mode} (prepare.allowed_modes: {', '.join(spec.allowed_modes)})")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image.load()
            return preprocess(image, spec.image_size, spec.color_mode), (width, height)
        except MemoryError:
            raise BadImage("image too large to decode in the memory available") from None
        except Exception as exc:  # libjpeg, zlib and Pillow's own checks each raise their own types
            raise BadImage(f"truncated or corrupt image data ({_one_line(exc)})") from None


def preprocess(image: Image.Image, image_size: int, color_mode: str) -> np.ndarray:
    """Colour mode and resize only; standardisation is inside the network."""
    resized = image.convert(color_mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)
