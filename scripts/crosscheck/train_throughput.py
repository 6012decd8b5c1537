"""Training throughput of PyTorch on the architectures potatura trains in
`cargo bench --bench train`: the bundled MNIST CNN (1x28x28) and the
MobileNetV2-style fixture (3x64x64), batch 64, SGD with Nesterov momentum,
cross-entropy, on this machine's CPU threads (2 here).

Usage:
  python scripts/crosscheck/train_throughput.py
      PyTorch alone.
  python scripts/crosscheck/train_throughput.py --potatura target/release/potatura [--rounds 5]
      Alternates PyTorch and `potatura recover --labels` (the same
      training: CE, SGD with Nesterov momentum, batch 64) round by round,
      and reports each round's ratio and the median: a shared machine's
      speed drifts within minutes, so only measurements taken side by side
      compare. Both leave their first 3 steps out of the timing.

Needs torch and numpy (scripts/fixtures/requirements.txt pins them).
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "fixtures"))
from families import MobileNetV2Mini  # noqa: E402
from mnist_cnn import MnistCNN  # noqa: E402

BATCH = 64
# name, PyTorch module, input shape, ONNX file potatura trains
MODELS = [
    ("mnist_cnn", MnistCNN, (1, 28, 28), ROOT / "examples/mnist/mnist_cnn.onnx"),
    ("mobilenetv2_mini", MobileNetV2Mini, (3, 64, 64), ROOT / "tests/fixtures/mobilenetv2_mini.onnx"),
]


WARM_UP = 3  # steps left out of the timing on both sides (potatura's WARM_UP_STEPS)


def torch_throughput(model, shape, classes=10, steps=20, batch=BATCH):
    """samples/s over `steps` steps after WARM_UP steps."""
    torch.manual_seed(0)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for i in range(steps + WARM_UP):
        if i == WARM_UP:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def potatura_throughput(exe, onnx_path, shape, tmp, steps, classes=10):
    """samples/s that `potatura recover` reports for `steps` steps of CE
    after its WARM_UP steps (its "N after 3 warm-up steps"), data batching,
    loss, accuracy and optimizer step included."""
    rng = np.random.default_rng(0)
    x = tmp / f"{onnx_path.stem}.x.npy"
    y = tmp / f"{onnx_path.stem}.y.npy"
    if not x.exists():
        np.save(x, rng.standard_normal((BATCH * 4, *shape), dtype=np.float32))
        np.save(y, rng.integers(0, classes, BATCH * 4, dtype=np.int64))
    out = subprocess.run(
        [str(exe), "recover", str(onnx_path), "-o", str(tmp / "out.onnx"), "--data", str(x),
         "--labels", str(y), "--steps", str(steps + WARM_UP), "--batch", str(BATCH),
         "--checkpoint-every", "0"],
        capture_output=True, text=True, check=True,
    )
    m = re.search(rf"; ([0-9.]+) after {WARM_UP} warm-up steps\)", out.stdout + out.stderr)
    if not m:
        sys.exit(f"no samples/s in potatura's output:\n{out.stdout}\n{out.stderr}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--potatura", type=Path, help="potatura binary: alternate it with PyTorch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=48)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}")
    if args.potatura is None:
        for name, cls, shape, _ in MODELS:
            print(f"{name:<17} {torch_throughput(cls(), shape, steps=args.steps):8.0f} samples/s")
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, cls, shape, onnx_path in MODELS:
            ratios = []
            for r in range(args.rounds):
                ours = potatura_throughput(args.potatura, onnx_path, shape, tmp, args.steps)
                theirs = torch_throughput(cls(), shape, steps=args.steps)
                ratios.append(ours / theirs)
                print(f"{name:<17} round {r + 1}: potatura {ours:6.0f}  torch {theirs:6.0f}  ratio {ratios[-1]:.2f}")
            print(f"{name:<17} median ratio {statistics.median(ratios):.2f} (potatura / torch)")


if __name__ == "__main__":
    main()
