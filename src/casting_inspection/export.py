"""Export the best checkpoint to ONNX (dynamic batch) and check it against PyTorch on the real test images."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .dataset import load_split
from .files import atomic_path, write_json
from .models import ProbabilityNet, count_parameters
from .params import ExportParams
from .training import load_checkpoint
from .errors import InspectionError

INPUT_NAME = "image"
OUTPUT_NAME = "defect_probability"


def export_onnx(params: ExportParams, checkpoint_path: Path, operating_point_path: Path, drift_reference_path: Path,
                prepared_dir: Path, onnx_path: Path, metrics_path: Path) -> dict:
    model, checkpoint = load_checkpoint(checkpoint_path, "cpu")
    operating_point = json.loads(Path(operating_point_path).read_text())
    threshold, temperature = operating_point["threshold"], operating_point["temperature"]
    shipped = ProbabilityNet(model, temperature).eval()
    test = load_split(prepared_dir, "test")
    example = test.images[:2].float() / 255

    with tempfile.TemporaryDirectory() as scratch:
        raw_path = Path(scratch) / "model.onnx"
        torch.onnx.export(
            shipped, (example,), str(raw_path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=params.opset,
            external_data=False, verbose=False,
        )
        graph = onnx.load(str(raw_path))
    metadata = {
        "class_names": json.dumps(checkpoint["class_names"]),
        "positive_class": checkpoint["class_names"][1],
        "threshold": str(threshold),
        # [low, high): parts in between go to a person (evaluate.review_share); "null" = accept/reject only
        "review_band": json.dumps(operating_point["review_band"]),
        "temperature": str(temperature),  # already inside the graph: the output is the calibrated probability
        "image_size": str(checkpoint["preprocessing"]["image_size"]),
        "color_mode": checkpoint["preprocessing"]["color_mode"],
        "input": "float32 (N, C, H, W) in [0, 1], resized as in casting_inspection.images.load_image",
        "output": "defect probability per image",
        # the training range of brightness, contrast, sharpness and part position (casting_inspection.drift),
        # so whatever serves the model can warn when the camera drifts
        "drift_reference": json.dumps(json.loads(Path(drift_reference_path).read_text())),
    }
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph)
    with atomic_path(onnx_path) as tmp:
        onnx.save(graph, str(tmp))

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_probs, torch_probs = [], []
    with torch.no_grad():
        for start in range(0, len(test.images), params.batch_size):
            batch = test.images[start : start + params.batch_size].float() / 255
            torch_probs.append(shipped(batch).numpy())
            onnx_probs.append(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])
    onnx_probs, torch_probs = np.concatenate(onnx_probs), np.concatenate(torch_probs)
    max_abs_diff = float(np.abs(onnx_probs - torch_probs).max())
    flips = int(((onnx_probs >= threshold) != (torch_probs >= threshold)).sum())
    results = {
        "onnx_label_agreement": float(np.mean((onnx_probs >= threshold) == (torch_probs >= threshold))),
        # PyTorch and ONNX Runtime as two "operators" deciding the same parts at the chosen threshold
        "onnx_decision_flips": flips,
        "onnx_flip_rate": round(flips / len(onnx_probs), 6),
        "onnx_max_abs_diff": max_abs_diff,
        "onnx_bytes": Path(onnx_path).stat().st_size,
        "params": count_parameters(model),
        "opset": params.opset,
        "threshold": threshold,
        "images_checked": len(onnx_probs),
    }
    write_json(metrics_path, results)
    if max_abs_diff > params.max_abs_diff:
        raise InspectionError(
            f"ONNX and PyTorch disagree by {max_abs_diff:.2e} on test images (export.max_abs_diff={params.max_abs_diff:g}); "
            f"see {metrics_path}"
        )
    return results
