"""The exported model at work: load the ONNX file once, check and resize images exactly as training did
(`images.load_image`, with the spec the model carries), and decide each part.

Used by the predict, serve and watch commands; nothing here needs the pipeline's data or params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from casting_inspection.core.decision import PROBABILITY_OUTPUT, REVIEW, DecisionRule
from casting_inspection.core.errors import InspectionError
from casting_inspection.data.images import BadImage, ImageSpec, load_image
from casting_inspection.data.plausibility import implausible, photo_statistics, rules_problem

SLICE = 16  # images per ONNX Runtime call when the graph computes anomaly maps: memory stays near 0.3 GB


def _threshold(value, name: str) -> float | None:
    """The metadata's anomaly threshold or review top: a number, or null (no model of good parts, no band)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} {value!r} is not a number")
    return float(value)


@dataclasses.dataclass
class Result:
    path: str
    decision: str  # ok, defective, review or not_a_part; empty when the file was skipped
    defect_probability: float | None
    threshold: float
    model_version: str
    error: str = ""  # why the file was skipped
    flag: str = ""  # why it is not a part the model can judge (decision not_a_part)
    anomaly: float | None = None  # the model of good parts' score (see core.decision for what it decides)
    review_reason: str = ""  # why a person looks (decision review): which band the part is in

    @property
    def why(self) -> str:
        """The one reason a person reads beside the decision: why skipped, why not a part, or which band sent it."""
        return self.error or self.flag or self.review_reason

    def row(self) -> dict:
        return dataclasses.asdict(self)


def _finite(value, digits: int) -> float | None:
    """A score as written out: None (null in JSON, empty in CSV) when the model gave none, never NaN, which JSON has not."""
    return None if value is None or not math.isfinite(float(value)) else round(float(value), digits)


def model_fault(exc: BaseException) -> str:
    """The one line a person reads when the model failed on a photo: the runtime's first line, cut short."""
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"the model failed on this photo ({type(exc).__name__}: {detail}); check the model file and free memory"


class Inspector:
    """One loaded model. Thread-safe for concurrent `probabilities` calls (ONNX Runtime sessions are)."""

    def __init__(self, model_path: Path, threads: int = 0):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise InspectionError(f"{model_path}: no such model; run the pipeline (dvc repro) or pass --model")
        data = model_path.read_bytes()
        options = ort.SessionOptions()
        options.log_severity_level = 4  # the runtime's own multi-line logs: a fault reaches the person as one reason
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise InspectionError(
                f"{model_path}: not a loadable ONNX model ({type(exc).__name__}); export it again (dvc repro export)"
            ) from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.threshold = float(metadata["threshold"])
            band = json.loads(metadata["review_band"])
            self.spec = ImageSpec(**json.loads(metadata["preprocessing"]))
            self.drift_reference = json.loads(metadata["drift_reference"])
            self.guard = json.loads(metadata["guard"])
            anomaly_threshold = _threshold(json.loads(metadata.get("anomaly_threshold", "null")), "anomaly_threshold")
            anomaly_review = _threshold(json.loads(metadata.get("anomaly_review", "null")), "anomaly_review")
            self.classifier = json.loads(metadata.get("classifier", "true")) is not False
            self.review_band = tuple(float(v) for v in band) if band else None
            novelty = self.guard.get("novelty_threshold")
            self.rule = DecisionRule(self.threshold, self.review_band, novelty, anomaly_threshold, anomaly_review)
            self.outputs = [output.name for output in self.session.get_outputs()]
            problem = self._problem()
        except KeyError as exc:
            raise InspectionError(
                f"{model_path}: metadata lacks {exc}; export it again with this version (dvc repro export)"
            ) from None
        except (ValueError, TypeError, AttributeError) as exc:  # a value of the wrong kind (a band of words, a guard list)
            raise InspectionError(f"{model_path}: unreadable metadata ({exc}); export it again (dvc repro export)") from None
        if problem:
            raise InspectionError(f"{model_path}: cannot decide safely: {problem}; export it again (dvc repro export)")
        self.metadata = dict(metadata)
        self.path = model_path
        self.version = hashlib.sha256(data).hexdigest()[:12]
        self.input_name = self.session.get_inputs()[0].name

    def _problem(self) -> str | None:
        """Why this model's rule, guard and graph could not decide safely together, or None."""
        rule, outputs = self.rule, self.outputs
        if not outputs or outputs[0] != PROBABILITY_OUTPUT:  # the first output is read as the defect probability
            return f"the graph's first output is {outputs[0] if outputs else 'missing'}, not {PROBABILITY_OUTPUT}"
        checks = rules_problem(self.guard)  # first: the rule below compares with these numbers
        if checks:
            return checks
        if rule.novelty_threshold is not None and "novelty" not in outputs:
            return "the guard's novelty threshold is set but the graph has no novelty output"
        if rule.novelty_threshold is None and "novelty" in outputs:
            return "the graph measures novelty but its metadata has no novelty threshold"
        if rule.anomaly_threshold is not None and "anomaly" not in outputs:
            return "the anomaly threshold is set but the graph has no anomaly output"
        if rule.anomaly_threshold is None and "anomaly" in outputs:
            return "the graph scores departures from good parts but its metadata has no anomaly_threshold"
        if not self.classifier and rule.anomaly_threshold != self.threshold:
            return "without a classifier the threshold must be the model of good parts' anomaly_threshold"
        if not self.classifier and rule.anomaly_review is not None:
            return "without a classifier there is no anomaly review band (nothing else rejects)"
        return rule.problem()

    def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph by name for uint8 images (N, C, H, W): the defect probability and, when the
        graph has them, the guard's novelty, the anomaly score and the anomaly map."""
        step = SLICE if "anomaly_map" in self.outputs else max(len(images), 1)  # each map's distances take MBs
        parts = [
            self.session.run(None, {self.input_name: images[i : i + step].astype(np.float32) / 255})
            for i in range(0, len(images), step)
        ]
        return {name: np.concatenate([part[k] for part in parts]).astype(np.float64) for k, name in enumerate(self.outputs)}

    def _scored(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
        """The graph's outputs and, per image, why the model could not score it ("" when it did). When a run fails
        (memory, a fault of the runtime or the graph), each image is run alone, so that one failure does not take the
        others' decisions; an image whose own run fails gets no score (NaN) and the reason: never a pass."""
        try:
            return self.scores(images), [""] * len(images)
        except Exception as exc:  # onnxruntime raises its own types; MemoryError and the like are faults too
            if len(images) == 1:
                return self._no_scores(1), [model_fault(exc)]
        alone = [self._scored(image[None]) for image in images]
        scores = {name: np.concatenate([one[name] for one, _ in alone]) for name in self.outputs}
        return scores, [fault for _, (fault,) in alone]

    def _no_scores(self, n: int) -> dict[str, np.ndarray]:
        """NaN in every output's shape (the batch axis n): what an image the model failed on is scored."""
        shapes = [[d if isinstance(d, int) else 1 for d in output.shape[1:]] for output in self.session.get_outputs()]
        return {name: np.full([n, *shape], np.nan) for name, shape in zip(self.outputs, shapes)}

    def probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Defect probability for uint8 images (N, C, H, W), and the guard's novelty score when the graph has one."""
        scores = self.scores(images)
        return scores[self.outputs[0]], scores.get("novelty")

    def inspect(
        self,
        named_files: list[tuple[str, bytes]],
        batch_size: int = 64,
        decoded: list[np.ndarray] | None = None,
        maps: list[np.ndarray] | None = None,
    ) -> list[Result]:
        """Decide every file, in order; a file that is not a usable image is skipped with its reason.
        `decoded`, when given, receives the arrays of the decided images (for a drift check without decoding twice),
        and `maps` their anomaly maps (where the part departs from every good part seen)."""
        results: list[Result] = []
        for start in range(0, len(named_files), batch_size):
            chunk = named_files[start : start + batch_size]
            slots: list[Result | None] = []
            arrays, sizes = [], []
            for name, data in chunk:
                try:
                    array, size = load_image(data, self.spec)
                    arrays.append(array), sizes.append(size), slots.append(None)
                except BadImage as exc:
                    slots.append(Result(name, "", None, round(self.threshold, 6), self.version, str(exc)))
            if decoded is not None:
                decoded.extend(arrays)
            results += self._decide_batch(chunk, slots, arrays, sizes, maps)
        return results

    def _decide_batch(self, chunk, slots, arrays, sizes, maps) -> list[Result]:
        """Fill the empty slots in order with the one decision rule (core.decision): the photo's checks, novelty,
        the model of good parts, then the classifier."""
        if arrays:
            stacked = np.stack(arrays)
            scores, faults = self._scored(stacked)
            probabilities, anomaly = scores[self.outputs[0]], scores.get("anomaly")
            checked = implausible(photo_statistics(stacked), sizes, self.guard)
            photo_flags = [fault or flag for fault, flag in zip(faults, checked)]
            rule = self.rule.decide_all(probabilities, photo_flags, scores.get("novelty"), anomaly)
            departures = anomaly if anomaly is not None else [None] * len(arrays)
            decided = iter(zip(probabilities, rule, departures))
            if maps is not None and "anomaly_map" in scores:
                maps.extend(scores["anomaly_map"])
        out = []
        for (name, _), slot in zip(chunk, slots):
            if slot is None:
                p, (decision, flag), departure = next(decided)
                score = _finite(departure, 4)
                why = self.rule.review_reason(float(p), departure) if decision == REVIEW else ""
                slot = Result(
                    name,
                    decision,
                    _finite(p, 6),
                    round(self.threshold, 6),
                    self.version,
                    flag=flag or "",
                    anomaly=score,
                    review_reason=why,
                )
            out.append(slot)
        return out

    @staticmethod
    def _shown(guard: dict) -> dict:
        """The guard's rules as a person reads them: the layout's limit and cell count, not its 128 fitted numbers."""
        layout = guard.get("layout")
        return {**guard, "layout": {"cells": len(layout["mean"]), "limit": layout["limit"]}} if layout else guard

    def _source(self) -> dict:
        source = json.loads(self.metadata.get("source", "{}"))
        point = source.get("operating_point")
        if isinstance(point, dict) and isinstance(point.get("guard"), dict):
            source["operating_point"] = {**point, "guard": self._shown(point["guard"])}
        return source

    def info(self) -> dict:
        """What `GET /model` and `predict --about` tell: which model, how it decides, where it came from."""
        return {
            "model_version": self.version,
            "file": self.path.name,  # not the server's folders
            "threshold": self.threshold,
            "review_band": list(self.review_band) if self.review_band else None,
            "anomaly_threshold": self.rule.anomaly_threshold,
            "anomaly_review": self.rule.anomaly_review,  # only the model of good parts rejects, below this: a person looks
            "classifier": self.classifier,  # false: a product with good photos only; the model of good parts decides alone
            "input": {
                "image_size": self.spec.image_size,
                "color_mode": self.spec.color_mode,
                "allowed_modes": self.spec.allowed_modes,
                "min_side": self.spec.min_side,
                "max_pixels": self.spec.max_pixels,
            },
            "guard": self._shown(self.guard),
            "class_names": json.loads(self.metadata.get("class_names", "[]")),
            "source": self._source(),
        }
