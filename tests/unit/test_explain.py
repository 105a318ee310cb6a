"""Grad-CAM heatmaps come from captum on the real network; the part is found in each image, not assumed."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from casting_inspection.evaluation.explain import evidence_on_part, gradcam, part_mask
from casting_inspection.modeling.networks import CnnConfig, InspectionNet, ModelConfig
from helpers import part_image


def disc_photo(centre: tuple[float, float], radius: float, size: int = 128, seed: int = 0) -> np.ndarray:
    """A rim as grey as the table around a dark hub, as in the Kaggle photos, with an outline and a brushed surface."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.normal(190, 4, (size, size)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    x, y = centre
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=185, outline=60, width=2)
    for k in range(4, int(radius) - 2, 4):  # machining rings
        draw.ellipse([x - k, y - k, x + k, y + k], outline=int(160 + 20 * (k % 8 == 0)))
    draw.ellipse([x - radius / 2, y - radius / 2, x + radius / 2, y + radius / 2], fill=40)
    return np.asarray(image)


def true_disc(centre, radius, size=128) -> np.ndarray:
    yy, xx = np.indices((size, size))
    return np.hypot(yy - centre[1], xx - centre[0]) <= radius


def test_part_mask_finds_the_disc_wherever_it_sits():
    for centre, radius in [((64, 64), 45), ((50, 70), 38), ((80, 60), 30)]:
        mask, truth = part_mask(disc_photo(centre, radius)), true_disc(centre, radius)
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.9, (centre, radius, iou)


def test_part_mask_of_a_blank_frame_is_empty():
    assert not part_mask(np.full((64, 64), 200, np.uint8)).any()


def test_evidence_share_is_the_heatmap_mass_inside_the_mask():
    heat = np.zeros((2, 4, 4))
    heat[0, :2] = 1.0  # all on the top half
    heat[1, :, :] = 1.0  # spread evenly
    mask = np.zeros((2, 4, 4), bool)
    mask[:, :2] = True
    share = evidence_on_part(heat, mask)
    assert share[0] == 1.0 and share[1] == 0.5
    assert np.isnan(evidence_on_part(np.zeros((1, 4, 4)), mask[:1]))[0]


def test_gradcam_gives_one_normalised_map_per_image_at_input_size():
    torch.manual_seed(0)
    cnn = {"widths": [4, 8], "convs_per_block": 1, "stem_stride": 2, "stem_pool": False, "dropout": 0.0, "pooling": "avgmax"}
    cnn["activation"] = "relu"
    model = InspectionNet(ModelConfig("cnn", 1, 32, "per_image", [0.5], [0.25], CnnConfig(**cnn), [])).eval()
    images = torch.from_numpy(np.stack([np.asarray(part_image(k % 2 == 0, k, size=32))[None] for k in range(5)]))
    heat = gradcam(model, images, np.array([1, 0, 1, 0, 1]), batch_size=2)
    assert heat.shape == (5, 32, 32) and heat.min() >= 0 and heat.max() <= 1
    assert (heat.reshape(5, -1).max(axis=1) > 0).any()
    assert all(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))  # the caller's model is left as it was
