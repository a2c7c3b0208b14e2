"""LeNet-5 on the bundled MNIST subset: tensorcomp against torch eager, same recipe, same run.

    python bench/train.py [--epochs 3]

Recipe: batch 64, Adam lr 1e-3, 4,000/1,000 split, seed 0; ms/step is the mean over training steps
(tensorcomp's first step, which compiles every kernel, is reported apart).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from tensorcomp.data import DataLoader, mnist  # noqa: E402
from tensorcomp.train import train  # noqa: E402


def torch_lenet(epochs: int, seed: int = 0) -> dict:
    import torch
    from torch import nn
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                          nn.ReLU(), nn.Linear(84, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xtr, ytr, xte, yte = mnist()
    times = []
    for _ in range(epochs):
        for xb, yb in DataLoader(xtr, ytr, 64, seed=seed):
            t0 = time.perf_counter()
            loss = loss_fn(model(torch.from_numpy(xb)), torch.from_numpy(yb))
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    return {"test_accuracy": acc, "ms_per_step": 1e3 * float(np.mean(times))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    ours = train("lenet", epochs=args.epochs, progress=False)
    print("tensorcomp", json.dumps(ours))
    try:
        theirs = torch_lenet(args.epochs)
        print("torch eager", json.dumps(theirs))
        print(f"ms/step ratio tensorcomp / torch: {ours['ms_per_step'] / theirs['ms_per_step']:.2f}")
    except ImportError:
        print("torch not installed: no peer measured")


if __name__ == "__main__":
    main()
