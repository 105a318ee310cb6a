"""download from a local archive: zip or folder give identical trees; unsafe, oversized, encrypted or damaged
archives are refused with one line and leave nothing behind, as does SIGTERM during the extraction."""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from contextlib import nullcontext
from pathlib import Path

import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.params import load_section
from casting_inspection.data.download import fetch_raw_images
from helpers import PROJECT, kaggle_files, project_env, write_params, write_zip

PARAMS = load_section("download", PROJECT / "params.yaml")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_zip_and_folder_give_the_same_normalised_tree(tmp_path, kaggle_zip):
    counts = fetch_raw_images(PARAMS, tmp_path / "from_zip", str(kaggle_zip))
    assert counts == {"train/ok_front": 24, "train/def_front": 24, "test/ok_front": 9, "test/def_front": 8}
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(kaggle_zip).extractall(folder)
    fetch_raw_images(PARAMS, tmp_path / "from_folder", str(folder))
    zipped, copied = tree(tmp_path / "from_zip"), tree(tmp_path / "from_folder")
    assert zipped == copied
    assert all(name.split("/")[0] in ("train", "test") for name in zipped)  # casting_512x512 left out
    expected = {
        n.removeprefix("casting_data/casting_data/"): d for n, d in kaggle_files().items() if n.startswith("casting_data/")
    }
    assert zipped == expected


def _zip_with(tmp_path: Path, name: str, symlink: bool = False) -> Path:
    path = write_zip(tmp_path / "evil.zip", kaggle_files())
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd" if symlink else "owned")
    return path


@pytest.mark.parametrize(
    ("member", "symlink", "reason"),
    [
        ("casting_data/casting_data/train/ok_front/../../../../evil.jpeg", False, "path contains '..'"),
        ("/tmp/evil.jpeg", False, "absolute path"),
        ("casting_data/casting_data/train/ok_front/link.jpeg", True, "symbolic link"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_zip_slip_is_refused_before_anything_is_written(tmp_path, member, symlink, reason):
    archive = _zip_with(tmp_path, member, symlink)
    with pytest.raises(InspectionError, match="unsafe entry") as caught:
        fetch_raw_images(PARAMS, tmp_path / "raw", str(archive))
    assert reason in str(caught.value)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "evil.jpeg").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.zip"]


def test_symlink_in_folder_is_refused(tmp_path, kaggle_zip):
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(kaggle_zip).extractall(folder)
    (folder / "casting_data/casting_data/train/ok_front/link.jpeg").symlink_to("/etc/hostname")
    with pytest.raises(InspectionError, match="symbolic link"):
        fetch_raw_images(PARAMS, tmp_path / "raw", str(folder))
    assert not (tmp_path / "raw").exists()


def test_damaged_zip_is_refused(tmp_path, kaggle_zip):
    data = bytearray(kaggle_zip.read_bytes())
    offset = data.index(b"\xff\xd8") + 400  # inside the first JPEG member
    data[offset : offset + 8] = b"\0" * 8
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(InspectionError, match="CRC|damaged"):
        fetch_raw_images(PARAMS, tmp_path / "raw", str(damaged))
    assert not (tmp_path / "raw").exists()


def test_archive_without_a_class_folder(tmp_path):
    files = {n: d for n, d in kaggle_files().items() if "/test/ok_front/" not in n}
    archive = write_zip(tmp_path / "partial.zip", files)
    with pytest.raises(InspectionError, match="no images found for test/ok_front"):
        fetch_raw_images(PARAMS, tmp_path / "raw", str(archive))


def test_not_an_archive(tmp_path):
    bogus = tmp_path / "data.txt"
    bogus.write_text("hello")
    with pytest.raises(InspectionError, match="neither a zip archive nor a folder"):
        fetch_raw_images(PARAMS, tmp_path / "raw", str(bogus))


# --- hostile and broken archives, through the stage script as `dvc repro` runs it ----------------------
#
# Every archive is generated here and tiny on disk; the fields a hostile archive lies in (sizes, CRC,
# flags, compression method) are rewritten in the raw zip format, in the local header and the central
# directory alike.

_LOCAL = {"flags": (6, "<H"), "method": (8, "<H"), "crc": (14, "<I"), "compress_size": (18, "<I"), "file_size": (22, "<I")}
_CENTRAL = {"flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"), "compress_size": (20, "<I"), "file_size": (24, "<I")}
IMAGE = "casting_data/casting_data/train/ok_front/cast_ok_0_0.jpeg"  # an entry the stage extracts


def patch_entry(data: bytes, name: str, **fields: int) -> bytes:
    """The zip with these header fields of entry `name` rewritten, in its local header and central directory."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    encoded = name.encode()
    central = next(
        i
        for i in (m.start() for m in re.finditer(b"PK\x01\x02", data))
        if data[i + 46 : i + 46 + struct.unpack_from("<H", data, i + 28)[0]] == encoded
    )
    patched = bytearray(data)
    for field, value in fields.items():
        for base, layout in ((info.header_offset, _LOCAL), (central, _CENTRAL)):
            offset, fmt = layout[field]
            struct.pack_into(fmt, patched, base + offset, value)
    return bytes(patched)


def zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zipcrypto(plain: bytes, password: bytes) -> bytes:
    """Traditional PKWARE encryption (what `zip -P` writes): a 12-byte header ending in the CRC's high byte."""
    keys = [0x12345678, 0x23456789, 0x34567890]
    crc = lambda value, byte: zlib.crc32(bytes([byte]), value ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    def update(byte: int) -> None:
        keys[0] = crc(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = crc(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    out = bytearray()
    for byte in bytes(range(11)) + bytes([zlib.crc32(plain) >> 24]) + plain:
        temp = (keys[2] | 2) & 0xFFFF
        out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(out)


def encrypted_archive() -> bytes:
    files = kaggle_files(n_train=2, n_test=2)
    plain = files.pop(IMAGE)
    data = zip_bytes({**files, IMAGE: zipcrypto(plain, b"secret")}, zipfile.ZIP_STORED)
    data = patch_entry(data, IMAGE, flags=0x1, crc=zlib.crc32(plain), file_size=len(plain))
    assert zipfile.ZipFile(io.BytesIO(data)).read(IMAGE, pwd=b"secret") == plain  # a real encrypted entry
    return data


def lying_archive(crc_of: str) -> bytes:
    """An entry that declares 1,000 bytes and holds 2 MB of zeros (2 kB deflated): zipfile cuts it at 1,000
    bytes, so with `crc_of="declared"` the cut copy even passes its CRC check."""
    bomb = b"\0" * 2_000_000
    data = zip_bytes({**kaggle_files(n_train=2, n_test=2), IMAGE: bomb})
    return patch_entry(data, IMAGE, file_size=1000, crc=zlib.crc32(bomb if crc_of == "all" else bomb[:1000]))


def honest_bomb() -> bytes:
    """An entry that honestly declares 2 MB: far over a 1 MB cap, from a zip of a few kB."""
    return zip_bytes({**kaggle_files(n_train=2, n_test=2), IMAGE: b"\0" * 2_000_000})


def bad_crc() -> bytes:
    data = zip_bytes(kaggle_files(n_train=2, n_test=2))
    return patch_entry(data, IMAGE, crc=zipfile.ZipFile(io.BytesIO(data)).getinfo(IMAGE).CRC ^ 0x1)


def run_stage(tmp_path: Path, archive: Path, prefix: tuple | list = (), **download) -> subprocess.CompletedProcess:
    """`python stages/download.py --out data/raw` with CASTING_ARCHIVE=archive and these download params (`prefix`: a
    command it runs under, e.g. setpriv to drop root's override of file permissions)."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    write_params(project / "params.yaml", {"download": download})
    env = project_env(CASTING_ARCHIVE=str(archive), PYTHONPATH=str(PROJECT / "src"), PYTHONDONTWRITEBYTECODE="1")
    command = [*prefix, sys.executable, str(PROJECT / "stages" / "download.py"), "--out", str(tmp_path / "data" / "raw")]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)


def assert_refused(result: subprocess.CompletedProcess, data: Path, *needles: str) -> None:
    """Exit 1 with exactly one `download: error:` line naming every needle, and nothing written."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("download: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert list(data.iterdir()) == [], "output or staging folder left behind"


@pytest.mark.parametrize(
    ("make", "params", "needles"),
    [
        (honest_bomb, {"max_total_bytes": 1_000_000}, ("declares 2,0", "download.max_total_bytes (1,000,000)")),
        (lambda: lying_archive("all"), {"max_total_bytes": 1_000_000}, ("holds more than the 1,000 bytes it declares",)),
        (lambda: lying_archive("declared"), {"max_total_bytes": 1_000_000}, ("holds more than the 1,000 bytes it declares",)),
        (
            lambda: zip_bytes(kaggle_files(n_train=8, n_test=4)),
            {"max_entries": 20},
            ("holds 26 entries", "download.max_entries (20)"),
        ),
        (encrypted_archive, {}, (IMAGE, "encrypted", "CASTING_ARCHIVE")),
        (lambda: patch_entry(zip_bytes(kaggle_files(n_train=2, n_test=2)), IMAGE, method=9), {}, (IMAGE, "Deflate64", "re-zip")),
        (bad_crc, {}, (IMAGE, "CRC", "download the archive again")),
        (lambda: zip_bytes(kaggle_files(n_train=2, n_test=2))[:-300], {}, ("truncated or damaged", "download it again")),
    ],
    ids=[
        "declared-over-cap",
        "lies-about-size",
        "lies-about-size-and-crc",
        "too-many-entries",
        "encrypted",
        "deflate64",
        "bad-crc",
        "truncated",
    ],
)
def test_hostile_or_broken_zip_is_one_line_and_leaves_nothing(tmp_path, make, params, needles):
    archive = tmp_path / "archive.zip"
    archive.write_bytes(make())
    data = tmp_path / "data"
    data.mkdir()
    result = run_stage(tmp_path, archive, **params)
    assert_refused(result, data, str(archive), *needles)


def test_folder_over_the_caps_is_refused(tmp_path, kaggle_zip):
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(kaggle_zip).extractall(folder)
    (folder / "casting_data/casting_data/train/ok_front/huge.jpeg").write_bytes(b"\0" * 2_000_000)
    data = tmp_path / "data"
    data.mkdir()
    assert_refused(run_stage(tmp_path, folder, max_total_bytes=1_000_000), data, "download.max_total_bytes")
    assert_refused(run_stage(tmp_path, folder, max_entries=50), data, "download.max_entries (50)")


def test_staging_left_by_a_killed_run_is_removed(tmp_path, kaggle_zip):
    data = tmp_path / "data"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = int(gone.stdout), os.getppid()  # a process that is gone, and one that runs (this test's parent)
    stale = [data / f".raw.{dead}.k1ll3d_0.tmp", data / ".raw.k1ll3d_0.tmp", data / ".raw.old", data / ".kaggle-k1ll3d_0"]
    # another stage's staging, a live run's of the same stage, and the user's own
    kept = [data / ".prepared.k1ll3d_0.tmp", data / f".raw.{live}.l1v3_run.tmp", data / "notes"]
    for folder in stale + kept:
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "half.jpeg").write_bytes(b"\xff\xd8")
    result = run_stage(tmp_path, kaggle_zip)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in data.iterdir()) == sorted(["raw", *(p.name for p in kept)])
    assert sum(f".raw.{dead}.k1ll3d_0.tmp, left behind" in line for line in result.stdout.splitlines()) == 1


@pytest.mark.slow
def test_sigterm_during_extraction_removes_the_staging_folder(tmp_path):
    """16 entries of 64 MB of zeros (a 4.6 MB zip) take a few seconds to write: SIGTERM arrives midway."""
    archive = tmp_path / "slow.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as slow:
        for i in range(16):
            with slow.open(f"casting_data/casting_data/train/ok_front/big_{i}.jpeg", "w") as member:
                for _ in range(64):
                    member.write(bytes(1 << 20))
    project, data = tmp_path / "project", tmp_path / "data"
    project.mkdir()
    data.mkdir()
    write_params(project / "params.yaml", {"download": {"max_total_bytes": 4_000_000_000}})
    env = project_env(CASTING_ARCHIVE=str(archive), PYTHONPATH=str(PROJECT / "src"), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, str(PROJECT / "stages" / "download.py"), "--out", str(data / "raw")]
    process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(data.glob(".raw.*.tmp/train/ok_front/big_*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.splitlines() == ["download: interrupted; its temporary files are removed: run it again for its outputs"]
    assert list(data.iterdir()) == [], "staging folder left behind"


# --- what is in an archive but cannot be taken as it is: said in one line, never left out unnamed -------------

AS_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"] if os.geteuid() == 0 else []


@pytest.mark.parametrize(
    ("member", "needle"),
    [
        ("casting_data/casting_data/train/def_front/batch2/cast_def_9.jpeg", "a file in a subfolder of a class folder"),
        (IMAGE, "holds the entry"),  # the same name twice: one of the two would be lost
        ("casting_data/casting_data/train/ok_front/" + "x" * 300 + ".jpeg", "cannot be written here"),
    ],
    ids=["subfolder", "twice", "name-too-long"],
)
def test_a_member_that_cannot_be_taken_as_it_is_refuses_the_archive(tmp_path, member, needle):
    archive = write_zip(tmp_path / "archive.zip", kaggle_files())
    with zipfile.ZipFile(archive, "a") as handle, pytest.warns(UserWarning) if member == IMAGE else nullcontext():
        handle.writestr(member, b"\xff\xd8 a photo")
    with pytest.raises(InspectionError, match=needle):
        fetch_raw_images(PARAMS, tmp_path / "raw", str(archive))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.zip"]  # nothing written, no staging left


def test_a_dot_member_is_left_out_like_any_hidden_file(tmp_path, kaggle_zip):
    archive = tmp_path / "dot.zip"
    archive.write_bytes(kaggle_zip.read_bytes())
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr("casting_data/casting_data/train/ok_front/.", b"")
    assert fetch_raw_images(PARAMS, tmp_path / "raw", str(archive)) == fetch_raw_images(PARAMS, tmp_path / "b", str(kaggle_zip))


def test_a_folder_with_a_subfolder_or_a_name_that_is_not_utf8_is_refused(tmp_path, kaggle_zip):
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(kaggle_zip).extractall(folder)
    nested = folder / "casting_data/casting_data/test/ok_front/batch2"
    nested.mkdir()
    (nested / "cast_ok_9.jpeg").write_bytes(b"\xff\xd8")
    with pytest.raises(InspectionError, match="batch2/cast_ok_9.jpeg': a file in a subfolder"):
        fetch_raw_images(PARAMS, tmp_path / "raw", str(folder))
    (nested / "cast_ok_9.jpeg").unlink()
    nested.rmdir()
    with open(os.fsencode(folder / "casting_data/casting_data/train/ok_front") + b"/ok_\xff.jpeg", "wb") as f:
        f.write(b"\xff\xd8")
    with pytest.raises(InspectionError, match=r"ok_\\udcff.jpeg': its name is not UTF-8 text; rename the file"):
        fetch_raw_images(PARAMS, tmp_path / "raw", str(folder))
    assert not (tmp_path / "raw").exists()


def test_an_unreadable_class_folder_or_archive_is_said_never_taken_for_an_empty_one(tmp_path, kaggle_zip):
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(kaggle_zip).extractall(folder)
    classes = folder / "casting_data/casting_data/train/def_front"
    classes.chmod(0)
    data = tmp_path / "data"
    data.mkdir()
    try:
        result = run_stage(tmp_path, folder, prefix=AS_USER)
    finally:
        classes.chmod(0o755)
    assert_refused(result, data, f"{classes}: cannot read this folder (Permission denied); fix its permissions")
    unreadable = tmp_path / "unreadable.zip"
    unreadable.write_bytes(kaggle_zip.read_bytes())
    unreadable.chmod(0)
    assert_refused(run_stage(tmp_path, unreadable, prefix=AS_USER), data, "cannot read (Permission denied)")


def test_a_pipe_given_as_the_archive_is_refused_not_waited_on(tmp_path):
    pipe = tmp_path / "archive.zip"
    os.mkfifo(pipe)
    data = tmp_path / "data"
    data.mkdir()
    assert_refused(run_stage(tmp_path, pipe), data, "not a regular file or folder (a pipe or device)")


def test_an_unreadable_folder_outside_the_data_is_named_and_left_out(tmp_path, kaggle_zip):
    """A data disk's `lost+found`, another user's folder: said in a line, and the data beside it is taken."""
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(kaggle_zip).extractall(folder)
    (folder / "lost+found").mkdir(mode=0)
    (folder / ".Trash-0").mkdir(mode=0)  # hidden: never looked into
    data = tmp_path / "data"
    data.mkdir()
    try:
        result = run_stage(tmp_path, folder, prefix=AS_USER)
    finally:
        (folder / "lost+found").chmod(0o755)
        (folder / ".Trash-0").chmod(0o755)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if "cannot read this folder" in line]
    assert said == [
        f"download: {folder / 'lost+found'}: cannot read this folder (Permission denied); left out (no train or test folder in its name)"
    ]


@pytest.mark.parametrize(
    "member",
    ["casting_data\\casting_data\\train\\ok_front\\cast_ok_w.jpeg", "casting_data/casting_data/train/ok_front//cast_ok_w.jpeg"],
    ids=["windows-backslashes", "doubled-slash"],
)
def test_a_photo_named_with_backslashes_or_a_doubled_slash_is_taken_not_left_out(tmp_path, kaggle_zip, member):
    archive = tmp_path / "archive.zip"
    archive.write_bytes(kaggle_zip.read_bytes())
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr(member, b"\xff\xd8 a photo")
    counts = fetch_raw_images(PARAMS, tmp_path / "raw", str(archive))
    assert counts["train/ok_front"] == 25 and (tmp_path / "raw/train/ok_front/cast_ok_w.jpeg").read_bytes() == b"\xff\xd8 a photo"
