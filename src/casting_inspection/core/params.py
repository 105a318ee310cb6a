"""A typed, validated view of `params.yaml`: the one source of truth for every setting.

Every field is required, so `params.yaml` shows every value the code uses. Values are read with a
YAML 1.2 loader (ruamel), because `dvc exp run -S train.lr=1e-5` writes `1e-05`, which a YAML 1.1
loader returns as a string.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Literal

from ruamel.yaml import YAML

from casting_inspection.core.errors import InspectionError

PARAMS_FILE = Path("params.yaml")


def _positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _seed(value) -> str | None:  # scikit-learn's and NumPy's legacy generators take 32 bits
    return None if 0 <= value < 2**32 else "must be between 0 and 4294967295 (a 32-bit seed)"


def _fraction(value) -> str | None:
    return None if 0 < value < 1 else "must be between 0 and 1 (exclusive)"


def _positive_list(value) -> str | None:
    return None if value and all(v > 0 for v in value) else "must be a non-empty list of numbers > 0"


def check(rule):
    """Attach a validation rule to a dataclass field."""
    return dataclasses.field(metadata={"check": rule})


@dataclasses.dataclass(frozen=True)
class DownloadParams:
    dataset: str
    timeout_s: float = check(_positive)
    max_total_bytes: int = check(_positive)
    max_entries: int = check(_positive)

    def __post_init__(self):
        if self.dataset.count("/") not in (1, 2) or not all(self.dataset.split("/")):
            raise InspectionError(
                f"params.yaml: download.dataset must look like 'owner/slug' or 'owner/slug/version', got {self.dataset!r}"
            )


@dataclasses.dataclass(frozen=True)
class DriftParams:
    quantiles: list[float] = check(
        lambda v: None if len(v) == 2 and 0 <= v[0] < v[1] <= 1 else "must be [low, high] with 0 <= low < high <= 1"
    )
    alarm_share: float = check(_fraction)


@dataclasses.dataclass(frozen=True)
class NearDuplicateParams:
    hash_size: int = check(lambda v: None if 4 <= v <= 64 else "must be between 4 and 64")
    max_distance: int = check(_non_negative)

    def __post_init__(self):
        bits = self.hash_size**2
        if self.max_distance >= bits:  # every pair of photos would be a near copy
            raise InspectionError(
                f"params.yaml: prepare.near_duplicates.max_distance must be under the hash's {bits} bits "
                f"(hash_size {self.hash_size}), got {self.max_distance}"
            )


@dataclasses.dataclass(frozen=True)
class LineParams:
    test_fraction: float = check(lambda v: None if 0 <= v < 1 else "must be in [0, 1)")


# Pillow's modes of 8 bits a channel, which convert to L or RGB without loss of range (16-bit and float modes such as
# I;16 or F are clipped to 255 on the way: a 16-bit photo would come out nearly white)
EightBitMode = Literal["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"]


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    image_size: int = check(lambda v: None if 16 <= v <= 1024 else "must be between 16 and 1024")
    color_mode: Literal["L", "RGB"]
    allowed_modes: list[EightBitMode] = check(lambda v: None if v else "must list at least one mode")
    min_side: int = check(_positive)
    max_pixels: int = check(_positive)
    allowed_formats: list[Literal["JPEG", "PNG", "BMP"]] = check(lambda v: None if v else "must list at least one format")
    max_file_bytes: int = check(_positive)
    duplicates: Literal["drop", "report"]
    near_duplicates: NearDuplicateParams
    val_fraction: float = check(_fraction)
    seed: int = check(_seed)
    drift: DriftParams
    line: LineParams


@dataclasses.dataclass(frozen=True)
class CnnParams:
    widths: list[int] = check(_positive_list)
    convs_per_block: int = check(_positive)
    stem_stride: int = check(lambda v: None if v in (1, 2) else "must be 1 or 2")
    dropout: float = check(lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    pooling: Literal["avg", "max", "avgmax"]
    activation: Literal["relu", "gelu"]
    stem_pool: bool


@dataclasses.dataclass(frozen=True)
class MlpParams:
    hidden: list[int] = check(_positive_list)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    flip: bool
    rotate90: bool
    degrees: float = check(_non_negative)
    translate: float = check(lambda v: None if 0 <= v < 0.5 else "must be in [0, 0.5)")
    scale: float = check(lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    brightness: float = check(_non_negative)
    contrast: float = check(_non_negative)
    blur: float = check(_non_negative)
    group: int = check(_positive)


@dataclasses.dataclass(frozen=True)
class TrainParams:
    classifier: bool
    model: Literal["cnn", "resnet18", "efficientnet_lite0", "vgg_seed", "mlp", "logreg"]
    weights: Literal["none", "imagenet"]
    freeze: int = check(_non_negative)
    cnn: CnnParams
    mlp: MlpParams
    input_norm: Literal["dataset", "per_image", "imagenet", "symmetric"]
    optimizer: Literal["adamw", "adam", "sgd"]
    lr: float = check(_positive)
    weight_decay: float = check(_non_negative)
    batch_size: int = check(_positive)
    epochs: int = check(_positive)
    schedule: Literal["onecycle", "cosine", "constant", "plateau"]
    patience: int = check(_positive)
    bn_recalibration: int = check(_non_negative)
    augment: AugmentParams
    seed: int = check(_seed)
    device: Literal["auto", "cpu", "cuda"]
    distributed: bool

    def __post_init__(self):
        if self.distributed and not self.classifier:
            raise InspectionError("params.yaml: train.distributed trains a classifier; it needs train.classifier=true")
        if self.weights == "imagenet" and self.model not in ("resnet18", "efficientnet_lite0"):
            raise InspectionError("params.yaml: train.weights=imagenet needs train.model=resnet18 or efficientnet_lite0")
        if self.freeze and self.weights != "imagenet":
            raise InspectionError(
                "params.yaml: train.freeze keeps pretrained stages as they are; it needs train.weights=imagenet"
            )


def _levels(low: float, high: float):
    def rule(value):
        return None if all(low <= v <= high for v in value) else f"must be a list of numbers in [{low:g}, {high:g}]"

    return check(rule)


@dataclasses.dataclass(frozen=True)
class RobustnessParams:
    """Strengths of each line change the test split is re-taken under (see `perturbations.perturb`)."""

    seed: int = check(_seed)
    workers: int = check(_non_negative)
    batch_size: int = check(_positive)
    brightness: list[float] = _levels(0, 0.9)
    contrast: list[float] = _levels(0, 0.9)
    rotation: list[float] = _levels(0, 180)
    shift: list[float] = _levels(0, 150)
    blur: list[float] = _levels(0.1, 10)
    jpeg: list[float] = _levels(1, 95)

    def __post_init__(self):
        if not any((self.brightness, self.contrast, self.rotation, self.shift, self.blur, self.jpeg)):
            raise InspectionError(
                "params.yaml: robustness lists no line change (brightness, contrast, rotation, shift, blur and jpeg are "
                "all empty): give at least one strength"
            )


@dataclasses.dataclass(frozen=True)
class CalibrationParams:
    temperature_scaling: bool
    bins: int = check(_positive)


@dataclasses.dataclass(frozen=True)
class GateParams:
    max_escape_rate_upper95: float = check(lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    max_false_reject_rate_upper95: float = check(lambda v: None if 0 < v <= 1 else "must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class ExplainParams:
    sample_grid: int = check(_positive)
    confident: int = check(_positive)
    max_gallery: int = check(_positive)
    min_evidence_on_part: float = check(_fraction)
    seed: int = check(_seed)


@dataclasses.dataclass(frozen=True)
class GuardParams:
    false_alarm_rate: float = check(_fraction)
    shrinkage: float = check(lambda v: None if 0 <= v <= 1 else "must be in [0, 1]")
    exposure: list[float] = check(lambda v: None if len(v) == 2 and 0 <= v[0] < v[1] <= 1 else "must be [low, high] in [0, 1]")
    min_contrast: float = check(_non_negative)
    max_clipped: float = check(_fraction)
    max_aspect: float = check(lambda v: None if v >= 1 else "must be >= 1")
    position_margin: float = check(_non_negative)
    seam_margin: float = check(lambda v: None if v >= 1 else "must be >= 1")
    layout_margin: float = check(lambda v: None if v >= 1 else "must be >= 1")
    flat_margin: int = check(_non_negative)
    seed: int = check(_seed)


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    operating_point: Literal["fixed", "target_recall", "min_cost", "bayes"]
    threshold: float = check(_fraction)
    target_recall: float = check(lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    cost_missed_defect: float = check(_positive)
    cost_false_reject: float = check(_positive)
    defect_rate: float = check(_fraction)
    review_share: float = check(lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    anomaly_review_share: float = check(lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    painted_bands: list[int] = check(
        lambda v: None if all(a < b <= 254 for a, b in zip([0, *v], v)) else "must be rising grey levels in 1-254"
    )
    gate: GateParams
    batch_size: int = check(_positive)
    calibration: CalibrationParams
    explain: ExplainParams
    guard: GuardParams


@dataclasses.dataclass(frozen=True)
class PaintedParams:
    kinds: list[str] = check(
        lambda v: (
            None
            if v and set(v) <= {"hole", "crack", "scratch", "blob", "chip"}
            else "must list kinds among hole, crack, scratch, blob, chip"
        )
    )
    held_out: Literal["hole", "crack", "scratch", "blob", "chip"]
    peak_tolerance: float = check(_fraction)
    seed: int = check(_seed)

    def __post_init__(self):
        if self.held_out in self.kinds:
            raise InspectionError(
                f"params.yaml: anomaly.painted.held_out ({self.held_out}) must not be one of anomaly.painted.kinds"
            )


LITE0_STRIDES = (2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)  # each EfficientNet-Lite0 block's output stride


@dataclasses.dataclass(frozen=True)
class FlawParams:
    share: float = check(_fraction)
    contrast: list[float] = check(lambda v: None if len(v) == 2 and 0 < v[0] <= v[1] <= 1 else "must be [low, high] in (0, 1]")
    size: list[float] = check(
        lambda v: None if len(v) == 2 and 0 < v[0] <= v[1] <= 512 else "must be [low, high] with 0 < low <= high <= 512 pixels"
    )
    radius: float = check(lambda v: None if 0 < v <= 0.5 else "must be in (0, 0.5]")
    width: int = check(_positive)
    tune: list[int] = check(
        lambda v: None if all(0 <= b <= 15 for b in v) and len(set(v)) == len(v) else "must list distinct Lite0 blocks 0-15"
    )
    epochs: int = check(_positive)
    lr: float = check(_positive)
    batch_size: int = check(_positive)
    positive_weight: float = check(_positive)


@dataclasses.dataclass(frozen=True)
class AnomalyParams:
    method: Literal["flaws", "patchcore"]
    taps: list[int] = check(lambda v: None if v and all(0 <= t <= 15 for t in v) else "must list EfficientNet-Lite0 blocks 0-15")
    input_size: int = check(lambda v: None if 32 <= v <= 512 else "must be between 32 and 512")
    window: float = check(lambda v: None if 0 < v <= 0.75 else "must be in (0, 0.75]")
    lamp: list[float] = check(lambda v: None if len(v) == 2 and 0 < v[0] <= v[1] else "must be [low, high] with 0 < low <= high")
    patches: int = check(_positive)
    coreset: int = check(_positive)
    flaws: FlawParams
    reject_share: float = check(_fraction)
    batch_size: int = check(_positive)
    seed: int = check(_seed)
    painted: PaintedParams

    def __post_init__(self):
        side = -(-self.input_size // LITE0_STRIDES[min(self.taps)])  # the map's grid: the first tap's
        nearest = 0.0 if side % 2 else 2**0.5 / 2 / side  # the cell centre nearest the frame's centre
        if self.window < nearest:
            raise InspectionError(
                f"params.yaml: anomaly.window {self.window} holds no cell of the {side} x {side} map: nothing would be "
                f"judged; set it to at least {math.ceil(nearest * 1000) / 1000:g} (the part: about 0.45)"
            )
        if self.method == "flaws" and any(block > max(self.taps) for block in self.flaws.tune):
            raise InspectionError(
                f"params.yaml: anomaly.flaws.tune {self.flaws.tune} names blocks past the last of anomaly.taps "
                f"{self.taps}; those blocks never run: list blocks up to {max(self.taps)}"
            )


@dataclasses.dataclass(frozen=True)
class Int8Params:
    calibration_images: int = check(_positive)
    seed: int = check(_seed)


@dataclasses.dataclass(frozen=True)
class ExportParams:
    opset: int = check(lambda v: None if 17 <= v <= 23 else "must be between 17 and 23")
    max_abs_diff: float = check(_positive)
    batch_size: int = check(_positive)
    int8: Int8Params


@dataclasses.dataclass(frozen=True)
class Params:
    download: DownloadParams
    prepare: PrepareParams
    train: TrainParams
    anomaly: AnomalyParams
    evaluate: EvaluateParams
    robustness: RobustnessParams
    export: ExportParams


def _convert(cls, raw, where: str):
    """Build dataclass `cls` from the mapping `raw`, naming the offending key on any error."""
    if not isinstance(raw, dict):
        raise InspectionError(f"params.yaml: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise InspectionError(f"params.yaml: unknown key {prefix}{unknown[0]}; expected one of {sorted(names)}")
    values = {}
    for field in dataclasses.fields(cls):
        key = f"{where}.{field.name}" if where else field.name
        if field.name not in raw:
            raise InspectionError(f"params.yaml: {key} is missing; add it (see README for its meaning)")
        values[field.name] = _coerce(hints[field.name], raw[field.name], key)
        rule = field.metadata.get("check")
        problem = rule(values[field.name]) if rule else None
        if problem:
            raise InspectionError(f"params.yaml: {key} {problem}, got {raw[field.name]!r}")
    return cls(**values)


def _coerce(hint, value, key: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _convert(hint, value, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise InspectionError(f"params.yaml: {key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise InspectionError(f"params.yaml: {key} must be a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise InspectionError(f"params.yaml: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InspectionError(f"params.yaml: {key} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InspectionError(f"params.yaml: {key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InspectionError(f"params.yaml: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {hint} for {key}")


def load_section(section: str, path: Path = PARAMS_FILE):
    """Validate only `section`: a stage must not fail because another stage's section is wrong."""
    raw = _read(path)
    if not isinstance(raw, dict) or section not in raw:
        raise InspectionError(f"params.yaml: section '{section}' is missing; add it")
    return _coerce(typing.get_type_hints(Params)[section], raw[section], section)


def load_params(path: Path = PARAMS_FILE) -> Params:
    return _convert(Params, _read(path), "")


def _read(path: Path):
    if not path.exists():
        raise InspectionError(f"{path} not found: run from the project root")
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except Exception as exc:  # ruamel raises many parser error types
        first_line = str(exc).strip().splitlines()[0]
        raise InspectionError(f"{path}: not valid YAML ({first_line}); fix the file") from exc
    return raw
