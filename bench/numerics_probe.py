"""Fingerprint each floating-point building block the pipeline computes with, under the stages' pins.

Two machines that print the same hash for a block compute it bit for bit alike; the first block whose
hash differs is where their results part. The last line, `fingerprint`, hashes them all: compare it
with the one in bench/RESULTS.md (CI prints it too). Run it under `taskset -c 0` to see whether the
number of cores a process may use changes anything.

Usage: python bench/numerics_probe.py [--batch 64]     (CASTING_NUMERICS=native: the machine's own kernels)
"""

import argparse
import hashlib
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from casting_inspection.core.numerics import pin_numerics  # noqa: E402

PINNED = pin_numerics()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from casting_inspection.modeling.augmentation import augmentation_from  # noqa: E402
from casting_inspection.modeling.networks import CnnConfig, InspectionNet, ModelConfig  # noqa: E402


def digest(*arrays) -> str:
    data = b"".join(
        (a.detach().contiguous().numpy() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)).tobytes() for a in arrays
    )
    return hashlib.sha256(data).hexdigest()[:12]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def convolutions(n: int, g: torch.Generator) -> list[tuple[str, str]]:
    """Forward and both backward passes at the small CNN's shapes (128 px gray, stride-2 stem)."""
    rows = []
    for c_in, c_out, size, stride in [(1, 16, 128, 2), (16, 32, 32, 1), (32, 64, 16, 1), (64, 128, 8, 1)]:
        x = torch.randn(n, c_in, size, size, generator=g, requires_grad=True)
        conv = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
            conv.bias.zero_()
        y = conv(x)
        y.square().sum().backward()
        name = f"conv{c_in}->{c_out}"
        rows += [(f"{name} forward", digest(y)), (f"{name} grad weight", digest(conv.weight.grad))]
        rows.append((f"{name} grad input", digest(x.grad)))
    return rows


def layers(n: int, g: torch.Generator) -> list[tuple[str, str]]:
    bn = torch.nn.BatchNorm2d(32)
    x = torch.randn(n, 32, 32, 32, generator=g, requires_grad=True)
    y = bn(x)
    y.square().sum().backward()
    rows = [("batchnorm forward", digest(y)), ("batchnorm running_var", digest(bn.running_var))]
    rows.append(("batchnorm grad input", digest(x.grad)))
    lin = torch.nn.Linear(256, 1)
    x = torch.randn(n, 256, generator=g, requires_grad=True)
    y = lin(x)
    y.sum().backward()
    return rows + [("linear forward", digest(y)), ("linear grad weight", digest(lin.weight.grad))]


def network(n: int, g: torch.Generator) -> list[tuple[str, str]]:
    """The default network: one training step with AdamW, then an evaluation batch."""
    torch.manual_seed(42)
    cnn = CnnConfig([16, 32, 64, 128], 1, 2, 0.1, "avgmax", "relu")
    net = InspectionNet(ModelConfig("cnn", 1, 128, "per_image", [0.0], [1.0], cnn, []))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    x = torch.rand(n, 1, 128, 128, generator=g)
    target = (torch.rand(n, generator=g) > 0.5).float()
    net.train()
    out = net(x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
    loss.backward()
    rows = [("network forward (train mode)", digest(out)), ("network loss", digest(loss))]
    rows.append(("network grads", digest(*[p.grad for p in net.parameters()])))
    opt.step()
    rows.append(("network after AdamW step", digest(*list(net.parameters()))))
    net.eval()
    with torch.no_grad():
        rows.append(("network forward (eval, batch 256)", digest(net(torch.rand(256, 1, 128, 128, generator=g)))))
    return rows


def augmentation(g: torch.Generator) -> list[tuple[str, str]]:
    settings = {"flip": True, "rotate90": True, "degrees": 180.0, "translate": 0.08, "scale": 0.0, "brightness": 0.4}
    settings |= {"contrast": 0.3, "blur": 1.0}
    aug = augmentation_from(settings)
    torch.manual_seed(7)
    return [("augmentation (affine, jitter, blur)", digest(aug(torch.rand(16, 1, 128, 128, generator=g))))]


def numpy_blocks() -> list[tuple[str, str]]:
    """What prepare and the guard compute: reductions, BLAS, covariance, Cholesky and inverse."""
    a = np.random.default_rng(0).standard_normal((4096, 256))
    gram = a.T @ a + np.eye(256)
    rows = [("numpy mean/std", digest(np.array([a.mean(), a.std()]))), ("numpy matmul (BLAS)", digest(a.T @ a))]
    rows.append(("numpy linalg.inv", digest(np.linalg.inv(gram))))
    rows.append(("numpy cov, cholesky", digest(np.linalg.cholesky(np.cov(a, rowvar=False) + np.eye(256)))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="batch of the layer blocks (hashes differ with it)")
    n = parser.parse_args().batch
    print(f"machine: {cpu_name()}; batch {n}; pinned: {PINNED}; torch {torch.__version__}; numpy {np.__version__}")
    print(
        f"torch: capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
        f"oneDNN {'on' if torch.backends.mkldnn.enabled else 'off'}"
    )
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the layers' own initial weights
    rows = convolutions(n, g) + layers(n, g) + network(n, g) + augmentation(g) + numpy_blocks()
    for name, value in rows:
        print(f"{value}  {name}")
    print(f"{hashlib.sha256(''.join(v for _, v in rows).encode()).hexdigest()[:12]}  fingerprint")


if __name__ == "__main__":
    main()
