"""Export the best checkpoint to ONNX (dynamic batch) and check it against PyTorch on the real test images."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from casting_inspection.core.decision import PROBABILITY_OUTPUT, DecisionRule
from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path, write_json
from casting_inspection.core.params import ExportParams, Int8Params
from casting_inspection.data.dataset import load_split
from casting_inspection.evaluation.guard import load_guard
from casting_inspection.evaluation.metrics import count_errors
from casting_inspection.evaluation.model_files import ModelFiles
from casting_inspection.modeling.checkpoint import has_classifier
from casting_inspection.modeling.inspector import load_inspector
from casting_inspection.modeling.networks import ProbabilityNet, count_parameters

INPUT_NAME = "image"
OUTPUT_NAME = PROBABILITY_OUTPUT
NOVELTY_NAME = "novelty"  # the not-a-part guard's squared Mahalanobis distance (evaluation.guard)
ANOMALY_NAME = "anomaly"  # the model of good parts' score: its map's worst patch on the part
ANOMALY_MAP_NAME = "anomaly_map"  # (N, h, w): each patch's departure from a good part (a flaw probability, or a distance)


def one_digit(value: float) -> float:
    """One significant digit: the last bits of ONNX Runtime's sums follow the CPU's vector unit, which no
    setting pins, so only the order of magnitude of a difference belongs in a reproducible output."""
    return float(f"{value:.0e}")


def _source(checkpoint_path: Path, checkpoint: dict, operating_point: dict) -> dict:
    """Where the model came from, by content: the checkpoint's hash (DVC's md5), its train params, its operating point.
    No git state: an output must depend only on the stage's inputs."""
    return {
        "checkpoint_md5": hashlib.md5(Path(checkpoint_path).read_bytes()).hexdigest(),
        "train_params": checkpoint.get("train_params"),
        "best_epoch": checkpoint.get("epoch"),
        "operating_point": operating_point,
    }


def export_onnx(
    params: ExportParams,
    model_files: ModelFiles,
    *,
    drift_reference_path: Path,
    prepared_dir: Path,
    onnx_path: Path,
    int8_path: Path,
    metrics_path: Path,
) -> dict:
    checkpoint_path, operating_point_path, guard_path = model_files.checkpoint, model_files.operating_point, model_files.guard
    model, checkpoint, anomaly, anomaly_threshold = load_inspector(checkpoint_path, model_files.anomaly, "cpu")
    operating_point = json.loads(Path(operating_point_path).read_text())
    threshold = operating_point["threshold"]
    guard = load_guard(guard_path)
    _check_operating_point(model_files, checkpoint, anomaly_threshold, operating_point)
    shipped = ProbabilityNet(model, operating_point["temperature"], guard or None, anomaly).eval()
    test = load_split(prepared_dir, "test")
    names = [OUTPUT_NAME, *([NOVELTY_NAME] if guard else []), ANOMALY_NAME, ANOMALY_MAP_NAME]
    graph = _to_onnx(shipped, test.images[:2].float() / 255, params.opset, names)
    for key, value in _metadata(checkpoint, operating_point, checkpoint_path, drift_reference_path).items():
        graph.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph)
    with atomic_path(onnx_path) as tmp:
        onnx.save(graph, str(tmp))
    onnx_out, torch_out = _both_runtimes(shipped, onnx_path, test.images, params.batch_size, names)
    agreement = _agreement(onnx_out, torch_out, operating_point)
    guard_flips = {key: agreement.pop(key) for key in ("onnx_guard_flips", "onnx_anomaly_flips") if key in agreement}
    results = (
        agreement
        | {
            "onnx_bytes": Path(onnx_path).stat().st_size,
            "params": count_parameters(model),
            "opset": params.opset,
            "threshold": threshold,
            "images_checked": len(onnx_out[OUTPUT_NAME]),
        }
        | guard_flips
    )
    onnx_probs = onnx_out[OUTPUT_NAME]
    max_abs_diff = float(np.abs(onnx_probs - torch_out[OUTPUT_NAME]).max())
    train = load_split(prepared_dir, "train")
    results["int8"] = _int8(
        params.int8,
        onnx_path,
        int8_path,
        train.images,
        test.images,
        test.labels.numpy(),
        onnx_out,
        shipped_rule(operating_point),
        params.batch_size,
    )
    write_json(metrics_path, results)
    if max_abs_diff > params.max_abs_diff:
        raise InspectionError(
            f"ONNX and PyTorch disagree by {max_abs_diff:.2e} on test images (export.max_abs_diff={params.max_abs_diff:g}); "
            f"see {metrics_path}"
        )
    return results


def _check_operating_point(files: ModelFiles, checkpoint: dict, anomaly_threshold: float, operating_point: dict) -> None:
    """The operating point must ship the model of good parts' threshold, and without a classifier be chosen for none."""
    if operating_point.get("anomaly_threshold") != anomaly_threshold:
        raise InspectionError(
            f"{files.operating_point}: its anomaly_threshold is not {files.anomaly}'s ({anomaly_threshold}); "
            "run the evaluate stage again (dvc repro evaluate)"
        )
    if not has_classifier(checkpoint) and (operating_point["threshold"], operating_point["temperature"]) != (
        anomaly_threshold,
        1.0,
    ):
        raise InspectionError(
            f"{files.operating_point} was chosen for a classifier, but {files.checkpoint} holds none "
            "(train.classifier: false); run the evaluate stage again (dvc repro evaluate)"
        )


def _agreement(onnx_out: dict, torch_out: dict, operating_point: dict) -> dict:
    """PyTorch and ONNX Runtime as two "operators" deciding the same parts: decision, guard and anomaly flips."""
    threshold = operating_point["threshold"]
    onnx_probs, torch_probs = onnx_out[OUTPUT_NAME], torch_out[OUTPUT_NAME]
    flips = int(((onnx_probs >= threshold) != (torch_probs >= threshold)).sum())
    results = {
        "onnx_label_agreement": float(np.mean((onnx_probs >= threshold) == (torch_probs >= threshold))),
        "onnx_decision_flips": flips,
        "onnx_flip_rate": round(flips / len(onnx_probs), 6),
        "onnx_max_abs_diff": one_digit(float(np.abs(onnx_probs - torch_probs).max())),
    }
    limits = {
        NOVELTY_NAME: operating_point["guard"].get("novelty_threshold"),
        ANOMALY_NAME: operating_point.get("anomaly_threshold"),
    }
    for name, key in ((NOVELTY_NAME, "onnx_guard_flips"), (ANOMALY_NAME, "onnx_anomaly_flips")):
        if name in onnx_out and limits[name] is not None:  # a second score, as the two runtimes compute it
            results[key] = int(((onnx_out[name] >= limits[name]) != (torch_out[name] >= limits[name])).sum())
    results["onnx_outcome_flips"] = outcome_flips(shipped_rule(operating_point), onnx_out, torch_out)
    return results


def shipped_rule(operating_point: dict) -> DecisionRule:
    """The rule the exported model's metadata carries: every threshold and band of the operating point."""
    band = operating_point["review_band"]
    return DecisionRule(
        operating_point["threshold"],
        tuple(band) if band else None,
        operating_point["guard"].get("novelty_threshold"),
        operating_point.get("anomaly_threshold"),
        operating_point.get("anomaly_review"),
    )


def outcome_flips(rule: DecisionRule, first: dict, second: dict) -> int:
    """Parts whose shipped outcome (ok, defective, review or not a part, by every threshold and band at once)
    differs between two runtimes' outputs. The photo checks are left out: the same NumPy code runs on the same
    pixels whichever graph scores them."""

    def outcomes(out: dict) -> list[str]:
        probabilities = out[OUTPUT_NAME]
        flags = [None] * len(probabilities)
        return [d for d, _ in rule.decide_all(probabilities, flags, out.get(NOVELTY_NAME), out.get(ANOMALY_NAME))]

    return sum(a != b for a, b in zip(outcomes(first), outcomes(second)))


def _to_onnx(shipped: torch.nn.Module, example: torch.Tensor, opset: int, names: list[str]) -> onnx.ModelProto:
    """The dynamo exporter with a dynamic batch axis, into memory."""
    with tempfile.TemporaryDirectory() as scratch:
        raw_path = Path(scratch) / "model.onnx"
        torch.onnx.export(
            shipped,
            (example,),
            str(raw_path),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        graph = onnx.load(str(raw_path))
    # the exporter names each node's source file by absolute path: strip it, or the bytes follow the checkout
    for node in [*graph.graph.node, *(node for function in graph.functions for node in function.node)]:
        del node.metadata_props[:]
    del graph.graph.metadata_props[:]
    return graph


def _metadata(checkpoint: dict, operating_point: dict, checkpoint_path: Path, drift_reference_path: Path) -> dict:
    """What travels with the ONNX file, so that whatever serves it decides as evaluate did."""
    return {
        "class_names": json.dumps(checkpoint["class_names"]),
        "positive_class": checkpoint["class_names"][1],
        "threshold": str(operating_point["threshold"]),
        # [low, high): parts in between go to a person (evaluate.review_share); "null" = accept/reject only
        "review_band": json.dumps(operating_point["review_band"]),
        "temperature": str(operating_point["temperature"]),  # already inside the graph: the output is calibrated
        # not a part, not a decision: the photo checks and the novelty threshold (the graph's second output)
        "guard": json.dumps(operating_point["guard"]),
        # the model of good parts: a part whose score (the graph's "anomaly" output) reaches this is defective, or
        # review below anomaly_review when only it rejects the part; the "anomaly_map" output shows where (each
        # patch's departure, over the part's window)
        "anomaly_threshold": json.dumps(operating_point.get("anomaly_threshold")),
        "anomaly_review": json.dumps(operating_point.get("anomaly_review")),
        "image_size": str(checkpoint["preprocessing"]["image_size"]),
        "color_mode": checkpoint["preprocessing"]["color_mode"],
        # the checks and resize of casting_inspection.data.images.load_image, so every consumer prepares images as training did
        "preprocessing": json.dumps(checkpoint["preprocessing"]),
        "input": "float32 (N, C, H, W) in [0, 1], resized as in casting_inspection.data.images.load_image",
        "source": json.dumps(_source(checkpoint_path, checkpoint, operating_point)),
        # false: a product with good photos only; the defect probability is then the model of good parts' score
        "classifier": json.dumps(has_classifier(checkpoint)),
        "output": "defect probability per image"
        + ("" if has_classifier(checkpoint) else " (no classifier: the model of good parts' flaw probability)"),
        # the training range of brightness, contrast, sharpness and part position (casting_inspection.data.drift),
        # so whatever serves the model can warn when the camera drifts
        "drift_reference": json.dumps(json.loads(Path(drift_reference_path).read_text())),
    }


def _both_runtimes(shipped: torch.nn.Module, onnx_path: Path, images: torch.Tensor, batch_size: int, names: list[str]):
    """Each output by name, from ONNX Runtime and from PyTorch, for the same images."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out, torch_out = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].float() / 255
            output = shipped(batch)
            torch_out.append([o.numpy() for o in output] if isinstance(output, tuple) else [output.numpy()])
            onnx_out.append(session.run(names, {INPUT_NAME: batch.numpy()}))

    def joined(parts):
        return {name: np.concatenate(column) for name, column in zip(names, zip(*parts))}

    return joined(onnx_out), joined(torch_out)


def _round_ranges(path: Path, digits: int = 4) -> None:
    """Round ONNX Runtime's calibration ranges to `digits` significant digits: their last bits follow the CPU's
    vector unit, and the int8 file's bytes would follow them."""

    def rounded(value):
        if isinstance(value, dict):
            if value.get("CLS") == "numpy.array" and "float" in value.get("dtype", ""):
                return {**value, "data": np.vectorize(lambda v: float(f"{v:.{digits - 1}e}"))(np.asarray(value["data"])).tolist()}
            return {key: rounded(item) for key, item in value.items()}
        if isinstance(value, list):
            return [rounded(item) for item in value]
        return float(f"{value:.{digits - 1}e}") if isinstance(value, float) else value

    path.write_text(json.dumps(rounded(json.loads(path.read_text()))))


def _quantize(float_path: Path, int8_path: Path, calibration: np.ndarray) -> None:
    """QDQ int8 convolutions from activation ranges measured on `calibration` and rounded (see _round_ranges)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calibration[i : i + 32] for i in range(0, len(calibration), 32)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory() as scratch, atomic_path(int8_path) as tmp:
        prepared = Path(scratch) / "pre.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)  # it cannot follow the pooled Concat
        options = {
            "quant_format": QuantFormat.QDQ,
            "per_channel": True,
            "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
            "op_types_to_quantize": ["Conv"],  # the head and the guard's distance stay float: few weights, exact scores
            "reduce_range": True,  # 7-bit weights: no saturation in AVX2's u8*s8 path, the same int32 sums as VNNI
            # the model of good parts stays float: its threshold was set on float scores
            "nodes_to_exclude": [
                node.name
                for node in onnx.load(str(prepared)).graph.node
                if node.op_type == "Conv" and node.input[1].startswith(("anomaly.", "net.anomaly."))
            ],
        }
        ranges = Path(scratch) / "ranges.json"
        quantize_static(str(prepared), str(tmp), Batches(), calibration_cache_path=ranges, **options)
        _round_ranges(ranges)  # then quantize again from the rounded activation ranges alone
        quantize_static(str(prepared), str(tmp), None, calibration_cache_path=ranges, **options)
        quantized = onnx.load(str(tmp))
        del quantized.metadata_props[:]
        for prop in onnx.load(str(float_path)).metadata_props:  # the same threshold, spec and source travel with it
            quantized.metadata_props.add(key=prop.key, value=prop.value)
        onnx.save(quantized, str(tmp))


def _int8(
    params: Int8Params,
    float_path: Path,
    int8_path: Path,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: np.ndarray,
    float_out: dict,
    rule: DecisionRule,
    batch_size: int,
) -> dict:
    """Static int8 quantization calibrated on training images; its size and decisions against the float model."""
    float_probs, float_anomaly = float_out[OUTPUT_NAME], float_out[ANOMALY_NAME]
    threshold, anomaly_threshold = rule.threshold, rule.anomaly_threshold
    pick = np.random.default_rng(params.seed).choice(
        len(train_images), min(params.calibration_images, len(train_images)), replace=False
    )
    _quantize(float_path, int8_path, train_images[np.sort(pick)].numpy().astype(np.float32) / 255)
    images = test_images.numpy().astype(np.float32) / 255
    int8_session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    names = list(float_out)
    runs = [int8_session.run(names, {INPUT_NAME: images[i : i + batch_size]}) for i in range(0, len(images), batch_size)]
    int8_out = {name: np.concatenate(column) for name, column in zip(names, zip(*runs))}
    int8_probs, int8_anomaly = int8_out[OUTPUT_NAME], int8_out[ANOMALY_NAME]
    labels = test_labels.astype(bool)
    return {
        "bytes": Path(int8_path).stat().st_size,
        "float_bytes": Path(float_path).stat().st_size,
        "decision_agreement": round(float(np.mean((int8_probs >= threshold) == (float_probs >= threshold))), 6),
        "max_abs_diff": one_digit(float(np.abs(int8_probs - float_probs).max())),
        "accuracy": round(float(np.mean((int8_probs >= threshold) == labels)), 6),
        "float_accuracy": round(float(np.mean((float_probs >= threshold) == labels)), 6),
        "missed_defects": count_errors(labels, int8_probs >= threshold)[0],
        # the classifier's quantized standardisation also feeds the model of good parts: its score moves a little
        "anomaly_max_abs_diff": one_digit(float(np.abs(int8_anomaly - float_anomaly).max())),
        "anomaly_flips": int(((int8_anomaly >= anomaly_threshold) != (float_anomaly >= anomaly_threshold)).sum()),
        "outcome_flips": outcome_flips(rule, int8_out, float_out),
    }
