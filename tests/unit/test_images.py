"""Each kind of bad input gets its own reason; good images come out resized in the configured mode."""

from __future__ import annotations

import dataclasses
import io
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from casting_inspection.core.params import load_section
from casting_inspection.data.images import BadImage, load_image
from helpers import PROJECT, jpeg_bytes, part_image, rle8_bmp

PARAMS = load_section("prepare", PROJECT / "params.yaml")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: a decompression bomb as far as any decoder can tell."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_good_jpeg_is_resized_to_grayscale():
    array, size = load_image(jpeg_bytes(part_image(True, 1, size=300)), PARAMS)
    assert size == (300, 300)
    assert array.shape == (1, PARAMS.image_size, PARAMS.image_size) and array.dtype.name == "uint8"


def test_rgb_input_in_rgb_mode():
    params = type(PARAMS)(**{**PARAMS.__dict__, "color_mode": "RGB"})
    array, _ = load_image(encoded(part_image(False, 2).convert("RGB"), "PNG"), params)
    assert array.shape == (3, PARAMS.image_size, PARAMS.image_size)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not a picture", "not an image"),
        (jpeg_bytes(part_image(False, 3, size=300))[:3000], "truncated or corrupt image data"),
        (encoded(Image.new("CMYK", (64, 64)), "JPEG"), "unsupported colour mode CMYK"),
        (encoded(Image.new("L", (8, 8)), "PNG"), "too small: 8x8"),
        (png_header_only(6000, 6000), "absurd size: 6000x6000 is over prepare.max_pixels"),
        (png_header_only(100_000, 100_000), "absurd size"),
    ],
    ids=["empty", "not-image", "truncated", "cmyk", "tiny", "huge", "bomb"],
)
def test_bad_inputs_are_rejected_with_a_reason(data, reason):
    with pytest.raises(BadImage) as caught:
        load_image(data, PARAMS)
    assert reason in str(caught.value)


def damaged(data: bytes, offset: int, count: int) -> bytes:
    """`count` bytes of the first scan's data, from `offset` on, zeroed: a disk's or a transfer's damage."""
    at = data.index(b"\xff\xda") + offset
    return data[:at] + bytes(count) + data[at + count :]


def test_a_jpeg_whose_scan_data_is_damaged_is_refused_not_decided_on_wrong_pixels():
    """Before: Pillow decoded it without a word (libjpeg's warning is not surfaced), grey or shifted blocks in place
    of the part, and it was decided as a photo of the part."""
    for seed in (4, 5):
        for grey in (False, True):
            image = part_image(True, seed, size=300)
            good = jpeg_bytes(image if grey else image.convert("RGB"))
            load_image(good, PARAMS)
            with pytest.raises(
                BadImage, match=r"^JPEG data libjpeg-turbo cannot decode cleanly \(ValueError: Corrupt JPEG data: .*again$"
            ):
                load_image(damaged(good, len(good) // 2, 200), PARAMS)


def test_a_large_jpeg_with_little_memory_left_is_a_reason_or_a_photo_never_a_traceback(tmp_path):
    """Before: the strict check decoded the whole picture a second time (its min_factor alone scales nothing), and a
    5000 x 5000 JPEG with 140 MB of address space left ended in a bare MemoryError instead of a reason."""
    photo = tmp_path / "large.jpeg"
    Image.effect_noise((4992, 4992), 40).convert("RGB").save(photo, quality=90)
    script = f"""
import resource, sys
from pathlib import Path
from casting_inspection.core.params import load_section
from casting_inspection.data.images import BadImage, load_image
from casting_inspection.data.prepare import image_spec
spec, data = image_spec(load_section("prepare", Path({str(PROJECT / "params.yaml")!r}))), open({str(photo)!r}, "rb").read()
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (140 << 20), resource.RLIM_INFINITY))
try:
    print("decided", load_image(data, spec)[1])
except BadImage as exc:
    print("refused", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(("decided (4992, 4992)", "refused image too large")), done.stderr[
        -800:
    ]


def test_pillows_own_cap_is_named_as_the_limit_when_max_pixels_is_above_it():
    """prepare.max_pixels above Pillow's cap (89.5 M pixels) cannot raise it: the reason names the cap that refused."""
    roomy = dataclasses.replace(PARAMS, max_pixels=200_000_000)
    with pytest.raises(BadImage) as caught:
        load_image(png_header_only(10_000, 10_000), roomy)
    assert (
        str(caught.value)
        == f"absurd size: over {Image.MAX_IMAGE_PIXELS} pixels, the most any photo may have (decompression bomb?)"
    )
    with pytest.raises(BadImage, match=f"over {PARAMS.max_pixels} pixels, the most"):
        load_image(png_header_only(100_000, 100_000), PARAMS)


def test_decoding_work_is_bounded_by_the_formats_cost_not_only_by_pixels():
    """Pillow pads each run-length row in a Python loop: a 2 kB file of 4,000 x 4,000 would cost seconds."""
    from casting_inspection.data.prepare import image_spec

    spec = dataclasses.replace(image_spec(PARAMS), allowed_modes=["L", "P"])
    bomb = rle8_bmp(4000, 4000, 300)
    assert len(bomb) < 3000
    with pytest.raises(BadImage, match="too costly to decode: 4000x4000"):
        load_image(bomb, spec)
    array, size = load_image(rle8_bmp(64, 64, 64), spec)  # a small run-length photo is still decoded
    assert size == (64, 64) and array.shape == (1, spec.image_size, spec.image_size)


def repeated_last_scan(image: Image.Image, copies: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: a few kB more, a pass over every pixel more for each copy."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * copies + data[end:]


def test_a_jpeg_of_many_scans_costs_what_its_scans_cost():
    """A camera's progressive JPEG has a dozen scans at most; a crafted one repeats a scan until decoding takes minutes."""
    from casting_inspection.data.prepare import image_spec

    spec, photo = image_spec(PARAMS), Image.new("L", (1000, 1000), 128)  # an even grey: each scan a few bytes
    crafted = repeated_last_scan(photo, 400)
    assert len(crafted) < 100_000
    with pytest.raises(BadImage, match=r"too costly to decode: 1000x1000 as a JPEG of 40\d scans, 3\dx the work"):
        load_image(crafted, spec)
    assert load_image(repeated_last_scan(photo, 0), spec)[1] == (1000, 1000)  # a camera's progressive JPEG: decoded
    with pytest.raises(
        BadImage, match=r"^JPEG data libjpeg-turbo cannot decode cleanly .*Inconsistent progression sequence"
    ):  # under the cost
        load_image(repeated_last_scan(photo, 6), spec)  # limit, but a scan repeated is no JPEG a camera writes


@pytest.mark.parametrize("fmt", ["PNG", "MPO"], ids=["animated PNG", "multi-picture JPEG"])
def test_a_file_of_several_pictures_is_refused_never_judged_on_its_first(fmt):
    """A viewer may show another picture than the first (an animation's frames, an MPO's second image): a part is
    judged on the one picture it is, so such a file is refused with its reason."""
    from casting_inspection.data.prepare import image_spec

    good, bad = part_image(False, seed=1, size=128), part_image(True, seed=2, size=128)
    buffer = io.BytesIO()
    good.save(buffer, fmt, save_all=True, append_images=[bad])
    with pytest.raises(BadImage, match="holds 2 pictures .*: save one photo per file"):
        load_image(buffer.getvalue(), image_spec(PARAMS))
    single = io.BytesIO()
    good.save(single, fmt)  # one picture: an ordinary PNG or JPEG
    assert load_image(single.getvalue(), image_spec(PARAMS))[1] == (128, 128)


def test_a_cameras_jpeg_with_its_previews_or_a_trailer_is_the_jpeg_it_is():
    """Previews a camera stores after the photo (a multi-picture JPEG whose other pictures are smaller), and what a phone
    appends after the image's end (a motion photo's video), hold bytes that look like markers: neither is refused."""
    import random

    from casting_inspection.data.images import jpeg_scans
    from casting_inspection.data.prepare import image_spec

    photo, preview = part_image(False, seed=1, size=400), part_image(False, seed=1, size=160)
    with_previews = io.BytesIO()
    photo.save(with_previews, "MPO", save_all=True, append_images=[preview])
    assert load_image(with_previews.getvalue(), image_spec(PARAMS))[1] == (400, 400)
    plain = io.BytesIO()
    photo.save(plain, "JPEG", quality=90)
    trailer = random.Random(0).randbytes(300_000)
    assert trailer.count(b"\xff\xda") > 0 and jpeg_scans(plain.getvalue() + trailer) == 1
    assert load_image(plain.getvalue() + trailer, image_spec(PARAMS))[1] == (400, 400)


def test_scans_are_counted_as_the_decoder_reads_them_whatever_lies_between():
    """A stray byte between segments (libjpeg skips it) hides no scan; a long run of 0xFF fill bytes is walked once."""
    from casting_inspection.data.images import jpeg_scans
    from casting_inspection.data.prepare import image_spec

    crafted = repeated_last_scan(Image.new("L", (1000, 1000), 128), 400)
    app0_end = 4 + int.from_bytes(crafted[4:6], "big")
    with_junk = crafted[:app0_end] + b"\x00" + crafted[app0_end:]
    assert jpeg_scans(with_junk) == jpeg_scans(crafted) > 400
    with pytest.raises(BadImage, match="too costly to decode"):
        load_image(with_junk, image_spec(PARAMS))
    head = crafted[: crafted.index(b"\xff\xda") + 20]
    assert jpeg_scans(head + b"\xff" * 200_000 + b"\x00") == 1  # quadratic, this would take minutes
