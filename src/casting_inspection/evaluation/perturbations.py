"""Re-take a photo the way a production line might: aged lamp, drifting exposure, a part off centre, soft focus, re-compression.

Each change works on the camera's own pixels, before the resize in `images.preprocess`, so that a
shift of 20 px or a blur of sigma 1.6 means what it says on the original photo. The same border
rule fills what a rotation or shift uncovers, in these renderings and in training augmentation.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from casting_inspection.data.background import background_level
from casting_inspection.evaluation.retaken_set import CHANGES


def _fill(image: Image.Image) -> list[int]:
    return background_level(F.pil_to_tensor(image).numpy()).flatten().tolist()


def perturb(image: Image.Image, change: str, strength: float, rng: np.random.Generator) -> Image.Image:
    """`change` at `strength`, with the direction drawn from `rng`.

    brightness/contrast: factor 1 +/- strength; rotation: +/- strength degrees; shift: +/- strength
    pixels on each axis; blur: Gaussian sigma = strength; jpeg: re-encode at quality = strength.
    """
    sign = float(rng.choice((-1, 1)))
    if change == "brightness":
        return F.adjust_brightness(image, 1 + sign * strength)
    if change == "contrast":
        return F.adjust_contrast(image, 1 + sign * strength)
    if change == "rotation":
        fill = _fill(image)
        return F.rotate(image, sign * strength, interpolation=InterpolationMode.BILINEAR, fill=fill)
    if change == "shift":
        fill = _fill(image)
        dx, dy = (int(round(strength * s)) for s in (sign, rng.choice((-1, 1))))
        return F.affine(
            image, angle=0.0, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR, fill=fill
        )
    if change == "blur":
        # Pillow's radius is the standard deviation; its box-blur approximation is ~50x faster than a convolution here
        return image.filter(ImageFilter.GaussianBlur(radius=strength))
    if change == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(strength))
        recompressed = Image.open(buffer)
        recompressed.load()
        return recompressed
    raise ValueError(f"unknown change {change!r}; expected one of {CHANGES}")


def rng_for(seed: int, change: str, strength: float, path: str) -> np.random.Generator:
    """One generator per (image, change, strength): a rendering does not depend on order or worker count."""
    return np.random.default_rng([seed, zlib.crc32(f"{change}:{strength!r}:{path}".encode())])
