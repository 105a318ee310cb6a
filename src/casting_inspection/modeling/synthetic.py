"""Flaws of no particular form, drawn on good photos with their masks: what a model of good parts learns to point at.

Each flaw comes from generic families (spots, strokes, irregular patches; darker, brighter, a flat smear or a piece
of the part's own surface from elsewhere), anywhere on the part, at any size from a pore to a long scratch. A
network that must find them, and nothing on the intact surface around them, learns what an intact surface looks
like. The families are generic on purpose: the painted kinds that judge the model (`evaluation/painted.py`) are
never drawn here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FAMILIES = ("spots", "stroke", "patch")


@dataclass(frozen=True)
class FlawSettings:
    """How often and how strongly flaws are drawn (sizes in pixels of the network's input)."""

    share: float  # share of the photos that get a flaw
    contrast: tuple[float, float]  # how far the flaw moves the surface toward its fill
    size: tuple[float, float]  # the flaw's extent: a pore's diameter up to a scratch's length
    radius: float  # flaws land within this fraction of the side from the frame's centre (the part)


def _rand(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _segments_distance(rows, cols, points: torch.Tensor) -> torch.Tensor:
    """Each pixel's distance to the polyline through `points` (K, 2) as (row, col)."""
    a, b = points[:-1], points[1:]
    d = b - a
    length2 = (d * d).sum(1).clamp_min(1e-6)
    p = torch.stack([rows, cols], -1).reshape(-1, 1, 2)
    t = (((p - a) * d).sum(-1) / length2).clamp(0, 1)
    nearest = a + t[..., None] * d
    return (p - nearest).norm(dim=-1).min(dim=1).values.reshape(rows.shape)


def _spots(rows, cols, centre, size: float, g) -> torch.Tensor:
    """One to three round or oval pits close together."""
    mask = torch.zeros_like(rows)
    for _ in range(1 + int(torch.randint(3, (), generator=g))):
        r = max(0.5, _rand(g, 0.25, 0.5) * size)
        cy, cx = centre[0] + _rand(g, -1, 1) * size * 0.6, centre[1] + _rand(g, -1, 1) * size * 0.6
        angle, aspect = _rand(g, 0, math.pi), _rand(g, 0.4, 1.0)
        u = (rows - cy) * math.cos(angle) + (cols - cx) * math.sin(angle)
        v = -(rows - cy) * math.sin(angle) + (cols - cx) * math.cos(angle)
        distance = torch.sqrt(u * u + (v / aspect) ** 2)
        mask = torch.maximum(mask, (r + 0.5 - distance).clamp(0, 1))
        size *= 0.7
    return mask


def _stroke(rows, cols, centre, size: float, g) -> torch.Tensor:
    """A line that runs straight or meanders: a scratch, a crack, a cold shut."""
    length, wiggle = _rand(g, 1.5, 4.0) * size, _rand(g, 0.0, 0.8)
    steps = max(2, int(length / 2))
    angle, point, points = _rand(g, 0, 2 * math.pi), torch.tensor(centre, dtype=torch.float32), []
    for _ in range(steps + 1):
        points.append(point.clone())
        angle += float(torch.randn((), generator=g)) * wiggle
        point = point + torch.tensor([math.sin(angle), math.cos(angle)]) * (length / steps)
    width = _rand(g, 0.5, 1.6)
    return (width / 2 + 0.5 - _segments_distance(rows, cols, torch.stack(points))).clamp(0, 1)


def _patch(rows, cols, centre, size: float, g) -> torch.Tensor:
    """An irregular region: smooth noise above a level, inside a window of about `size` (an inclusion, a stain)."""
    side = rows.shape[0]
    extent = max(2.0, size)
    noise = torch.nn.functional.interpolate(
        torch.rand((1, 1, 5, 5), generator=g), size=(side, side), mode="bicubic", align_corners=True
    )[0, 0]
    y = ((rows - centre[0]) / extent + 0.5).clamp(0, 1) * (side - 1)  # the 5 x 5 noise stretched over the window
    x = ((cols - centre[1]) / extent + 0.5).clamp(0, 1) * (side - 1)
    inside = (((rows - centre[0]) / extent) ** 2 + ((cols - centre[1]) / extent) ** 2) <= 0.25
    return ((noise[y.long(), x.long()] - _rand(g, 0.45, 0.65)) * 8).clamp(0, 1) * inside


def flaw_mask(side: int, settings: FlawSettings, g: torch.Generator) -> torch.Tensor:
    """A soft mask in [0, 1] of one flaw of a random family, somewhere on the part."""
    grid = torch.arange(side, dtype=torch.float32)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    r, a = settings.radius * side * math.sqrt(_rand(g)), _rand(g, 0, 2 * math.pi)
    centre = ((side - 1) / 2 + r * math.sin(a), (side - 1) / 2 + r * math.cos(a))
    size = math.exp(_rand(g, math.log(settings.size[0]), math.log(settings.size[1])))  # small flaws as often as large
    family = FAMILIES[int(torch.randint(len(FAMILIES), (), generator=g))]
    return {"spots": _spots, "stroke": _stroke, "patch": _patch}[family](rows, cols, centre, size, g)


def _fill(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What the flaw shows: dark, bright, the mean surface level, or the part's own surface from elsewhere."""
    choice = int(torch.randint(4, (), generator=g))
    if choice == 0:
        return torch.zeros_like(image)
    if choice == 1:
        return torch.ones_like(image)
    if choice == 2:
        return torch.full_like(image, float(image.mean()))
    shift = [int(torch.randint(-20, 21, (), generator=g)) for _ in range(2)]
    return torch.roll(image, shifts=shift, dims=(-2, -1))


def draw_flaws(images: torch.Tensor, settings: FlawSettings, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images (N, C, H, W) in [0, 1]: a share of them get one flaw each. Returns the new images and each one's
    flaw mask (N, H, W), in [0, 1] scaled by how far the flaw moved the surface (0 where nothing changed)."""
    images, masks = images.clone(), torch.zeros(images.shape[0], *images.shape[-2:])
    for i in range(len(images)):
        if _rand(g) >= settings.share:
            continue
        mask = flaw_mask(images.shape[-1], settings, g)
        strength = _rand(g, *settings.contrast)
        before = images[i].clone()
        images[i] = images[i] + strength * mask.to(images.device) * (_fill(images[i], g) - images[i])
        masks[i] = (images[i] - before).abs().amax(0).cpu()  # what the flaw changed, not where it was drawn
    return images, masks
