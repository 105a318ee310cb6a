"""The table a part lies on: the level of the frame's edge, used wherever a moved part uncovers background."""

from __future__ import annotations

import numpy as np

BORDER = 4  # pixels of frame edge that show the table the part lies on


def background_level(image: np.ndarray) -> np.ndarray:
    """Lower median of the frame's edge per image and channel, shape (..., C, 1, 1).

    The lower median is always one of the edge's own values (as `torch.median` gives), so the fill is exact
    for uint8 and float images alike.
    """
    image = np.asarray(image)
    edge = np.concatenate(
        [
            image[..., :BORDER, :].reshape(*image.shape[:-2], -1),
            image[..., -BORDER:, :].reshape(*image.shape[:-2], -1),
            image[..., :, :BORDER].reshape(*image.shape[:-2], -1),
            image[..., :, -BORDER:].reshape(*image.shape[:-2], -1),
        ],
        axis=-1,
    )
    middle = (edge.shape[-1] - 1) // 2
    return np.partition(edge, middle, axis=-1)[..., middle][..., None, None]
