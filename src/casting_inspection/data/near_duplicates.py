"""Near copies across splits, by perceptual hash (imagehash's pHash).

The Kaggle images are augmented copies (shifted, turned, re-lit) of fewer raw shots, so a test image
can have a train image of the very same part that is not byte-identical. What pHash finds is a lower
bound on that leak: copies that were turned a lot hash far apart (see the README).
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image


def perceptual_hashes(arrays: list[np.ndarray], hash_size: int) -> np.ndarray:
    """Packed pHash bits (N, hash_size**2 / 8) of uint8 images (C, H, W), taken in grey."""

    def one(array: np.ndarray) -> np.ndarray:
        image = Image.fromarray(array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)).convert("L")
        return np.packbits(imagehash.phash(image, hash_size=hash_size).hash.ravel())

    return np.stack([one(array) for array in arrays]) if arrays else np.zeros((0, hash_size * hash_size // 8), np.uint8)


def distances(queries: np.ndarray, references: np.ndarray, chunk: int = 128) -> np.ndarray:
    """Hamming distance between every query hash and every reference hash, (Q, R)."""
    rows = [
        np.bitwise_count(queries[i : i + chunk, None, :] ^ references[None, :, :]).sum(axis=-1, dtype=np.int32)
        for i in range(0, len(queries), chunk)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, len(references)), np.int32)
