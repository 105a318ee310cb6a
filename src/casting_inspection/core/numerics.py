"""The same bytes on every machine: kernels whose summation order does not depend on the CPU found.

Summation order decides the last bits of every sum. Vendor libraries choose it from the CPU they find:
MKL takes its own code branch per vendor (its AVX2 reproducibility branch is honoured on Intel CPUs
only), oneDNN blocks its convolutions by ISA and cache sizes, OpenBLAS splits LAPACK work by the cores
it may use. So every stage fixes each building block, block by block:

- convolutions: oneDNN's `jit:avx2` kernels (ISA capped at AVX2). Their loop order, blocking and the
  split of the weight-gradient reduction between threads come from the tensor shapes, the ISA and the
  thread count only; cache sizes decide only how many threads share independent outputs. (oneDNN's
  brgemm convolutions, whose reduction blocks follow the L1 size, take only channels-last tensors,
  which the pipeline never makes; tests/integration/test_numerics.py checks which kernels run.)
- matrix products (linear layers, the augmentation's affine grid): MKL's COMPATIBLE branch in its
  strict reproducibility mode, documented to give the same results on Intel and compatible
  processors, with a fixed, non-dynamic thread count;
- PyTorch's elementwise ops, reductions, BatchNorm and optimisers: its AVX2 kernels (every x86-64 CPU
  since 2013 has AVX2 and FMA) with a fixed thread count, never the machine's core count;
- NumPy's loops: AVX2, never AVX-512; its BLAS and LAPACK (OpenBLAS): the Haswell kernels on one thread,
  so neither the vendor nor the cores a process may use change a matrix inverse.

`bench/numerics_probe.py` prints one hash per block; its cost is in bench/RESULTS.md.
`CASTING_NUMERICS=native` trades the guarantee for the machine's own cores and widest kernels.
"""

from __future__ import annotations

import os
import sys

THREADS = 2  # threads for PyTorch's and MKL's math in every stage, whatever the machine has
PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's vectorised kernels (reductions, BatchNorm, optimisers)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN, where anything still reaches it
    "DNNL_MAX_CPU_ISA": "AVX2",  # the same, under oneDNN's former name
    "MKL_CBWR": "COMPATIBLE,STRICT",  # MKL's vendor-independent branch, results independent of its threads
    "MKL_DYNAMIC": "FALSE",  # MKL never lowers its thread count to the cores it sees
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's AVX-512 loops
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy's and SciPy's BLAS and LAPACK: AVX2 kernels
    "OPENBLAS_NUM_THREADS": "1",  # one thread: its LAPACK splits work by the cores it may use
    "OMP_NUM_THREADS": str(THREADS),
    "OMP_DYNAMIC": "FALSE",
    "MKL_NUM_THREADS": str(THREADS),
}
SWITCH = "CASTING_NUMERICS"  # reproducible (default) or native


def reproducible() -> bool:
    """True unless CASTING_NUMERICS=native; a misspelt value stops with a one-line message."""
    mode = os.environ.get(SWITCH, "reproducible")
    if mode not in ("reproducible", "native"):
        raise SystemExit(f"{SWITCH}={mode!r}: use reproducible (the default) or native")
    return mode == "reproducible"


def pin_numerics() -> bool:
    """Set the pins for this process; True when pinned. Must run before numpy or torch is imported."""
    if not reproducible():
        return False
    loaded = sorted({"numpy", "torch"} & set(sys.modules))
    if loaded:
        raise RuntimeError(f"pin_numerics() must run before {', '.join(loaded)} is imported")
    os.environ.update(PINNED)
    return True
