"""Hostile files at volume: seeded mutations of good JPEG, PNG and BMP photos through `images.load_image`
(a sample through `Inspector.inspect`), and the peak memory of decoding the ICO decompression bomb.

Prints counts by outcome, the slowest file, the median time per file and every exception that escaped
(there must be none); then, each in a fresh process, the peak resident memory over idle of one call.
The files are generated (tests/test_fuzz.py makes them); the model is a tiny one trained on generated
photos as the tests do, unless --model names an exported one. Exits 1 if an exception escaped or the
bomb cost more than --max-bomb-mib.
Usage: python bench/bench_fuzz.py [--files 12000] [--sample 1200] [--model M]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]  # the fuzz tests make the files

from test_fuzz import SEED, crafted_files, good_files, ico_bomb, mutants, png_claiming, reason_category  # noqa: E402

import conftest  # noqa: E402  (the exported_model fixture)
from casting_inspection.core.decision import DECISIONS  # noqa: E402
from casting_inspection.core.params import load_section  # noqa: E402
from casting_inspection.data.images import BadImage, load_image  # noqa: E402
from casting_inspection.data.prepare import image_spec  # noqa: E402
from casting_inspection.serving.inference import Inspector  # noqa: E402
from helpers import jpeg_bytes, part_image, rle8_bmp  # noqa: E402

# One call in a fresh process: resident memory just before it, and the high-water mark after it.
MEASURE = """
import io, json, sys
from pathlib import Path
from PIL import Image
from casting_inspection.core.params import load_section
from casting_inspection.data.images import BadImage, load_image
from casting_inspection.data.prepare import image_spec

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024

spec = image_spec(load_section("prepare", Path(sys.argv[3])))
data = open(sys.argv[1], "rb").read()
idle = status("VmRSS:")
try:
    load_image(data, spec) if sys.argv[2] == "load_image" else Image.open(io.BytesIO(data)).load()
    outcome = "decoded"
except BadImage as exc:
    outcome = str(exc)
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(json.dumps({"idle_mib": idle, "peak_mib": status("VmHWM:"), "outcome": outcome[:90]}))
"""


def decode_one(name: str, data: bytes, spec) -> tuple[str, float, str | None]:
    """Outcome category, seconds, and the escaped exception (None when load_image kept its contract)."""
    start = time.perf_counter()
    try:
        load_image(data, spec)
        category, escaped = "decoded", None
    except BadImage as exc:
        category, escaped = reason_category(str(exc)), None
    except BaseException as exc:  # what the bench is looking for
        category, escaped = "ESCAPED", f"{name}: {type(exc).__name__}: {exc}"
    return category, time.perf_counter() - start, escaped


def decode_all(files: list[tuple[str, bytes]], spec) -> dict:
    """Every file through load_image: counts by outcome, times, the slowest file, escapes."""
    counts, times, escapes, slowest = collections.Counter(), [], [], (0.0, "", "")
    for name, data in files:
        category, seconds, escaped = decode_one(name, data, spec)
        counts[category] += 1
        times.append(seconds)
        escapes += [escaped] if escaped else []
        slowest = max(slowest, (seconds, name, category))
    return {"counts": counts, "times": times, "escapes": escapes, "slowest": slowest}


def inspect_sample(inspector: Inspector, files: list[tuple[str, bytes]]) -> dict:
    """The sample, a good photo after each file, through Inspector.inspect in batches of 64."""
    good = good_files(SEED + 7, len(files))
    named = [f for pair in zip(good, files) for f in pair]
    good_names = {name for name, _ in good}
    counts, escapes, undecided_good = collections.Counter(), [], 0
    start = time.perf_counter()
    for i in range(0, len(named), 64):
        try:
            results = inspector.inspect(named[i : i + 64])
        except BaseException as exc:
            escapes.append(f"batch {i // 64}: {type(exc).__name__}: {exc}")
            continue
        for r in results:
            one_line = bool(r.error.strip()) and "\n" not in r.error
            undecided_good += r.path in good_names and r.decision not in DECISIONS
            key = r.decision if not r.error else ("skipped" if one_line else "skipped, reason not one line")
            counts[("good: " if r.path in good_names else "fuzzed: ") + key] += 1
    seconds = time.perf_counter() - start
    return {"counts": counts, "escapes": escapes, "undecided_good": undecided_good, "seconds": seconds}


def peak_over_idle(path: Path, how: str) -> dict:
    """Peak resident memory over idle of one call (`load_image`, or Pillow with no allow-list), in a fresh process."""
    cmd = [sys.executable, "-c", MEASURE, str(path), how, str(ROOT / "params.yaml")]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if result.returncode:
        raise RuntimeError(f"measuring {how} on {path} failed:\n{result.stderr}")
    figures = json.loads(result.stdout.splitlines()[-1])
    return figures | {"delta_mib": figures["peak_mib"] - figures["idle_mib"]}


class Folders:
    """Stands in for pytest's `tmp_path_factory`."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        (self.root / name).mkdir()
        return self.root / name


def tiny_model(root: Path) -> Path:
    """The tests' `exported_model` fixture run outside pytest: a small model trained on generated photos, exported."""
    return conftest.exported_model.__wrapped__(Folders(root))["onnx"]


def print_decoding(report: dict, seconds: float) -> None:
    times = report["times"]
    print(f"load_image on {len(times):,} mutated files: {seconds:.1f} s wall")
    for category, n in report["counts"].most_common():
        print(f"  {n:6,}  {category}")
    slow_s, slow_name, slow_category = report["slowest"]
    print(f"  median {statistics.median(times) * 1e3:.3f} ms/file, p99 {sorted(times)[int(len(times) * 0.99)] * 1e3:.2f} ms")
    print(f"  slowest {slow_s * 1e3:.1f} ms: {slow_name} ({slow_category})")
    print(f"  exceptions escaped: {len(report['escapes'])}")
    for line in report["escapes"][:20]:
        print(f"    {line}")


def print_memory(folder: Path) -> list[dict]:
    """The bomb and its controls, each measured in a fresh process."""
    cases = {
        "good 64x64 JPEG": (jpeg_bytes(part_image(False, 1)), "load_image"),
        "ICO holding a 9000x9000 PNG, named .jpg": (ico_bomb(), "load_image"),
        "PNG claiming 60000x60000": (png_claiming(60000, 60000), "load_image"),
        "ICO bomb, Pillow with no allow-list (reference)": (ico_bomb(), "pillow"),
    }
    rows = []
    for label, (data, how) in cases.items():
        path = folder / f"case{len(rows)}.bin"
        path.write_bytes(data)
        figures = peak_over_idle(path, how) | {"case": label, "bytes": len(data)}
        rows.append(figures)
        print(
            f"  {label} ({len(data):,} bytes): +{figures['delta_mib']:.1f} MiB over idle "
            f"({figures['idle_mib']:.0f} -> {figures['peak_mib']:.0f}); {figures['outcome']}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=12_000, help="mutated files (a third per format)")
    parser.add_argument("--sample", type=int, default=1_200, help="of them, how many go through Inspector.inspect")
    parser.add_argument("--seed", type=int, default=SEED + 100)
    parser.add_argument("--model", type=Path, help="an exported ONNX model (default: train a tiny one on generated photos)")
    parser.add_argument("--max-bomb-mib", type=float, default=100.0)
    args = parser.parse_args()
    spec = image_spec(load_section("prepare", ROOT / "params.yaml"))
    files = mutants(args.seed, per_format=-(-args.files // 3))
    start = time.perf_counter()
    report = decode_all(files, spec)
    print_decoding(report, time.perf_counter() - start)
    shapes = [(700, 700), (2000, 2000), (41666, 600)]  # the last: each end-of-line escape pads a 41,666-pixel row
    costly = {f"run-length BMP {w}x{h}, {len(rle8_bmp(w, h, 600)):,} bytes": rle8_bmp(w, h, 600) for w, h in shapes}
    crafted = decode_all(list(crafted_files().items()) + list(costly.items()), spec)
    print(f"crafted files: {dict(crafted['counts'])}; escaped: {crafted['escapes']}")
    slowest_s, slowest_name, _ = crafted["slowest"]
    print(f"  crafted, decoding time per file: slowest {slowest_s * 1e3:.1f} ms ({slowest_name})")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp))
        sample = inspect_sample(Inspector(model), files[:: max(1, len(files) // args.sample)][: args.sample])
        print(f"Inspector.inspect on {args.sample:,} fuzzed files + as many good ones: {sample['seconds']:.1f} s")
        print(f"  {dict(sorted(sample['counts'].items()))}")
        print(f"  good files not decided: {sample['undecided_good']}; exceptions escaped: {len(sample['escapes'])}")
        print("peak resident memory of one call, fresh process each:")
        memory = print_memory(Path(tmp))
    escaped = len(report["escapes"]) + len(crafted["escapes"]) + len(sample["escapes"])
    bomb = memory[1]["delta_mib"]
    print(f"verdict: {escaped} escaped (must be 0); ICO bomb +{bomb:.1f} MiB (must be <= {args.max_bomb_mib:g})")
    sys.exit(1 if escaped or bomb > args.max_bomb_mib or sample["undecided_good"] else 0)


if __name__ == "__main__":
    main()
