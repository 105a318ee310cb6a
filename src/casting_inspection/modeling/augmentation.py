"""Training augmentation: the line changes a part may meet (placement, exposure, focus), drawn at random."""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torchvision.transforms import v2

from casting_inspection.data.background import background_level


class RandomRot90(nn.Module):
    """A random multiple of 90 degrees: exact (no interpolation) for a part seen from the top."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.rot90(image, int(torch.randint(4, ())), dims=(-2, -1))


class RandomPlacement(v2.RandomAffine):
    """RandomAffine whose uncovered corners take each image's own background level, as on the line (not black)."""

    def transform(self, inpt, params):
        level = torch.from_numpy(background_level(inpt.detach().cpu().numpy())).to(inpt.device)
        moved = self._call_kernel(
            v2.functional.affine, inpt - level, **params, interpolation=self.interpolation, fill=0.0, center=self.center
        )
        return moved + level


def build_augmentation(
    flip: bool, rotate90: bool, degrees: float, translate: float, scale: float, brightness: float, contrast: float, blur: float
) -> nn.Module:
    """The train.augment settings as one torchvision v2 pipeline (identity when every one is off)."""
    steps: list[nn.Module] = []
    if flip:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if rotate90:
        steps.append(RandomRot90())
    if degrees or translate or scale:
        steps.append(
            RandomPlacement(
                degrees=degrees,
                translate=(translate, translate),
                scale=(1 - scale, 1 + scale) if scale else None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if brightness or contrast:
        steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
    if blur:
        steps.append(v2.GaussianBlur(kernel_size=2 * math.ceil(2 * blur) + 1, sigma=(0.1, blur)))  # +/- 2 sigma
    return v2.Compose(steps) if steps else v2.Identity()  # every augmentation off: the published recipes' setting


def augmentation_from(settings: dict) -> nn.Module:
    """The one way a pipeline is built from train.augment (as params.yaml or a checkpoint holds it): training,
    the guard's fitting and the tests all get the same pipeline from the same settings."""
    names = inspect.signature(build_augmentation).parameters
    return build_augmentation(**{name: settings[name] for name in names})


def augment_batch(augment: nn.Module, images: torch.Tensor, group: int) -> torch.Tensor:
    """Float images (N, C, H, W); each group of `group` images shares one random draw.

    torchvision applies one draw to a whole batch tensor, and a draw per image costs more than the
    network's own step on two cores; small groups keep most of the variety at a fraction of the cost.
    """
    return torch.cat([augment(chunk) for chunk in images.split(group)])


def augmented_copies(images: torch.Tensor, augment: nn.Module, group: int, seed: int) -> torch.Tensor:
    """One seeded draw of the augmentation per uint8 image, back to uint8 (what the not-a-part guard is also fitted on)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        moved = augment_batch(augment, images.float().div(255), group).clamp(0, 1)
    return moved.mul(255).round().to(torch.uint8)
