"""What the tests share: small generated photos of a 'part' (a disc on a plain background, never the real data set),
the fast params, the project's environment, and the import graph the architecture checks read."""

from __future__ import annotations

import ast
import io
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from ruamel.yaml import YAML

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "src"))

PACKAGE = PROJECT / "src/casting_inspection"

# Small, fast settings for pipeline tests; everything else comes from the real params.yaml.
FAST_PARAMS = {
    "prepare": {"image_size": 32, "min_side": 16, "val_fraction": 0.25},
    "train": {
        "cnn": {"widths": [8, 16], "convs_per_block": 1, "stem_stride": 1, "dropout": 0.0},
        "epochs": 3,
        "batch_size": 16,
        "lr": 3.0e-3,
    },
    "anomaly": {
        "input_size": 64,
        "patches": 4000,
        "coreset": 256,
        "batch_size": 32,
        "flaws": {"epochs": 60, "width": 16, "batch_size": 16},
    },
    "evaluate": {"batch_size": 32},
    "robustness": {"batch_size": 32, "workers": 1},  # a pool's start costs more than 17 photos (test_perturbations runs one)
    "export": {"batch_size": 32},
}


def part_image(defective: bool, seed: int, size: int = 64) -> Image.Image:
    """A gray disc with a hub; a defective one has a dark notch on its rim."""
    rng = np.random.default_rng(seed)
    background = rng.normal(200, 6, (size, size)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background, "L")
    draw = ImageDraw.Draw(image)
    c = size / 2 + rng.uniform(-2, 2)
    r = size * 0.38
    draw.ellipse([c - r, c - r, c + r, c + r], fill=int(rng.integers(95, 115)))
    draw.ellipse([c - r / 3, c - r / 3, c + r / 3, c + r / 3], fill=50)
    if defective:
        angle = rng.uniform(0, 2 * np.pi)
        x, y = c + 0.8 * r * np.cos(angle), c + 0.8 * r * np.sin(angle)
        draw.ellipse([x - size / 12, y - size / 12, x + size / 12, y + size / 12], fill=20)
    return image


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def kaggle_files(n_train: int = 24, n_test: int = 8) -> dict[str, bytes]:
    """Archive member name -> bytes, in the Kaggle layout, with one test image leaked from train."""
    files = {}
    seed = 0
    for split, n in (("train", n_train), ("test", n_test)):
        for label, short in (("def_front", "def"), ("ok_front", "ok")):
            for i in range(n):
                seed += 1
                name = f"casting_data/casting_data/{split}/{label}/cast_{short}_0_{i}.jpeg"
                files[name] = jpeg_bytes(part_image(label == "def_front", seed))
    files["casting_data/casting_data/test/ok_front/cast_ok_0_leak.jpeg"] = files[
        "casting_data/casting_data/train/ok_front/cast_ok_0_0.jpeg"
    ]
    files["casting_512x512/casting_512x512/def_front/cast_def_0_0.jpeg"] = jpeg_bytes(part_image(True, 999))
    return files


def rle8_bmp(width: int, height: int, rows: int) -> bytes:
    """A run-length BMP (BI_RLE8) of grey runs, one end-of-line escape per row: a few bytes for many pixels."""
    body = b"".join(bytes([min(width, 255), 128]) + b"\x00\x00" for _ in range(rows)) + b"\x00\x01"
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + len(dib) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + dib + palette + body


def write_raw(raw: Path, **sizes: int) -> Path:
    """The generated photos unpacked as the download stage leaves them: raw/{train,test}/{def_front,ok_front}/."""
    for name, data in kaggle_files(**sizes).items():
        if name.startswith("casting_data/"):
            path = raw / name.removeprefix("casting_data/casting_data/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return raw


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def write_params(path: Path, override: dict) -> None:
    yaml = YAML()
    data = yaml.load((PROJECT / "params.yaml").read_text())
    merge(data, override)
    with open(path, "w") as f:
        yaml.dump(data, f)


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a stage: this interpreter's `python` and `dvc` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CASTING_ARCHIVE", None)
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env or project_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def fast_section(section: str, folder: Path):
    """A params section from the real params.yaml with FAST_PARAMS laid over it, as its typed dataclass."""
    from casting_inspection.core.params import load_section

    path = folder / "params.yaml"
    write_params(path, FAST_PARAMS)
    return load_section(section, path)


def _module_file(dotted: str) -> Path | None:
    """casting_inspection.a.b -> its file (a module or a package's __init__), or None outside the project."""
    if dotted != "casting_inspection" and not dotted.startswith("casting_inspection."):
        return None
    path = PACKAGE.joinpath(*dotted.split(".")[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Dotted names of everything `path` imports (at any depth of the file), modules and `from x import y` alike."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def local_imports(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """The project's own files that running `path` loads, followed transitively, package __init__ files included."""
    seen = set() if seen is None else seen
    for name in imported_names(path):
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, then a/b/c
            module = _module_file(".".join(parts[:depth]))
            if module is not None and module not in seen:
                seen.add(module)
                local_imports(module, seen)
    return seen


def third_party(path: Path) -> set[str]:
    """Top-level third-party packages imported by `path` and the project files it loads."""
    files = {path} | local_imports(path)
    return {name.split(".")[0] for f in files for name in imported_names(f) if not name.startswith("casting_inspection")}


def room(path: Path) -> str | None:
    relative = path.relative_to(PACKAGE).parts
    return relative[0] if len(relative) > 1 else None


def new_project(repo: Path) -> Path:
    """The project's pipeline (dvc.yaml, stages, src) in a fresh git + DVC repository at `repo`, with fast params."""
    repo.mkdir()
    for name in ("dvc.yaml", "stages", "src", ".gitignore", "data/line"):
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, repo / name)
    write_params(repo / "params.yaml", FAST_PARAMS)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "test@example.com"], repo)
    run(["git", "config", "user.name", "test"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.autostage", "true"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo


def copy_project(repo: Path, dest: Path) -> Path:
    """A repository of its own: git, DVC's cache and the workspace, byte for byte."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def line_video(path: Path, photos: list[np.ndarray], size=(320, 192), fps: float = 30, step: int = 48, pause: int = 2,
               gap: int = 1, belt: int = 60, seed: int = 0, lead: int = 0) -> list[int]:  # fmt: skip
    """A conveyor filmed from above: each photo (H, W, 3 BGR uint8) rides in from the left, stops `pause` frames at the
    centre, rides out to the right; `gap` empty frames before each part, `lead` more before the first. Written with OpenCV (MJPEG in AVI), read back by
    the station through FFmpeg as a camera's file would be. Returns the frame on which each part first stops."""
    import cv2

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    rng = np.random.default_rng(seed)
    stops, frame_count = [], 0

    def frame(photo=None, cx=0):
        nonlocal frame_count
        canvas = rng.normal(belt, 3, (height, width, 3)).clip(0, 255).astype(np.uint8)
        if photo is not None:
            side = photo.shape[0]
            left, top = cx - side // 2, (height - side) // 2
            a, b = max(0, left), min(width, left + side)
            if b > a:
                canvas[top : top + side, a:b] = photo[:, a - left : b - left]
        writer.write(canvas)
        frame_count += 1

    for _ in range(lead):
        frame()
    for photo in photos:
        for _ in range(gap):  # the first frames teach the station the empty view
            frame()
        side = photo.shape[0]
        for cx in range(-side // 2 + step // 2, width // 2, step) if step > 0 else ():  # step 0: an indexing table
            frame(photo, cx)
        stops.append(frame_count)
        for _ in range(pause):
            frame(photo, width // 2)
        for cx in range(width // 2 + step, width + side // 2, step) if step > 0 else ():
            frame(photo, cx)
    writer.release()
    return stops
