"""The same bytes on every machine: which kernels run, and whether the cores a process may use change them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import PROJECT

TRAINING_STEP = """
import sys
sys.path.insert(0, "src")
from casting_inspection.core.numerics import pin_numerics
pin_numerics()
import torch
from casting_inspection.modeling.networks import CnnConfig, InspectionNet, ModelConfig
cnn = CnnConfig([16, 32, 64, 128], 1, 2, 0.1, "avgmax", "relu")
net = InspectionNet(ModelConfig("cnn", 1, 128, "per_image", [0.0], [1.0], cnn, []))
net.train()
net(torch.rand(8, 1, 128, 128)).sum().backward()
net.eval()
with torch.no_grad():
    net(torch.rand(8, 1, 128, 128))
"""


def python(code_or_script: list[str], env: dict | None = None, prefix: tuple = ()) -> str:
    result = subprocess.run(
        [*prefix, sys.executable, *code_or_script], cwd=PROJECT, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def test_convolutions_run_on_kernels_whose_sums_follow_shape_isa_and_threads_only():
    """oneDNN's brgemm and gemm convolutions block their sums by cache size; jit:avx2 does not."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    rows = [line.split(",") for line in python(["-c", TRAINING_STEP], env).splitlines()]
    kernels = {
        tuple(row[row.index("convolution") + 1 : row.index("convolution") + 3])
        for row in rows
        if row[0] == "onednn_verbose" and "exec" in row and "convolution" in row
    }
    assert kernels, "no convolution reached oneDNN: the probe and this test no longer describe the stages"
    assert {impl for impl, _ in kernels} == {"jit:avx2"}, kernels
    assert {prop for _, prop in kernels} == {"forward_training", "backward_data", "backward_weights"}


LIBRARIES = """
import ctypes, glob, json, os, sys
sys.path.insert(0, "src")
from casting_inspection.core.numerics import pin_numerics
pin_numerics()
import numpy, torch, threadpoolctl
mkl = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))[0])
blas = [p for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]
print(json.dumps({"cbwr": mkl.mkl_serv_cbwr_get(-1), "openblas": [(p["num_threads"], p["architecture"]) for p in blas],
                  "torch": [torch.get_num_threads(), torch.backends.cpu.get_cpu_capability()]}))
"""


def test_the_libraries_run_the_branches_the_pins_ask_for():
    """Read back from the libraries themselves, not from the environment that asked."""
    import json

    taken = json.loads(python(["-c", LIBRARIES]))
    assert taken["cbwr"] & 0xFFFF == 3 and taken["cbwr"] & 0x10000, hex(taken["cbwr"])  # MKL: COMPATIBLE, strict
    assert taken["openblas"] and all(threads == 1 and arch == "Haswell" for threads, arch in taken["openblas"])
    assert taken["torch"] == [2, "AVX2"]


def test_pins_fix_vendor_library_branches():
    code = "import sys; sys.path.insert(0, 'src'); from casting_inspection.core.numerics import pin_numerics, PINNED; "
    code += "pin_numerics(); import os; print(os.environ['MKL_CBWR'], os.environ['OPENBLAS_NUM_THREADS'])"
    assert python(["-c", code]).split() == ["COMPATIBLE,STRICT", "1"]
    native = python(
        ["-c", code.replace("os.environ['MKL_CBWR']", "os.environ.get('MKL_CBWR')")],
        dict(os.environ, CASTING_NUMERICS="native", OPENBLAS_NUM_THREADS="3"),
    )
    assert native.split() == ["None", "3"]
    bad = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, env=dict(os.environ, CASTING_NUMERICS="fast"), capture_output=True, text=True
    )
    assert bad.returncode == 1 and "CASTING_NUMERICS='fast'" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_probe_prints_the_same_hashes_on_one_core():
    """The number of cores a process may use changes no block (OpenBLAS's LAPACK did, on more than one thread)."""
    probe = ["bench/numerics_probe.py", "--batch", "16"]
    here, one_core = python(probe), python(probe, prefix=("taskset", "-c", "0"))
    assert "fingerprint" in here and "pinned: True" in here
    assert here == one_core
