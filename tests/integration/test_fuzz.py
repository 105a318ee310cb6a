"""Hostile files: seeded mutations of good JPEG, PNG and BMP photos, and crafted files in other formats, are each
decided or skipped with a one-line reason, never a traceback; the good files between them are still decided.

The mutation and crafting helpers are also used by bench/bench_fuzz.py.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from casting_inspection.core.decision import DECISIONS
from helpers import fast_section, part_image, project_env, write_raw

SEED = 20261123
FORMATS = ("JPEG", "PNG", "BMP")
SUFFIX = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp"}
EXTREMES = (0, 1, 15, 4096, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
# (offset, struct code) of header fields; JPEG offsets count from the SOF marker
HEADER_FIELDS = {
    "PNG": [(16, ">I"), (20, ">I"), (24, ">B"), (25, ">B"), (26, ">B"), (27, ">B"), (28, ">B")],
    "JPEG": [(2, ">H"), (4, ">B"), (5, ">H"), (7, ">H"), (9, ">B")],
    "BMP": [
        (2, "<I"),
        (10, "<I"),
        (14, "<I"),
        (18, "<I"),
        (22, "<I"),
        (26, "<H"),
        (28, "<H"),
        (30, "<I"),
        (34, "<I"),
        (46, "<I"),
    ],
}
CLI = [sys.executable, "-m", "casting_inspection.serving.cli"]


# --- encodings and mutations ---------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str) -> bytes:
    """The image as a file in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def good_image(seed: int, fmt: str) -> bytes:
    """A valid photo of a part: varied size, grey or colour, good or defective."""
    rng = np.random.default_rng(seed)
    image = part_image(bool(seed % 2), seed, size=int(rng.integers(40, 97)))
    return encode(image.convert("RGB") if rng.random() < 0.3 else image, fmt)


def good_files(seed: int, n: int) -> list[tuple[str, bytes]]:
    """`n` valid photos, cycling through the allowed formats."""
    return [(f"good_{seed}_{i:03d}.{SUFFIX[fmt]}", good_image(seed * 1000 + i, fmt)) for i, fmt in zip(range(n), FORMATS * n)]


def flip_bits(rng, data: bytes, fmt: str) -> bytes:
    """Flip 1 to 8 random bits."""
    out = bytearray(data)
    for _ in range(rng.integers(1, 9)):
        out[rng.integers(len(out))] ^= 1 << int(rng.integers(8))
    return bytes(out)


def overwrite(rng, data: bytes, fmt: str) -> bytes:
    """Overwrite a run of 1 to 16 bytes, mostly in the header, with 0x00, 0xFF or random bytes."""
    out = bytearray(data)
    start = int(rng.integers(min(len(out), 128) if rng.random() < 0.7 else len(out)))
    span = min(int(rng.integers(1, 17)), len(out) - start)
    fill = [b"\x00" * span, b"\xff" * span, rng.bytes(span)][rng.integers(3)]
    out[start : start + span] = fill
    return bytes(out)


def truncate(rng, data: bytes, fmt: str) -> bytes:
    """Cut the file at a random offset."""
    return data[: rng.integers(len(data))]


def parts(data: bytes, fmt: str) -> tuple[bytes, list[bytes]]:
    """The file as a prefix and its chunks (PNG), segments (JPEG; the scan to the end is one) or regions (BMP)."""
    if fmt == "PNG":
        chunks, pos = [], 8
        while pos < len(data):
            end = pos + 12 + struct.unpack_from(">I", data, pos)[0]
            chunks.append(data[pos:end])
            pos = end
        return data[:8], chunks
    if fmt == "JPEG":
        segments, pos = [], 2
        while pos < len(data) and data[pos + 1] != 0xDA:
            end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
            segments.append(data[pos:end])
            pos = end
        return data[:2], [*segments, data[pos:]]
    offset = struct.unpack_from("<I", data, 10)[0]
    pixels = data[offset:]
    step = max(1, len(pixels) // 4)
    return b"", [data[:14], data[14:offset], *(pixels[i : i + step] for i in range(0, len(pixels), step))]


def reshuffle(rng, data: bytes, fmt: str) -> bytes:
    """Duplicate or remove one chunk, segment or region."""
    prefix, pieces = parts(data, fmt)
    k = int(rng.integers(len(pieces)))
    pieces = pieces[: k + 1] + pieces[k:] if rng.random() < 0.5 else pieces[:k] + pieces[k + 1 :]
    return prefix + b"".join(pieces)


def sof_offset(data: bytes) -> int:
    """Where the JPEG frame header (SOF0/1/2 marker) starts."""
    return min(i for i in (data.find(m) for m in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2")) if i >= 0)


def set_header_field(rng, data: bytes, fmt: str) -> bytes:
    """Set one header field (size, bit depth, colour type, offsets...) to an extreme value."""
    out = bytearray(data)
    offset, code = HEADER_FIELDS[fmt][rng.integers(len(HEADER_FIELDS[fmt]))]
    offset += sof_offset(data) if fmt == "JPEG" else 0
    values = (*EXTREMES, int(rng.integers(2**32)))
    struct.pack_into(code, out, offset, values[rng.integers(len(values))] & (256 ** struct.calcsize(code) - 1))
    if fmt == "PNG" and rng.random() < 0.8:  # a valid CRC takes the decoder past the chunk check
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    return bytes(out)


BYTE_MUTATIONS = (flip_bits, overwrite, truncate)
MUTATIONS = (*BYTE_MUTATIONS, reshuffle, set_header_field)


def mutate(rng, data: bytes, fmt: str) -> tuple[bytes, str]:
    """One mutation of a valid file, sometimes followed by a byte-level one; returns the bytes and their names."""
    chosen = [MUTATIONS[rng.integers(len(MUTATIONS))]]
    if rng.random() < 0.5:  # structural mutations parse the file, so they only ever come first
        chosen.append(BYTE_MUTATIONS[rng.integers(len(BYTE_MUTATIONS))])
    for mutation in chosen:
        data = mutation(rng, data, fmt)
    return data, "+".join(m.__name__ for m in chosen)


def mutants(seed: int, per_format: int) -> list[tuple[str, bytes]]:
    """`per_format` mutated files of each allowed format, each from a fresh good photo."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(per_format):
        for fmt in FORMATS:
            data, names = mutate(rng, good_image(int(rng.integers(2**31)), fmt), fmt)
            files.append((f"fuzz_{seed}_{i:05d}_{names}.{SUFFIX[fmt]}", data))
    return files


def reason_category(error: str) -> str:
    """The kind of a skip reason, without its detail: 'truncated or corrupt image data', 'absurd size'..."""
    return re.split(r"[:(]", error, maxsplit=1)[0].strip()


# --- crafted hostile files -------------------------------------------------------------------------------------


def dds_bad_pixel_format() -> bytes:
    """A DDS texture whose pixel format says FOURCC 'XXXX' (NotImplementedError in Pillow's DDS plugin)."""
    data = bytearray(encode(part_image(False, 11).convert("RGB"), "DDS"))
    struct.pack_into("<II", data, 80, 0x4, int.from_bytes(b"XXXX", "little"))  # pfFlags = DDPF_FOURCC, fourCC
    return bytes(data)


def spider_stack_image() -> bytes:
    """A SPIDER file whose header says 'image within a stack' with no stack (AttributeError in Pillow)."""
    data = bytearray(encode(part_image(False, 12).convert("F"), "SPIDER"))
    struct.pack_into("<f", data, 26 * 4, 1.0)  # header word 27, IMGNUM
    return bytes(data)


def eps_file() -> bytes:
    """A small EPS drawing: Pillow hands EPS to Ghostscript (`gs`) when allowed to open it."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"


@functools.cache
def ico_bomb() -> bytes:
    """An ICO holding a blank 9000x9000 RGBA PNG (315 kB; 324 MB decoded): Pillow's ICO plugin decodes on open."""
    png = encode(Image.new("RGBA", (9000, 9000)), "PNG")
    directory = struct.pack("<HHH", 0, 1, 1)  # ICONDIR: reserved, type icon, one image
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)  # 0 = 256 px; size, offset of the PNG
    return directory + entry + png


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` with a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tiff_float_strip_offsets() -> bytes:
    """A TIFF whose StripOffsets tag has type FLOAT (TypeError in Pillow's TIFF plugin)."""
    data = bytearray(encode(part_image(False, 13), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        if struct.unpack_from("<H", data, ifd + 2 + 12 * k)[0] == 273:
            struct.pack_into("<H", data, ifd + 2 + 12 * k + 2, 11)
    return bytes(data)


REFUSED = "not an image in an accepted format"
# file name (as a camera folder might hold it) -> (how to make it, how its skip reason starts)
CRAFTED = {
    "dds_bad_pixel_format.jpg": (dds_bad_pixel_format, REFUSED),
    "spider_stack_image.png": (spider_stack_image, REFUSED),
    "eps_drawing.jpg": (eps_file, REFUSED),
    "ico_bomb_9000.jpg": (ico_bomb, REFUSED),
    "png_claims_60000x60000.png": (lambda: png_claiming(60000, 60000), "absurd size"),
    "tiff_float_strip_offsets.tif": (tiff_float_strip_offsets, REFUSED),
    "tiff_plain.tif": (lambda: encode(part_image(False, 14), "TIFF"), REFUSED),
    "gif_plain.jpg": (lambda: encode(part_image(True, 15), "GIF"), REFUSED),
    "webp_plain.webp": (lambda: encode(part_image(False, 16).convert("RGB"), "WEBP"), REFUSED),
}


def crafted_files() -> dict[str, bytes]:
    """File name -> hostile content."""
    return {name: make() for name, (make, _) in CRAFTED.items()}


# --- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inspector(exported_model):
    from casting_inspection.serving.inference import Inspector

    return Inspector(exported_model["onnx"])


@pytest.fixture
def gs_trap(tmp_path) -> tuple[dict, Path]:
    """An environment whose first `gs` on PATH is a stand-in that leaves a marker file when anything runs it."""
    folder, marker = tmp_path / "trap", tmp_path / "gs_ran"
    folder.mkdir()
    (folder / "gs").write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 1\n')
    (folder / "gs").chmod(0o755)
    env = project_env()
    env["PATH"] = f"{folder}{os.pathsep}{env['PATH']}"
    return env, marker


def interleave(bad: list[tuple[str, bytes]], seed: int) -> tuple[list[tuple[str, bytes]], set[str]]:
    """A good photo after every bad file; returns the list and the good names."""
    good = good_files(seed, len(bad))
    return [f for pair in zip(good, bad) for f in pair], {name for name, _ in good}


def assert_one_line(error: str, name: str) -> None:
    assert error.strip() and "\n" not in error and "\r" not in error, f"{name}: {error!r}"


# --- tests -----------------------------------------------------------------------------------------------------


def test_mutated_files_are_decided_or_skipped_and_the_good_ones_between_them_decided(inspector):
    files, good = interleave(mutants(SEED, per_format=150), SEED)
    results = inspector.inspect(files)
    assert [r.path for r in results] == [name for name, _ in files]
    for result in results:
        if result.path in good or not result.error:
            assert result.decision in DECISIONS and not result.error, result
        else:
            assert result.decision == "" and result.defect_probability is None
            assert_one_line(result.error, result.path)
    skipped = [r.error for r in results if r.error]
    assert len(skipped) >= 100  # the corpus exercises the refusals, not just the happy path
    assert len({reason_category(e) for e in skipped}) >= 4


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_file_is_skipped_with_its_reason(inspector, name):
    files, good = interleave([(name, CRAFTED[name][0]())], SEED + 1)
    results = inspector.inspect(files)
    assert all(r.decision in DECISIONS for r in results if r.path in good)
    (bad,) = [r for r in results if r.path == name]
    assert bad.decision == "" and bad.error.startswith(CRAFTED[name][1]), bad.error
    assert_one_line(bad.error, name)


def test_the_gs_trap_catches_pillow_left_to_guess(gs_trap, tmp_path):
    """Control: Pillow opening by content alone (no allow-list) runs `gs` on the EPS, so the trap is armed."""
    env, marker = gs_trap
    (tmp_path / "drawing.eps").write_bytes(eps_file())
    code = "import sys\nfrom PIL import Image\nImage.open(sys.argv[1]).load()"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "drawing.eps")], env=env, capture_output=True, timeout=60)
    assert marker.exists()


@pytest.mark.slow
def test_cli_predict_on_a_folder_of_hostile_files(exported_model, gs_trap, tmp_path):
    from casting_inspection.serving.cli import SKIPPED_EXIT

    env, marker = gs_trap
    folder = tmp_path / "inbox"
    folder.mkdir()
    hostile = mutants(SEED + 2, per_format=15) + list(crafted_files().items())
    files, good = interleave(hostile, SEED + 2)
    for name, data in files:
        (folder / name).write_bytes(data)
    (tmp_path / "drawing.eps").write_bytes(eps_file())
    cmd = [*CLI, "predict", str(folder), str(tmp_path / "drawing.eps"), "--model", str(exported_model["onnx"])]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    assert not [line for line in result.stderr.splitlines() if line[:1].isspace()], result.stderr  # one line each
    assert result.returncode == SKIPPED_EXIT, result.stderr
    rows = {Path(p).name for p in pd.read_csv(io.StringIO(result.stdout))["path"]}
    skipped = dict(re.findall(r"^skipped (.+?): (.+)$", result.stderr, flags=re.M))
    assert good <= rows
    assert rows | {Path(p).name for p in skipped} == {name for name, _ in files} | {"drawing.eps"}
    assert {*CRAFTED, "drawing.eps"} <= {Path(p).name for p in skipped}
    assert not marker.exists(), marker.read_text()


def test_prepare_lists_crafted_files_in_rejected_csv(gs_trap, tmp_path, monkeypatch):
    from casting_inspection.data.prepare import prepare_dataset

    env, marker = gs_trap
    monkeypatch.setenv("PATH", env["PATH"])  # the verify workers inherit it
    raw = write_raw(tmp_path / "raw", n_train=16, n_test=6)
    folders = ["train/def_front", "train/ok_front", "test/def_front", "test/ok_front"]
    expected = {}
    for k, (name, data) in enumerate(crafted_files().items()):
        path = f"{folders[k % len(folders)]}/{name}"
        (raw / path).write_bytes(data)
        expected[path] = CRAFTED[name][1]
    out = tmp_path / "prepared"
    summary = prepare_dataset(fast_section("prepare", tmp_path), raw, out, tmp_path / "data.json", tmp_path / "drift.json", 1)
    rejected = pd.read_csv(out / "rejected.csv").set_index("path")["reason"].to_dict()
    assert set(rejected) == set(expected) and summary["rejected"] == len(expected)
    for path, reason in rejected.items():
        assert reason.startswith(expected[path]), (path, reason)
        assert_one_line(reason, path)
    assert not marker.exists()
