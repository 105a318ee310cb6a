"""Where the network looked: Grad-CAM heatmaps (captum) and how much of that evidence lies on the part itself.

A decision whose evidence lies on the table around the impeller is right for the wrong reason (or
wrong for it): it is flagged, whatever its probability.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from scipy import ndimage
from torch import nn

from casting_inspection.modeling.networks import InspectionNet
from casting_inspection.modeling.predict import to_input


def part_mask(image: np.ndarray, sectors: int = 16) -> np.ndarray:
    """The impeller as a disc found in the image (2-D uint8): centred on its dark hub, out to its outer edge.

    The rim's grey is the table's grey, so brightness alone finds only the hub; the part's outline and
    machined surface have edges the plain table lacks. Per angular sector, the outer edge is the last
    radius whose ring is busier than the frame's border; the median over sectors ignores a cable or a
    speck on the table.
    """
    x = ndimage.gaussian_filter(image.astype(np.float64), 1.0)
    gradient = np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1))
    dark = ndimage.binary_opening(x <= np.percentile(x, 10), iterations=2)
    labels, count = ndimage.label(dark)
    if count == 0 or np.ptp(x) < 10:  # a blank frame: no part to find
        return np.zeros(image.shape, dtype=bool)
    hub = labels == 1 + int(np.argmax(ndimage.sum(dark, labels, range(1, count + 1))))
    cy, cx = ndimage.center_of_mass(hub)
    yy, xx = np.indices(image.shape)
    distance = np.hypot(yy - cy, xx - cx)
    ring = distance.astype(int)
    sector = ((np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi) * sectors).astype(int) % sectors
    rings = ring.max() + 1
    with np.errstate(invalid="ignore", divide="ignore"):  # rings a sector never reaches inside the frame
        busy = ndimage.mean(gradient, sector * rings + ring, np.arange(sectors * rings)).reshape(sectors, rings)
    border = np.concatenate([gradient[2, 2:-2], gradient[-3, 2:-2], gradient[2:-2, 2], gradient[2:-2, -3]])
    above = np.nan_to_num(busy, nan=0.0) > 2 * np.median(border) + 1.0
    edges = [np.flatnonzero(row).max() for row in above if row.any()]
    # the smoothing and the Sobel footprint carry an edge about 2 px outwards
    radius = float(np.median(edges)) - 2 if edges else distance[hub].max()
    return distance <= max(radius, distance[hub].max())


def last_conv_layer(model: InspectionNet) -> nn.Module | None:
    """Grad-CAM's usual layer: the last convolutional block's output, the deepest one that still has a map.
    None for the fully connected baselines, which have no map to explain with, and without a classifier
    (train.classifier: false: the model of good parts' own map shows where)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return None
    if hasattr(backbone, "cam_layer"):  # EfficientNet-Lite0
        return backbone.cam_layer
    if hasattr(backbone, "layer4"):  # torchvision ResNet
        return backbone.layer4
    if hasattr(backbone, "features"):  # SmallVGG: [..., conv, bn, act, maxpool]; SeedVGG: [..., conv, relu, pool, pool]
        convs = [m for m in backbone.features if isinstance(m, nn.Conv2d)]
        position = list(backbone.features).index(convs[-1])
        return backbone.features[position + (2 if isinstance(backbone.features[position + 1], nn.BatchNorm2d) else 1)]
    return None


def gradcam(model: InspectionNet, images: torch.Tensor, predicted: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Heatmaps in [0, 1] at input resolution (N, H, W) for uint8 images (N, C, H, W), for the decision taken:
    evidence for "defective" where the part was rejected, for "ok" where it was accepted. All zero for a
    network without convolutions (nothing to map)."""
    if last_conv_layer(model) is None:
        return np.zeros((len(images), *images.shape[-2:]))
    model = copy.deepcopy(model).float().eval()
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False  # captum's hooks cannot follow an in-place ReLU
    signs = torch.from_numpy(np.where(predicted.astype(bool), 1.0, -1.0)).float()
    maps = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size]).requires_grad_(True)
        sign = signs[start : start + batch_size]
        explainer = LayerGradCam(lambda inputs, sign=sign: model(inputs) * sign, last_conv_layer(model))
        attribution = explainer.attribute(x, relu_attributions=True)
        up = LayerAttribution.interpolate(attribution, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        maps.append(up.detach()[:, 0].clamp(min=0))
    heat = torch.cat(maps).numpy()
    peak = heat.reshape(len(heat), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0)


def evidence_on_part(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each heatmap's mass inside its part mask; NaN where the heatmap is empty."""
    total = heatmaps.reshape(len(heatmaps), -1).sum(axis=1)
    inside = (heatmaps * masks).reshape(len(heatmaps), -1).sum(axis=1)
    return np.divide(inside, total, out=np.full(len(total), np.nan), where=total > 0)
