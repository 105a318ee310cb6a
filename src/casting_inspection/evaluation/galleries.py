"""Pictures a quality engineer looks at: sample grids, error galleries and Grad-CAM overlays, as PNG files
that `dvc plots show` and `dvc plots diff` display."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from casting_inspection import CLASS_NAMES  # noqa: E402
from casting_inspection.core.files import atomic_path  # noqa: E402

RIGHT, WRONG, FLAGGED = "#1a7f37", "#cf222e", "#bc4c00"
SHORT = {"ok_front": "ok", "def_front": "defective"}


@dataclasses.dataclass
class Tile:
    image: np.ndarray  # (H, W) uint8: what the network saw
    label: int
    probability: float
    threshold: float
    heatmap: np.ndarray | None = None
    note: str = ""
    flag: str = ""  # why the guard called it not a part (then label may be -1: no true class)

    @property
    def correct(self) -> bool:
        return (self.probability >= self.threshold) == bool(self.label)

    @property
    def caption(self) -> str:
        if self.flag:
            return textwrap.fill(f"not a part: {self.flag}", 34)
        true, predicted = SHORT[CLASS_NAMES[self.label]], SHORT[CLASS_NAMES[int(self.probability >= self.threshold)]]
        return f"true {true} / pred {predicted}\np(defect) {self.probability:.3f}" + (f"\n{self.note}" if self.note else "")


def draw_tiles(tiles: list[Tile], title: str, out: Path, columns: int = 6) -> None:
    """One figure of captioned tiles, green frame when the decision is right, red when wrong."""
    rows = max(1, -(-len(tiles) // columns))
    columns = max(1, min(columns, len(tiles)))
    figure, axes = plt.subplots(rows, columns, figsize=(max(2.1 * columns, 6.0), 2.5 * rows + 0.5), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, tile in zip(axes.flat, tiles):
        axis.imshow(tile.image, cmap="gray", vmin=0, vmax=255)
        if tile.heatmap is not None:
            axis.imshow(tile.heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        colour = FLAGGED if tile.flag else RIGHT if tile.correct else WRONG
        axis.axis("on")
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(3)
        axis.set_title(tile.caption, fontsize=7.5, color=colour)
    if not tiles:
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=14)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    with atomic_path(Path(out)) as tmp:
        figure.savefig(tmp, format="png", dpi=72)
    plt.close(figure)


def evidence_chart(shares: dict[str, float], area_share: float, flag_below: float, out: Path) -> None:
    """Mean share of Grad-CAM mass on the part per group, against what a heatmap spread evenly would give."""
    figure, axis = plt.subplots(figsize=(5.5, 3.2))
    names = list(shares)
    values = [shares[name] for name in names]
    axis.bar(names, values, color=["#57606a" if name != "errors" else WRONG for name in names])
    axis.axhline(area_share, color="#0969da", linestyle="--", linewidth=1, label=f"part's share of the image ({area_share:.0%})")
    axis.axhline(flag_below, color=WRONG, linestyle=":", linewidth=1, label=f"flag a decision below {flag_below:.0%}")
    for index, value in enumerate(values):
        if np.isfinite(value):
            axis.text(index, value + 0.01, f"{value:.1%}", ha="center", fontsize=8)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel("Grad-CAM mass on the part")
    axis.set_title("Evidence on the part (test split)", fontsize=10)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_path(Path(out)) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
