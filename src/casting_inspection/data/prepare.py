"""Verify every raw image, find exact duplicates and train/test leakage, split train/val, cache arrays.

Outputs (in `out_dir`): `manifest.csv` (one row per raw file), `rejected.csv`, and
`{train,val,test}.npy` — uint8 arrays of shape (N, C, H, W) in manifest order (column `index`),
which training reads without decoding a JPEG again. Beside them, the input-drift reference: the
training split's range of brightness, contrast, sharpness and part position (see `drift`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import multiprocessing
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from casting_inspection import CLASS_NAMES, SPLITS
from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_dir, write_json
from casting_inspection.core.params import PrepareParams
from casting_inspection.data import drift, line, near_duplicates
from casting_inspection.data.images import BadImage, ImageSpec, load_image, read_photo

CACHE_SPLITS = ("train", "val", "test", "line_test")  # line_test: the plant's own held-out photos (may be empty)
REQUIRED_SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = (
    "path",
    "label",
    "split",
    "official_split",
    "source",
    "sha256",
    "size",
    "width",
    "height",
    "status",
    "reason",
    "duplicate_of",
    "leaked",
    "near_duplicate_of",
    "near_distance",
    "index",
)


def _verify(job: tuple[Path, str, ImageSpec]):
    path, relative, spec = job
    try:  # the one way a photo is read: a pipe never blocks, a huge file never fills memory
        data = read_photo(path, spec.max_file_bytes)
    except BadImage as exc:  # a line photo named in labels.csv but gone from data/line, an unreadable file
        unread = {"path": relative, "sha256": "", "size": _size(path), "width": None, "height": None}
        return unread | {"status": "rejected", "reason": str(exc)}, None
    digest = hashlib.sha256(data).hexdigest()
    record = {"path": relative, "sha256": digest, "size": len(data)}
    if relative.startswith("line/") and Path(relative).stem != digest:  # stored under its hash when imported
        reason = "its bytes are not the photo imported under this name (the file was replaced); import the photo again"
        return record | {"width": None, "height": None, "status": "rejected", "reason": reason}, None
    try:
        array, (width, height) = load_image(data, spec)
    except BadImage as exc:
        return record | {"width": None, "height": None, "status": "rejected", "reason": str(exc)}, None
    return record | {"width": width, "height": height, "status": "ok", "reason": ""}, array


def _size(path: Path) -> int:
    """What a file holds, read or not (a photo too large to read is named with its size); 0 for none."""
    try:
        info = path.stat()
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _list_raw(raw_dir: Path) -> list[tuple[Path, str, str, str]]:
    files = []
    for split in SPLITS:
        if not (raw_dir / split).is_dir():
            raise InspectionError(f"{raw_dir / split}: missing; run the download stage first (dvc repro download)")
        for label in CLASS_NAMES:
            folder = raw_dir / split / label  # no defect folder: a product with good photos only (train.classifier)
            files += [(path, f"{split}/{label}/{path.name}", split, label) for path in _listed(folder)]
    if not files:
        raise InspectionError(
            f"{raw_dir}: no photos in {{train,test}}/{{{','.join(CLASS_NAMES)}}}/; run the download stage again"
        )
    return files


def _listed(folder: Path) -> list[Path]:
    """A class folder's files, sorted; a folder that cannot be read is said, never taken for an empty one."""
    try:
        return sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError as exc:
        raise InspectionError(f"{folder}: cannot read ({exc.strerror}); fix its permissions") from None


def _list_line(line_dir: Path | None) -> list[tuple[Path, str, str, str]]:
    """The plant's reviewed and imported photos that training may use (data.line: agreed verdicts only)."""
    try:
        if line_dir is None or not (Path(line_dir) / line.LABELS_NAME).exists():
            return []
    except OSError as exc:  # a folder that cannot be searched: its photos must not be left out unnamed
        raise InspectionError(f"{line_dir}: cannot read ({exc.strerror}); fix its permissions") from None
    for number, reason in line.read_rows(Path(line_dir))[1]:  # named in the stage's log, left out of training
        print(f"prepare: {Path(line_dir) / line.LABELS_NAME} line {number}: {reason}; left out")
    labels = line.training_labels(Path(line_dir))
    return [(Path(line_dir) / image, f"line/{image}", "line", label) for image, label in zip(labels["image"], labels["label"])]


def image_spec(params: PrepareParams) -> ImageSpec:
    """The checks and resize every consumer of the model repeats, from the prepare section."""
    return ImageSpec(
        params.image_size,
        params.color_mode,
        list(params.allowed_modes),
        params.min_side,
        params.max_pixels,
        list(params.allowed_formats),
        params.max_file_bytes,
    )


SMALL = 256  # files decoded without a pool of processes


def _verify_all(jobs: list[tuple], workers: int) -> list[tuple]:
    """Each file checked and decoded, in order, in `workers` processes (in this one for one worker or a few hundred
    files: a pool's start costs more). They are spawned, not forked: a child forked from a process whose threads
    are running (torch's pool, tqdm's monitor) can hang."""

    def progress(results):  # disable=None: a progress bar on a terminal, none in CI logs
        return list(tqdm(results, total=len(jobs), desc="verify", unit="img", disable=None))

    if workers == 1 or len(jobs) <= SMALL:
        return progress(map(_verify, jobs))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return progress(pool.map(_verify, jobs, chunksize=64))


def prepare_dataset(
    params: PrepareParams,
    raw_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    drift_path: Path,
    workers: int,
    line_dir: Path | None = None,
) -> dict:
    files = _list_raw(Path(raw_dir)) + _list_line(line_dir)
    spec = image_spec(params)
    results = _verify_all([(path, relative, spec) for path, relative, _, _ in files], workers)
    table = pd.DataFrame([record for record, _ in results])
    table[["width", "height"]] = table[["width", "height"]].astype("Int64")  # a rejected file has none: not 300.0
    table.insert(1, "label", [label for *_, label in files])
    table.insert(2, "official_split", [split for _, _, split, _ in files])
    arrays = [array for _, array in results]
    table["duplicate_of"] = ""
    table["leaked"] = False
    _mark_duplicates(table, params.duplicates)
    table["split"] = ""
    _assign_splits(table, params)
    _assign_line_splits(table, arrays, params)
    pairs = _mark_near_duplicates(table, arrays, params)
    table["index"] = -1
    with atomic_dir(Path(out_dir)) as staging:
        drift_reference = _write_cache(staging, table, arrays, spec, params, raw_dir)
        table[list(MANIFEST_COLUMNS)].to_csv(staging / "manifest.csv", index=False)
        table.loc[table["status"] == "rejected", ["path", "reason"]].to_csv(staging / "rejected.csv", index=False)
        pairs.to_csv(staging / "near_duplicates.csv", index=False)
        write_json(staging / "preprocessing.json", dataclasses.asdict(spec))
    write_json(Path(drift_path), drift_reference)
    summary = _summary(table)
    write_json(Path(metrics_path), summary)
    return summary


def _write_cache(staging: Path, table: pd.DataFrame, arrays: list, spec: ImageSpec, params: PrepareParams, raw_dir: Path) -> dict:
    """The uint8 array of each split, in manifest order (column `index`); returns the drift reference of train."""
    for split in CACHE_SPLITS:
        rows = table.index[table["split"] == split]
        if len(rows) == 0 and split in REQUIRED_SPLITS:
            raise InspectionError(f"no usable images left for the {split} split (all rejected or dropped); check {raw_dir}")
        table.loc[rows, "index"] = range(len(rows))
        shape = (0, 3 if spec.color_mode == "RGB" else 1, spec.image_size, spec.image_size)
        stacked = np.stack([arrays[i] for i in rows]) if len(rows) else np.empty(shape, np.uint8)
        np.save(staging / f"{split}.npy", stacked)
        if split == "train":
            reference = drift.reference(drift.image_statistics(stacked), params.drift.quantiles, params.drift.alarm_share)
    return reference


def _mark_duplicates(table: pd.DataFrame, policy: str) -> None:
    """Flag byte-identical copies; with policy 'drop', drop repeated train copies and train copies of test images."""
    usable = table[(table["status"] == "ok") & (table["official_split"] != "line")]  # line copies: _assign_line_splits
    for _, group in usable.groupby("sha256", sort=False):
        if len(group) < 2:
            continue
        train = group[group["official_split"] == "train"]
        test = group[group["official_split"] == "test"]
        for copies in (train, test):
            table.loc[copies.index[1:], "duplicate_of"] = copies["path"].iloc[0] if len(copies) else ""
        if len(set(group["label"])) > 1:
            table.loc[group.index, ["status", "reason"]] = [
                "rejected",
                "identical image carries both labels: " + ", ".join(group["path"]),
            ]
            continue
        if len(test):
            table.loc[test.index, "leaked"] = True
            table.loc[train.index, "duplicate_of"] = test["path"].iloc[0]
        if policy == "drop":
            drop = train.index if len(test) else train.index[1:]
            reason = f"identical to test image {test['path'].iloc[0]}" if len(test) else f"duplicate of {train['path'].iloc[0]}"
            table.loc[drop, ["status", "reason"]] = ["dropped", reason]


def _mark_near_duplicates(table: pd.DataFrame, arrays: list, params: PrepareParams) -> pd.DataFrame:
    """For each test image, its nearest official-train image by pHash distance (`near_distance`), named in
    `near_duplicate_of` when within `max_distance`. Returns every test/train pair within it (the groups)."""
    table["near_duplicate_of"] = ""
    table["near_distance"] = pd.array([pd.NA] * len(table), dtype="Int64")
    test = table.index[table["split"] == "test"]
    train = table.index[table["split"].isin(["train", "val"])]
    hashes = near_duplicates.perceptual_hashes([arrays[i] for i in test.union(train)], params.near_duplicates.hash_size)
    position = {row: k for k, row in enumerate(test.union(train))}
    distance = near_duplicates.distances(hashes[[position[i] for i in test]], hashes[[position[i] for i in train]])
    pairs = []
    if len(test) and len(train):
        nearest = distance.argmin(axis=1)
        table.loc[test, "near_distance"] = distance[np.arange(len(test)), nearest]
        close = distance[np.arange(len(test)), nearest] <= params.near_duplicates.max_distance
        table.loc[test[close], "near_duplicate_of"] = table.loc[train[nearest[close]], "path"].to_numpy()
        for t, r in zip(*np.nonzero(distance <= params.near_duplicates.max_distance)):
            pairs.append(
                {
                    "test_path": table.at[test[t], "path"],
                    "train_path": table.at[train[r], "path"],
                    "train_split": table.at[train[r], "split"],
                    "distance": int(distance[t, r]),
                }
            )
    return pd.DataFrame(pairs, columns=["test_path", "train_path", "train_split", "distance"])


def _assign_splits(table: pd.DataFrame, params: PrepareParams) -> None:
    """Stratified, seeded train/val split over groups of identical images, so no copy straddles both."""
    table.loc[(table["status"] == "ok") & (table["official_split"] == "test"), "split"] = "test"
    train = table[(table["status"] == "ok") & (table["official_split"] == "train")]
    groups = train.groupby("sha256", sort=False)["label"].first()
    _check_val_fraction(groups.value_counts(), params.val_fraction)
    _, val_hashes = train_test_split(
        groups.index.to_numpy(), test_size=params.val_fraction, stratify=groups.to_numpy(), random_state=params.seed
    )
    is_val = train["sha256"].isin(set(val_hashes))
    table.loc[train.index[is_val], "split"] = "val"
    table.loc[train.index[~is_val], "split"] = "train"


def _check_val_fraction(per_class: pd.Series, val_fraction: float) -> None:
    """A stratified split needs a photo of each class on each side; said here in one line, not by scikit-learn."""
    if len(per_class) == 0:
        raise InspectionError("no usable images in the official train split (all rejected or dropped); check the data")
    if per_class.min() < 2:
        raise InspectionError("too few train images per class to carve a validation split; check the data")
    total, classes = int(per_class.sum()), len(per_class)
    val = math.ceil(val_fraction * total)  # as scikit-learn rounds it
    if not classes <= val <= total - classes:
        raise InspectionError(
            f"prepare.val_fraction={val_fraction:g} puts {val} of {total} distinct train photos in validation: each side "
            f"needs at least one photo of each of the {classes} classes; choose a share nearer 0.15"
        )


def _assign_line_splits(table: pd.DataFrame, arrays: list, params: PrepareParams) -> None:
    """The plant's photos: a copy (exact or pHash-near) of an official test photo is dropped (it would leak);
    the rest, in groups of near copies so none straddles two splits, go to line_test (held out, the plant's
    own test set), validation and training. Never into the official test split."""
    table["source"] = np.where(table["official_split"] == "line", "line", "kaggle")
    rows = table.index[(table["official_split"] == "line") & (table["status"] == "ok")]
    if len(rows) == 0:
        return
    test = table.index[(table["source"] == "kaggle") & (table["status"] == "ok")]  # every official photo in use
    indices = list(rows) + list(test)
    hashes = near_duplicates.perceptual_hashes([arrays[i] for i in indices], params.near_duplicates.hash_size)
    close = near_duplicates.distances(hashes, hashes) <= params.near_duplicates.max_distance
    leaks = (
        close[: len(rows), len(rows) :].any(axis=1)
        | table.loc[rows, "sha256"].isin(set(table["sha256"][table["source"] == "kaggle"])).to_numpy()
    )
    table.loc[rows[leaks], ["status", "reason"]] = ["dropped", "a copy of an official test or train photo"]
    keep = rows[~leaks]
    group = _components(close[: len(rows), : len(rows)][np.ix_(~leaks, ~leaks)])
    rng = np.random.default_rng(params.seed)
    order = rng.permutation(group.max() + 1) if len(group) else np.array([], int)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    share = rank[group] / max(len(order), 1)
    line = params.line
    table.loc[keep, "split"] = np.where(
        share < line.test_fraction,
        "line_test",
        np.where(share < line.test_fraction + (1 - line.test_fraction) * params.val_fraction, "val", "train"),
    )


def _components(adjacent: np.ndarray) -> np.ndarray:
    """Connected components of a symmetric boolean adjacency matrix: a group id per node."""
    group = np.full(len(adjacent), -1)
    for start in range(len(adjacent)):
        if group[start] >= 0:
            continue
        stack, group[start] = [start], start
        while stack:
            node = stack.pop()
            for other in np.flatnonzero(adjacent[node] & (group < 0)):
                group[other] = start
                stack.append(other)
    return np.unique(group, return_inverse=True)[1]


def _summary(table: pd.DataFrame) -> dict:
    counts = {}
    for split in CACHE_SPLITS:
        rows = table[table["split"] == split]
        counts[split] = {label: int((rows["label"] == label).sum()) for label in CLASS_NAMES} | {"total": len(rows)}
    official = table["official_split"]
    dup = table["duplicate_of"] != ""
    line_rows = table[table["source"] == "line"]
    return {
        "images": len(table),
        **counts,
        "line": {  # the plant's own photos (data/line): where they went
            "photos": len(line_rows),
            **{split: int((line_rows["split"] == split).sum()) for split in ("train", "val", "line_test")},
            "dropped": int((line_rows["status"] == "dropped").sum()),
            "rejected": int((line_rows["status"] == "rejected").sum()),
        },
        "rejected": int((table["status"] == "rejected").sum()),
        "dropped": int((table["status"] == "dropped").sum()),
        "duplicates": {
            "within_train": int((dup & (official == "train") & ~table["duplicate_of"].str.startswith("test/")).sum()),
            "within_test": int((dup & (official == "test")).sum()),
        },
        "leaked": {
            "test_images": int(table["leaked"].sum()),
            "train_copies": int(((official == "train") & table["duplicate_of"].str.startswith("test/")).sum()),
        },
        "near_duplicates": {
            "test_images": int((table["near_duplicate_of"] != "").sum()),
            "test_images_leak_free": int(
                ((table["split"] == "test") & ~table["leaked"] & (table["near_duplicate_of"] == "")).sum()
            ),
        },
    }
