"""Training throughput of PyTorch on the architectures potatura trains in
`cargo bench --bench train`: the bundled MNIST CNN (1x28x28) and the
MobileNetV2-style fixture (3x64x64), batch 64, SGD with Nesterov momentum,
cross-entropy, on this machine's CPU threads (2 here).

Usage: python scripts/crosscheck/train_throughput.py
Needs torch (scripts/fixtures/requirements.txt pins it).
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from families import MobileNetV2Mini  # noqa: E402
from mnist_cnn import MnistCNN  # noqa: E402


def throughput(model, shape, classes, steps=20, batch=64):
    torch.manual_seed(0)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"mnist_cnn        {throughput(MnistCNN(), (1, 28, 28), 10):8.0f} samples/s")
    print(f"mobilenetv2_mini {throughput(MobileNetV2Mini(), (3, 64, 64), 10):8.0f} samples/s")
