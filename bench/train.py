"""Training on the bundled MNIST subset: tensorcomp against torch eager, same recipe, same run.

    python bench/train.py [--epochs 3] [--models lenet,capsnet-small]

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
from tensorcomp.train import DEFAULT_TUNE_S, train  # noqa: E402


def _torch_models(device: str = "cpu"):
    import torch
    from torch import nn

    def squash(s):
        q = (s * s).sum(-1, keepdim=True)
        return s * q / ((1 + q) * torch.sqrt(q + 1e-9))

    class CapsNet(nn.Module):
        def __init__(self, channels, types, iterations=3):
            super().__init__()
            self.conv1 = nn.Conv2d(1, channels, 9)
            self.primary = nn.Conv2d(channels, types * 8, 9, stride=2)
            self.types, self.iterations = types, iterations
            self.W = nn.Parameter(0.05 * torch.randn(types * 36, 10, 16, 8))

        def forward(self, x):
            h = self.primary(torch.relu(self.conv1(x)))  # (N, types*8, 6, 6)
            n = h.shape[0]
            u = squash(h.view(n, self.types, 8, 6, 6).permute(0, 1, 3, 4, 2).reshape(n, -1, 8))
            votes = torch.einsum("nik,ijdk->nijd", u, self.W)
            b = torch.zeros(votes.shape[:3], device=votes.device)
            for t in range(self.iterations):
                c = torch.softmax(b, dim=2)
                v = squash((c.unsqueeze(-1) * votes).sum(1))
                if t < self.iterations - 1:
                    b = b + (votes * v.unsqueeze(1)).sum(-1)
            return torch.sqrt((v * v).sum(-1) + 1e-9)

    def margin(lengths, y):
        one = torch.nn.functional.one_hot(y, 10).float().to(lengths.device)
        return (one * torch.relu(0.9 - lengths) ** 2 + 0.5 * (1 - one) * torch.relu(lengths - 0.1) ** 2).sum(1).mean()

    def lenet():
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
                             nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    return {"lenet": (lenet, nn.CrossEntropyLoss()), "capsnet-small": (lambda: CapsNet(64, 8), margin),
            "capsnet": (lambda: CapsNet(256, 32), margin)}


def torch_train(model_name: str, epochs: int, seed: int = 0, device: str = "cpu", compiled: bool = False) -> dict:
    """The same model and recipe in torch eager, or with the model under ``torch.compile`` (inductor),
    on the CPU with as many threads as tensorcomp uses. The first step (compiling) is reported apart."""
    import torch
    from tensorcomp.target import num_threads
    torch.manual_seed(seed)
    torch.set_num_threads(num_threads())
    build, loss_fn = _torch_models(device)[model_name]
    model = build().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = torch.compile(model) if compiled else model
    xtr, ytr, xte, yte = mnist()
    times = []
    for _ in range(epochs):
        for xb, yb in DataLoader(xtr, ytr, 64, seed=seed):
            t0 = time.perf_counter()
            loss = loss_fn(run(torch.from_numpy(xb).to(device)), torch.from_numpy(yb).long().to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    with torch.no_grad():
        scores = np.concatenate([model(torch.from_numpy(xte[k:k + 250]).to(device)).cpu().numpy()
                                 for k in range(0, len(xte), 250)])
    return {"test_accuracy": float((scores.argmax(1) == yte).mean()), "ms_per_step": 1e3 * float(np.mean(times[1:])),
            "median_ms_per_step": 1e3 * float(np.median(times[1:])), "first_step_s": times[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default="lenet,capsnet-small")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tune", type=float, default=None, help="seconds of kernel tuning (CPU default 60)")
    parser.add_argument("--no-torch-compile", action="store_true", help="leave torch.compile out")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for name in args.models.split(","):
        tune_s = args.tune if args.tune is not None else (DEFAULT_TUNE_S if args.device == "cpu" else 0.0)
        ours = {}
        for mode in ("compiled", "eager", "compiled (tuned)"):  # (the first run tunes; later ones find it stored)
            try:
                ours[mode] = train(name, epochs=args.epochs, progress=False, device=args.device, tune_s=tune_s,
                                   background=tune_s > 0, compiled=mode != "eager")
                print(name, f"tensorcomp {mode}", json.dumps(ours[mode]))
            except Exception as exc:  # a failure is a measured fact (a GPU run has one try): report it
                print(name, f"tensorcomp {mode} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        if "compiled" not in ours or "eager" not in ours:
            continue
        try:
            peers = {"torch eager": torch_train(name, args.epochs, device=args.device)}
        except ImportError:
            print("torch not installed: no peer measured")
            continue
        if not args.no_torch_compile:
            try:
                peers["torch.compile"] = torch_train(name, args.epochs, device=args.device, compiled=True)
            except Exception as exc:  # a peer's failure is a measured fact: report it
                print(name, f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        for peer, theirs in peers.items():
            print(name, peer, json.dumps(theirs))
            for mode in ours:  # (each run's own ratio: "compiled" is what `tensorcomp train` does by default)
                print(f"{name}: ms/step tensorcomp {mode} / {peer}: "
                      f"{ours[mode]['ms_per_step'] / theirs['ms_per_step']:.2f}")


if __name__ == "__main__":
    main()
