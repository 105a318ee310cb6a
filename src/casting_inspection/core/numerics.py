"""The same bytes on every machine: pin what decides floating-point results before PyTorch loads.

Summation order decides the last bits of every sum, and it changes with the number of threads and with
the widest vector instructions a library picks at start (AVX-512 here, AVX2 elsewhere). So each stage
fixes both: a fixed thread count for the math, and the AVX2 code paths of PyTorch's own kernels, oneDNN,
MKL and NumPy, which every x86-64 machine of the last decade has. On this project's 2-core machine the
cost was measured in bench/RESULTS.md. `CASTING_NUMERICS=native` trades the byte-for-byte guarantee for
all of a big machine's cores and its widest instructions (outputs then differ from the committed dvc.lock).
"""

from __future__ import annotations

import os
import sys

THREADS = 2  # threads for the math in every stage, whatever the machine has
PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's vectorised kernels (reductions, BatchNorm, optimisers)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN convolutions
    "DNNL_MAX_CPU_ISA": "AVX2",  # the same, under oneDNN's former name
    "MKL_CBWR": "AVX2,STRICT",  # MKL's code path, and results independent of its thread count
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's AVX-512 loops
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy's and SciPy's BLAS: AVX2 kernels
    "OPENBLAS_NUM_THREADS": str(THREADS),
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
}
SWITCH = "CASTING_NUMERICS"  # reproducible (default) or native


def pin_numerics() -> bool:
    """Set the pins for this process; True when pinned. Must run before numpy or torch is imported."""
    mode = os.environ.get(SWITCH, "reproducible")
    if mode == "native":
        return False
    if mode != "reproducible":
        raise SystemExit(f"{SWITCH}={mode!r}: use reproducible (the default) or native")
    loaded = sorted({"numpy", "torch"} & set(sys.modules))
    if loaded:
        raise RuntimeError(f"pin_numerics() must run before {', '.join(loaded)} is imported")
    os.environ.update(PINNED)
    return True
