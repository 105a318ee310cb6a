"""download from a local archive: zip or folder give identical trees; unsafe or damaged archives are refused."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.params import load_section
from casting_inspection.data.download import fetch_raw_images
from conftest import PROJECT, kaggle_files, write_zip

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
