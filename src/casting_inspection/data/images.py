"""Decode, check and resize one image: the single preprocessing path for training and prediction."""

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


def load_image(data: bytes, params: ImageSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the image as a uint8 array of shape (C, size, size) and its original (width, height)."""
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise BadImage("not an image (unrecognised file format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage(f"absurd size: over prepare.max_pixels={params.max_pixels} pixels (decompression bomb?)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadImage(f"unreadable image header ({exc})") from None
    width, height = image.size
    if width * height > params.max_pixels:
        raise BadImage(f"absurd size: {width}x{height} is over prepare.max_pixels={params.max_pixels}")
    if min(width, height) < params.min_side:
        raise BadImage(f"too small: {width}x{height} is under prepare.min_side={params.min_side}")
    if image.mode not in params.allowed_modes:
        raise BadImage(f"unsupported colour mode {image.mode} (prepare.allowed_modes: {', '.join(params.allowed_modes)})")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"truncated or corrupt image data ({exc})") from None
    return preprocess(image, params.image_size, params.color_mode), (width, height)


def preprocess(image: Image.Image, image_size: int, color_mode: str) -> np.ndarray:
    """Colour mode and resize only; standardisation is inside the network."""
    resized = image.convert(color_mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)
