"""A near copy of a train image (re-lit, JPEG'd, nudged) is found by pHash; another part is not."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

from casting_inspection.data.near_duplicates import distances, perceptual_hashes
from helpers import part_image


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"))[None]


def test_a_near_copy_is_close_and_another_part_is_far():
    original = part_image(True, seed=5, size=128)
    buffer = io.BytesIO()
    ImageEnhance.Brightness(original).enhance(1.1).save(buffer, "JPEG", quality=70)
    copy = Image.open(buffer)
    other = part_image(False, seed=77, size=128)
    hashes = perceptual_hashes([as_array(original), as_array(copy), as_array(other)], hash_size=16)
    assert hashes.shape == (3, 32)
    d = distances(hashes[:1], hashes)
    assert d[0, 0] == 0 and d[0, 1] <= 10 < d[0, 2]


def test_distances_count_differing_bits():
    a = np.array([[0b10110000, 0]], np.uint8)
    b = np.array([[0b10000000, 0b11], [0b10110000, 0]], np.uint8)
    assert distances(a, b).tolist() == [[4, 0]]
