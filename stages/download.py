"""Stage download: the raw train/test images, from Kaggle or from $CASTING_ARCHIVE (a zip or folder)."""

from casting_inspection.core.numerics import pin_numerics

pin_numerics()  # before numpy and torch load: the same bytes on every machine

import argparse
import os
from pathlib import Path

from casting_inspection.core.params import load_section
from casting_inspection.core.stage import run_stage
from casting_inspection.data.download import ARCHIVE_ENV, fetch_raw_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for {train,test}/{def_front,ok_front}/")
    args = parser.parse_args()
    params = load_section("download")
    archive = os.environ.get(ARCHIVE_ENV)
    print(f"download: from {archive or 'Kaggle ' + params.dataset}")
    counts = fetch_raw_images(params, args.out, archive)
    print("download: " + ", ".join(f"{name} {n}" for name, n in counts.items()))


if __name__ == "__main__":
    run_stage("download", main)
