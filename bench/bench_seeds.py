"""How much does the operating point move when the same recipe is retrained with another seed?

For each seed: train the default recipe on the prepared real data (data/prepared, from `dvc repro prepare`),
fit the temperature on validation, choose the threshold on validation by each rule (min_cost: the cheapest
validation step; bayes: from the calibrated probabilities, the costs and the line's defect rate), and score the
test split once per rule. Prints the threshold spread, test accuracy min/median/max and the share of test
parts on which all seeds decide alike. Usage (numerics pinned as in the stages):

    PYTHONPATH=src python bench/bench_seeds.py --seeds 42 1 2 3 4
"""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from casting_inspection.core.params import load_section  # noqa: E402
from casting_inspection.data.dataset import load_split  # noqa: E402
from casting_inspection.evaluation.calibrate import costs_of  # noqa: E402
from casting_inspection.evaluation.calibration import fit_temperature, sigmoid  # noqa: E402
from casting_inspection.evaluation.operating_point import choose_threshold  # noqa: E402
from casting_inspection.modeling.checkpoint import load_checkpoint  # noqa: E402
from casting_inspection.modeling.predict import predict_logits  # noqa: E402
from casting_inspection.modeling.training import train_model  # noqa: E402

RULES = ("min_cost", "bayes")


def one_seed(seed: int, data: Path, scratch: Path) -> dict:
    """Train with `seed`; per rule, the validation-chosen threshold and the test decisions at it."""
    params = dataclasses.replace(load_section("train"), seed=seed)
    started = time.perf_counter()
    train_model(params, data, scratch / "model.safetensors", scratch / "train.json", scratch / "live")
    seconds = time.perf_counter() - started
    model, _ = load_checkpoint(scratch / "model.safetensors")
    digest = hashlib.sha256((scratch / "model.safetensors").read_bytes()).hexdigest()[:16]
    evaluate = load_section("evaluate")
    val, test = load_split(data, "val"), load_split(data, "test")
    val_logits = predict_logits(model, val.images, 256, torch.device("cpu")).double().numpy()
    test_logits = predict_logits(model, test.images, 256, torch.device("cpu")).double().numpy()
    temperature = fit_temperature(val_logits, val.labels.numpy())
    val_p, test_p = sigmoid(val_logits / temperature), sigmoid(test_logits / temperature)
    out = {"seed": seed, "train_s": seconds, "checkpoint": digest}
    for rule in RULES:
        t = choose_threshold(rule, val.labels.numpy(), val_p, costs_of(evaluate), evaluate.threshold, evaluate.target_recall)
        out[rule] = {
            "threshold": t,
            "decisions": test_p >= t,
            "val_errors": int(((val_p >= t) != val.labels.numpy().astype(bool)).sum()),
        }
    out["labels"] = test.labels.numpy().astype(bool)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as scratch:
            runs.append(one_seed(seed, args.data, Path(scratch)))
        print(
            f"seed {seed}: trained in {runs[-1]['train_s']:.0f} s, checkpoint sha256 {runs[-1]['checkpoint']}; "
            + "; ".join(
                f"{r} threshold {runs[-1][r]['threshold']:.3f}: test {int((runs[-1][r]['decisions'] == runs[-1]['labels']).sum())}"
                f"/{len(runs[-1]['labels'])}"
                for r in RULES
            ),
            flush=True,
        )
    labels = runs[0]["labels"]
    for rule in RULES:
        thresholds = [r[rule]["threshold"] for r in runs]
        accuracy = [float((r[rule]["decisions"] == labels).mean()) for r in runs]
        missed = [int((~r[rule]["decisions"] & labels).sum()) for r in runs]
        false_rejects = [int((r[rule]["decisions"] & ~labels).sum()) for r in runs]
        decisions = np.stack([r[rule]["decisions"] for r in runs])
        alike = float((decisions.all(axis=0) | (~decisions).all(axis=0)).mean())
        print(
            f"{rule}: thresholds {', '.join(f'{t:.3f}' for t in thresholds)} (spread {max(thresholds) - min(thresholds):.3f}); "
            f"test accuracy min/median/max {min(accuracy):.2%} / {statistics.median(accuracy):.2%} / {max(accuracy):.2%}; "
            f"missed {missed}, false rejects {false_rejects}; validation errors {[r[rule]['val_errors'] for r in runs]}; "
            f"all {len(runs)} seeds decide alike on {alike:.2%} of test parts"
        )


if __name__ == "__main__":
    main()
