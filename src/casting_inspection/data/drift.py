"""Input drift: do incoming photos still look like the ones the model was trained on?

A few statistics per image that a camera or lamp change moves (brightness, contrast, sharpness,
where the part sits), computed on the resized image the network sees. The training split's range
of each is the reference; a batch with too many images outside it raises an alarm, so a line
operator hears about an ageing lamp or a bumped camera before the decisions go wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from casting_inspection.data.background import background_level

STATISTICS = ("brightness", "contrast", "sharpness", "offset_x", "offset_y")


def image_statistics(images, batch_size: int = 512) -> pd.DataFrame:
    """One row per uint8 image (N, C, H, W; a NumPy array or a tensor): brightness and contrast (mean and std,
    0-1), sharpness (variance of the Laplacian), and the part's centre of mass relative to the frame centre
    (fraction of the side). NumPy only, so the serving path can warn without PyTorch."""
    images = np.asarray(images)
    rows = []
    for start in range(0, len(images), batch_size):
        gray = (images[start : start + batch_size].astype(np.float32) / 255).mean(axis=1)  # (n, H, W)
        height, width = gray.shape[-2:]
        part = np.abs(gray - background_level(gray[:, None])[:, 0])  # the part is what differs from the table
        mass = np.maximum(part.sum(axis=(1, 2)), 1e-6)
        ys = np.linspace(-0.5, 0.5, height, dtype=np.float32).reshape(1, height, 1)
        xs = np.linspace(-0.5, 0.5, width, dtype=np.float32).reshape(1, 1, width)
        laplacian = gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:] - 4 * gray[:, 1:-1, 1:-1]
        rows.append(
            pd.DataFrame(
                {
                    "brightness": gray.mean(axis=(1, 2)),
                    "contrast": gray.std(axis=(1, 2), ddof=1),
                    "sharpness": laplacian.var(axis=(1, 2), ddof=1),
                    "offset_x": (part * xs).sum(axis=(1, 2)) / mass,
                    "offset_y": (part * ys).sum(axis=(1, 2)) / mass,
                }
            )
        )
    return pd.concat(rows, ignore_index=True).astype("float64")


def reference(train_statistics: pd.DataFrame, quantiles: list[float], alarm_share: float) -> dict:
    """What 'normal' looks like: the training split's central range of each statistic, and the alarm rule."""
    low, high = quantiles
    return {
        "quantiles": [low, high],
        "alarm_share": alarm_share,
        "statistics": {
            name: {
                "low": float(values.quantile(low)),
                "high": float(values.quantile(high)),
                "mean": float(values.mean()),
                "std": float(values.std()),
            }
            for name, values in train_statistics[list(STATISTICS)].items()
        },
    }


def outside(statistics: pd.DataFrame, ref: dict) -> pd.DataFrame:
    """Per image and statistic: True where the value is outside the training range."""
    return pd.DataFrame({name: ~statistics[name].between(r["low"], r["high"]) for name, r in ref["statistics"].items()})


def drift_report(statistics: pd.DataFrame, ref: dict) -> dict:
    """For a batch of images: per statistic, its mean, the shift in training standard deviations and the
    share outside the training range; `alarm` lists the statistics whose share exceeds the alarm share."""
    flags = outside(statistics, ref)
    report = {}
    for name, r in ref["statistics"].items():
        report[name] = {
            "mean": round(float(statistics[name].mean()), 6),
            "shift_in_std": round(float((statistics[name].mean() - r["mean"]) / r["std"]), 3) if r["std"] else 0.0,
            "share_outside": round(float(flags[name].mean()), 4),
        }
    alarm = [name for name in ref["statistics"] if report[name]["share_outside"] > ref["alarm_share"]]
    return {"n": int(len(statistics)), **report, "alarm": alarm}


def drift_warning(report: dict) -> str | None:
    """The line an operator reads, or None when the batch looks like training."""
    if not report["alarm"]:
        return None
    parts = [
        f"{name} ({report[name]['share_outside']:.0%} of images outside the training range, "
        f"mean shifted {report[name]['shift_in_std']:+.1f} std)"
        for name in report["alarm"]
    ]
    return "input drift: " + "; ".join(parts) + " - check the lamp, camera exposure, focus and part placement"


def share_flagged(statistics: pd.DataFrame, ref: dict) -> float:
    return float(outside(statistics, ref).any(axis=1).mean())
