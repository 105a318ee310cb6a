"""Photos a line camera sends that are not parts: generated frames, crops and rescalings of validation photos,
other shapes. Scored by evaluate to measure the guard; never used to choose anything."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance

from casting_inspection.data.dataset import Split
from casting_inspection.data.images import BadImage, ImageSpec, load_image
from casting_inspection.evaluation.galleries import Tile, draw_tiles

SIDE = 300  # the camera's frame


def _frames(rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    ramp = np.tile(np.linspace(0, 255, SIDE, dtype=np.float32), (SIDE, 1)).astype(np.uint8)
    text = Image.new("L", (SIDE, SIDE), 190)
    ImageDraw.Draw(text).multiline_text((20, 40), "LOT 4471\nSHIFT B\nNO PART", fill=20, spacing=30)
    checker = ((np.indices((SIDE, SIDE)) // 25).sum(axis=0) % 2 * 200 + 30).astype(np.uint8)
    return [
        ("black frame", Image.new("L", (SIDE, SIDE), 0)),
        ("white frame", Image.new("L", (SIDE, SIDE), 255)),
        ("flat grey frame", Image.new("L", (SIDE, SIDE), 128)),
        ("uniform noise", Image.fromarray(rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8))),
        ("grey noise", Image.fromarray(rng.normal(128, 40, (SIDE, SIDE)).clip(0, 255).astype(np.uint8))),
        ("horizontal gradient", Image.fromarray(ramp)),
        ("vertical gradient", Image.fromarray(ramp.T.copy())),
        ("text", text),
        ("checkerboard", Image.fromarray(checker)),
    ]


def _shapes(table: int) -> list[tuple[str, Image.Image]]:
    shapes = []
    for name, draw in (
        ("square", lambda d: d.rectangle([80, 80, 220, 220], fill=60)),
        ("triangle", lambda d: d.polygon([(150, 40), (270, 250), (30, 250)], fill=70)),
        ("bar", lambda d: d.rectangle([20, 130, 280, 170], fill=40)),
        ("small disc", lambda d: d.ellipse([130, 130, 170, 170], fill=50)),
    ):
        image = Image.new("L", (SIDE, SIDE), table)
        draw(ImageDraw.Draw(image))
        shapes.append((f"other shape: {name}", image))
    return shapes


def _from_parts(photos: list[Image.Image], table: int) -> list[tuple[str, Image.Image]]:
    """Crops, rescalings, misplacements and exposures far outside training, of real validation photos."""
    out = []
    for photo in photos:
        big = photo.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        out.append(("strip 1000x40", big.resize((1000, 40))))
        out.append(("quarter crop, zoomed", big.crop((0, 0, SIDE // 2, SIDE // 2)).resize((SIDE, SIDE))))
        far = Image.new("L", (SIDE, SIDE), table)
        far.paste(big.resize((SIDE // 3, SIDE // 3)), (SIDE // 3, SIDE // 3))
        out.append(("part at 3x the distance", far))
        off = Image.new("L", (SIDE, SIDE), table)
        off.paste(big, (int(SIDE * 0.45), int(SIDE * 0.4)))
        out.append(("part half out of the frame", off))
        out.append(("exposure x0.25", ImageEnhance.Brightness(big).enhance(0.25)))
        out.append(("exposure x3", ImageEnhance.Brightness(big).enhance(3.0)))
    return out


def _torn(photos: list[Image.Image], table: int, rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    """Frames a camera tears or stitches: halves of two parts, swapped quarters, a part cut off by the empty table."""
    out = []
    for first, second in zip(photos, photos[1:] + photos[:1]):
        a = np.asarray(first.resize((SIDE, SIDE), Image.Resampling.BILINEAR))
        b = np.asarray(second.resize((SIDE, SIDE), Image.Resampling.BILINEAR))
        cut = int(rng.integers(int(SIDE * 0.35), int(SIDE * 0.65)))
        out.append(("torn: halves of two parts, side by side", np.concatenate([a[:, :cut], b[:, cut:]], axis=1)))
        out.append(("torn: halves of two parts, one above the other", np.concatenate([a[:cut], b[cut:]], axis=0)))
        h = SIDE // 2
        out.append(("torn: quarters swapped", np.block([[a[h:, h:], a[h:, :h]], [a[:h, h:], a[:h, :h]]])))
        partial = a.copy()
        partial[cut:] = table
        out.append(("torn: the frame's bottom is the empty table", partial))
    return [(kind, Image.fromarray(np.ascontiguousarray(array))) for kind, array in out]


def material(val_images: np.ndarray, seed: int, photos: int = 4) -> list[tuple[str, bytes]]:
    """(kind, PNG bytes) for every not-a-part photo, drawn with `seed` from the validation images (N, C, H, W)."""
    rng = np.random.default_rng(seed)
    picked = [
        Image.fromarray(val_images[i].mean(axis=0).astype(np.uint8)) for i in rng.choice(len(val_images), photos, replace=False)
    ]
    table = int(np.median([np.asarray(p)[:4].mean() for p in picked]))
    items = _frames(rng) + _shapes(table) + _from_parts(picked, table) + _torn(picked, table, rng)
    encoded = []
    for kind, image in items:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        encoded.append((kind, buffer.getvalue()))
    return encoded


def _category(reason: str) -> str:
    """A reason without its figures, for counting."""
    return reason.split(" (")[0].split(":")[0]


def not_a_part_figures(params, decide, test: Split, val: Split, flags: list, spec: ImageSpec, images_dir: Path) -> dict:
    """What the guard did on the test and validation splits and on the not-a-part material; draws the gallery."""
    val_flags = decide.reasons(val.images, val.sizes)  # only the guard's false alarms count here
    items = material(val.images.numpy(), params.guard.seed)
    arrays, sizes, kinds, refused = [], [], [], []
    for kind, data in items:
        try:
            array, size = load_image(data, spec)
            arrays.append(array), sizes.append(size), kinds.append(kind)
        except BadImage as exc:
            refused.append((kind, str(exc)))
    outcomes = decide(torch.from_numpy(np.stack(arrays)), sizes) if arrays else []
    missed = [(kind, decision) for kind, (decision, _, flag) in zip(kinds, outcomes) if not flag]
    labels = test.labels.numpy().astype(int)
    flagged = np.array([f is not None for f in flags])
    tiles = [
        Tile(test.images[i].float().mean(dim=0).round().to(torch.uint8).numpy(), -1, 0.0, 0.5, flag=f"test part: {flags[i]}")
        for i in np.flatnonzero(flagged)[: params.explain.max_gallery // 2]
    ]
    tiles += [
        Tile(a.mean(axis=0).astype(np.uint8), -1, p, 0.5, flag=(f"{k}: {f}" if f else f"MISSED {k}: decided {d} (p {p:.3f})"))
        for a, k, (d, p, f) in list(zip(arrays, kinds, outcomes))[: params.explain.max_gallery]
    ]
    draw_tiles(
        tiles,
        f"Not a part: {int(flagged.sum())} test photos and {len(items) - len(missed)} of {len(items)} generated ones flagged",
        images_dir / "not_a_part.png",
    )
    caught = len(items) - len(missed)
    return {
        "test_flagged": int(flagged.sum()),
        "test_flagged_share": round(float(flagged.mean()), 6),
        "test_flagged_defects": int((flagged & (labels == 1)).sum()),
        "test_reasons": dict(sorted(Counter(_category(f) for f in flags if f).items())),
        "val_flagged_share": round(float(np.mean([f is not None for f in val_flags])), 6),
        "material": {
            "n": len(items),
            "caught": caught,
            "caught_share": round(caught / len(items), 6),
            "refused_unread": len(refused),
            "decided_ok": sum(d == "ok" for _, d in missed),
            "missed": sorted({k for k, _ in missed}),
        },
    }
