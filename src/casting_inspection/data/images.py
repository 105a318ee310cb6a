"""Decode, check and resize one image: the single preprocessing path for training and prediction.

One decoding policy for every consumer: a file is read only if it is small enough and in a format on the
allow-list (what a line camera writes), its pixel count is checked from the header before any pixel is
decoded, and every decoder failure becomes a `BadImage` with a one-line reason. Pillow is never asked to
try other formats, so no external program (Ghostscript for EPS) and no exotic decoder ever sees an input.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError


class BadImage(Exception):
    """The reason an input file cannot be used, worded for a rejection list."""


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What an input image must be and how it is resized: from `prepare` params, carried by the checkpoint and
    the ONNX metadata, so that every consumer of the model checks and resizes exactly as training did."""

    image_size: int
    color_mode: str
    allowed_modes: list[str]
    min_side: int
    max_pixels: int
    allowed_formats: list[str]
    max_file_bytes: int


def walk_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every regular file under `folder` whatever its name (a camera's photo may have any suffix or none), sorted,
    links to files included; and every entry that looks like one but cannot be decided, with why (an unreadable
    folder, a pipe, a socket, a broken link): nothing under the folder is passed over without a word."""
    files, problems = [], []

    def unreadable(exc: OSError) -> None:
        problems.append((str(exc.filename), f"folder cannot be read ({exc.strerror}); its photos were not looked at"))

    for root, dirs, names in os.walk(folder, onerror=unreadable):
        dirs.sort()
        for name in [d for d in dirs if (Path(root) / d).is_symlink()]:
            problems.append((str(Path(root) / name), "a link to a folder, not followed: give the folder itself"))
        for name in names:
            path = Path(root) / name
            reason = entry_problem(path)
            files.append(path) if reason is None else problems.append((str(path), reason))
    return sorted(files), sorted(problems)


PHOTO_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif"}
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP  ")


def looks_like_photo(path: Path) -> bool:
    """Whether a folder's file is meant as a photo: an image's name, or an image's first bytes whatever its name (a
    camera's suffixless or `.jfif` file). A file that cannot be opened counts as one: its reason is then told."""
    if path.suffix.lower() in PHOTO_SUFFIXES:
        return True
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return True
            head = f.read(16)
    except OSError:
        return True
    if not head:  # an empty file may be a camera's failed write: told as one
        return True
    return head.startswith(SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or head[4:8] == b"ftyp"  # HEIF, AVIF


def entry_problem(path: Path) -> str | None:
    """Why a folder entry that looks like a photo cannot be read as one, or None for a regular file (or a link to
    one). Never raises: a folder that cannot be searched is a reason too."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "a broken link: its photo is missing" if path.is_symlink() else "gone before it could be read"
    except OSError as exc:
        return f"cannot be reached ({exc.strerror})"
    return None if stat.S_ISREG(info.st_mode) else "not a regular file (a pipe, socket or device)"


def read_photo(path: Path, max_bytes: int) -> bytes:
    """A photo file's bytes, read the one way every consumer reads one: never blocking on a pipe, never a
    device or socket, and never more than `max_bytes` (a bigger file is refused before it fills memory)."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BadImage("not a regular file (a pipe, socket or device)")
            size = info.st_size
            data = f.read(max_bytes + 1) if size <= max_bytes else b""
    except IsADirectoryError:
        raise BadImage("a folder, not a photo") from None
    except OSError as exc:
        raise BadImage(f"cannot read ({exc.strerror})") from None
    if size > max_bytes or len(data) > max_bytes:
        raise BadImage(f"file too large: {max(size, len(data))} bytes is over prepare.max_file_bytes={max_bytes}")
    return data


RLE_BMP_COST = 50  # Pillow decodes run-length BMP in a Python loop, about 50x slower per pixel than libjpeg
JPEG_SCANS = 12  # scans a camera's progressive JPEG has at most (libjpeg's own script: 6 grey, 10 colour); each more
# scan is another pass over every pixel's coefficients, so a crafted file of a few kB can repeat one scan thousands of times


def _decoding_cost(image: Image.Image, data: bytes) -> tuple[int, str]:
    """How many times a plain JPEG pixel one pixel of this file costs to decode, and as what, from its header and
    markers: the pixel budget (prepare.max_pixels) bounds the work, not only the memory."""
    if image.format == "BMP" and image.info.get("compression") in (1, 2):  # BI_RLE8, BI_RLE4
        return RLE_BMP_COST, "a run-length BMP"
    if image.format in ("JPEG", "MPO"):
        scans = jpeg_scans(data)
        return max(1, -(-scans // JPEG_SCANS)), f"a JPEG of {scans} scans"
    return 1, image.format


_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")  # in entropy-coded data: 0xFF 0x00 is a byte, RSTn a
# restart, 0xFF 0xFF a fill; the 0xFF before any other byte starts a marker (a lookahead: linear time on runs of 0xFF)


def jpeg_scans(data: bytes) -> int:
    """The start-of-scan markers of a JPEG's first image, walked segment by segment as libjpeg reads them (bytes between
    segments skipped to the next 0xFF): bytes inside other segments (an EXIF thumbnail) or after its end (a phone's
    appended video) are not scans."""
    at, scans = 2, 0
    while (at := data.find(b"\xff", at)) >= 0 and at + 4 <= len(data):
        marker = data[at + 1]
        if marker == 0xD9:  # end of image
            break
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker in (0x00, 0x01):  # fill byte, restart, stuffed, TEM
            at += 1 if marker == 0xFF else 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            scans += 1
            found = _NEXT_MARKER.search(data, at)
            if found is None:
                break
            at = found.start()
    return scans


def _previews_only(image: Image.Image) -> bool:
    """A multi-picture JPEG whose other pictures are all smaller than the first: a camera's own previews. Every viewer
    shows the first picture, so that one is judged."""
    width, height = image.size
    try:
        for frame in range(1, image.n_frames):
            image.seek(frame)
            if image.size[0] >= width or image.size[1] >= height:
                return False
        return True
    except Exception:  # a crafted index: not known to hold previews only
        return False
    finally:
        image.seek(0)


def _one_image(image: Image.Image, spec: ImageSpec) -> None:
    """A file holds one photo in an accepted format: an animation, or a multi-picture JPEG with a second photo as large
    as the first, would be judged on one picture while a viewer may show another, so it is refused, never decided on its
    first. A JPEG carrying its camera's smaller previews (MPO) is the JPEG it is."""
    frames = getattr(image, "n_frames", 1)
    if image.format == "MPO" and "JPEG" in spec.allowed_formats and _previews_only(image):
        return
    if frames > 1:
        raise BadImage(f"holds {frames} pictures (an animation or a multi-picture file): save one photo per file")
    if image.format not in spec.allowed_formats:
        raise BadImage(f"not an image in an accepted format ({', '.join(spec.allowed_formats)}): it reads as {image.format}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return f"{type(exc).__name__}: {text[:200]}"


def _open(data: bytes, spec: ImageSpec) -> Image.Image:
    """Read the header only, with nothing but the allowed format plugins."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=list(spec.allowed_formats))
        except UnidentifiedImageError:
            raise BadImage(f"not an image in an accepted format ({', '.join(spec.allowed_formats)})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own cap, whatever max_pixels says
            limit = min(spec.max_pixels, Image.MAX_IMAGE_PIXELS or spec.max_pixels)
            raise BadImage(f"absurd size: over {limit} pixels, the most any photo may have (decompression bomb?)") from None
        except Exception as exc:  # a crafted header can make any plugin raise anything
            raise BadImage(f"unreadable image header ({_one_line(exc)})") from None


def load_image(data: bytes, spec: ImageSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Return the image as a uint8 array of shape (C, size, size) and its original (width, height)."""
    if not data:
        raise BadImage("empty file")
    if len(data) > spec.max_file_bytes:
        raise BadImage(f"file too large: {len(data)} bytes is over prepare.max_file_bytes={spec.max_file_bytes}")
    image = _open(data, spec)
    _one_image(image, spec)
    width, height = image.size
    if width * height > spec.max_pixels:
        raise BadImage(f"absurd size: {width}x{height} is over prepare.max_pixels={spec.max_pixels}")
    cost, kind = _decoding_cost(image, data)
    if width * height * cost > spec.max_pixels:
        raise BadImage(
            f"too costly to decode: {width}x{height} as {kind}, {cost}x the work of a plain JPEG "
            f"(at most {spec.max_pixels // cost} pixels; prepare.max_pixels={spec.max_pixels})"
        )
    if min(width, height) < spec.min_side:
        raise BadImage(f"too small: {width}x{height} is under prepare.min_side={spec.min_side}")
    if image.mode not in spec.allowed_modes:
        raise BadImage(
            f"unsupported colour mode {image.mode} (prepare.allowed_modes: {', '.join(spec.allowed_modes)}): "
            "save the photos as 8-bit grey or RGB"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image.load()
        except MemoryError:
            raise BadImage("image too large to decode in the memory available") from None
        except Exception as exc:  # libjpeg, zlib and Pillow's own checks each raise their own types
            raise BadImage(f"truncated or corrupt image data ({_one_line(exc)})") from None
    if image.format in ("JPEG", "MPO"):
        _intact_jpeg(data, image.mode)
    try:
        return preprocess(image, spec.image_size, spec.color_mode), (width, height)
    except MemoryError:
        raise BadImage("image too large to decode in the memory available") from None


def _intact_jpeg(data: bytes, mode: str) -> None:
    """libjpeg gets past damaged scan data with a warning and decodes grey or shifted blocks, and Pillow shows no
    warning: such a photo shows what the camera did not see. simplejpeg's strict decode raises on any warning (at an
    eighth of the side: the entropy decoding, where damage shows, is whole; the first picture only, as Pillow's)."""
    colorspace = {"L": "GRAY", "CMYK": "CMYK"}.get(mode, "RGB")
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True, min_factor=8, min_height=1, min_width=1)
    except ValueError as exc:
        raise BadImage(
            f"JPEG data libjpeg-turbo cannot decode cleanly ({_one_line(exc)}): damaged in storage or transfer, or "
            "written by an unusual encoder; copy or take the photo again"
        ) from None
    except (MemoryError, RuntimeError):  # simplejpeg's own "could not create JPEG decoder" is a failed allocation
        raise BadImage("image too large to decode in the memory available") from None


def preprocess(image: Image.Image, image_size: int, color_mode: str) -> np.ndarray:
    """Colour mode and resize only; standardisation is inside the network."""
    resized = image.convert(color_mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)
