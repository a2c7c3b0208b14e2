"""tensorcomp ops inside PyTorch: per-call overhead, copies, and a hybrid CapsNet-small (same run).

    python bench/interop.py [--epochs 3] [--no-compile]

1. A tiny op (``O[i] = A[i] + 1.0`` on 16 floats) through ``tensorcomp.torch`` beside torch's own
   ``a + 1.0`` and beside the same tensorcomp op on NumPy arrays; best of 7 x 20,000 calls.
2. A 64 MB elementwise op (16M float32): through ``tensorcomp.torch``, on NumPy, and torch eager
   (equal times through torch and on NumPy mean no copies).
3. CapsNet-small (conv 9x9 64 channels, primary capsules 8 types x 8, 10 digit capsules of 16, three
   routing iterations, margin loss; batch 64, Adam 1e-3, the bundled 4,000/1,000 MNIST split, seed 0)
   in pure torch eager, and hybrid: the same torch convolutions, the squash, votes and dynamic routing
   as tensorcomp ops (``tensorcomp.torch.nn.DenseCapsules``, ``Squash``); ms/step and test accuracy;
   the hybrid again after tuning its hottest tensorcomp kernels (``--tune S``, as ``tensorcomp train``
   does), and the hybrid under ``torch.compile``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, machine  # noqa: E402
from train import _torch_models  # noqa: E402

import tensorcomp as tc  # noqa: E402
import tensorcomp.torch as tct  # noqa: E402
from tensorcomp.autotune.hot import profile, tune_hot  # noqa: E402
from tensorcomp.data import DataLoader, mnist  # noqa: E402
from tensorcomp.runtime import compile_count  # noqa: E402
from tensorcomp.torch.nn import DenseCapsules, Squash  # noqa: E402


def overhead() -> list[str]:
    tiny = tct.op("O[i] = A[i] + 1.0")
    a = torch.ones(16)
    raw = tc.op("O[i] = A[i] + 1.0")
    an = a.numpy()
    assert torch.equal(tiny(a), a + 1.0)
    rows = [("tensorcomp.torch op, 16 floats", best_of(lambda: tiny(a), 7, 20000)),
            ("torch eager a + 1.0, 16 floats", best_of(lambda: a + 1.0, 7, 20000)),
            ("tensorcomp op on NumPy, 16 floats", best_of(lambda: raw(an), 7, 20000))]
    big = tct.op("O[i] = A[i] * 2.0 + 1.0")
    rawbig = tc.op("O[i] = A[i] * 2.0 + 1.0")
    b = torch.randn(16 << 20)
    bn = b.numpy()
    assert torch.allclose(big(b), b * 2.0 + 1.0)
    rows += [("tensorcomp.torch op, 64 MB", best_of(lambda: big(b), 5)),
             ("tensorcomp op on NumPy, 64 MB", best_of(lambda: rawbig(bn), 5)),
             ("torch eager a * 2.0 + 1.0, 64 MB", best_of(lambda: b * 2.0 + 1.0, 5))]
    return [f"| {name} | {sec * 1e6:.2f} |" for name, sec in rows]


class HybridCapsNet(torch.nn.Module):
    """The bench's torch CapsNet with its capsule part (squash, votes, routing) as tensorcomp ops."""

    def __init__(self, channels: int = 64, types: int = 8) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, channels, 9)
        self.primary = torch.nn.Conv2d(channels, types * 8, 9, stride=2)
        self.types = types
        self.squash = Squash()
        self.digits = DenseCapsules(types * 36, 8, 10, 16)

    def forward(self, x):
        h = self.primary(torch.relu(self.conv1(x)))
        n = h.shape[0]
        u = self.squash(h.view(n, self.types, 8, 6, 6).permute(0, 1, 3, 4, 2).reshape(n, -1, 8))
        v = self.digits(u)
        return torch.sqrt((v * v).sum(-1) + 1e-9)


def train(model: torch.nn.Module, loss_fn, epochs: int, step=None) -> dict:
    """Adam 1e-3, batch 64; ms/step over the steps after the first that compiled no kernel (the first
    step, and the first of each new batch size, compile: they are reported apart), and test accuracy."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xtr, ytr, xte, yte = mnist()
    times, first, compiling = [], None, 0.0
    forward = model if step is None else step
    for _ in range(epochs):
        for xb, yb in DataLoader(xtr, ytr, 64, seed=0):
            before = compile_count()
            t0 = time.perf_counter()
            loss = loss_fn(forward(torch.from_numpy(xb)), torch.from_numpy(yb).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            elapsed = time.perf_counter() - t0
            if first is None:
                first = elapsed
            elif compile_count() != before:
                compiling += elapsed
            else:
                times.append(elapsed)
    with torch.no_grad():
        scores = np.concatenate([model(torch.from_numpy(xte[k:k + 250])).numpy() for k in range(0, len(xte), 250)])
    return {"ms_per_step": 1e3 * float(np.mean(times)), "first_step_s": first, "compiling_s": compiling,
            "test_accuracy": float((scores.argmax(1) == yte).mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the hybrid under torch.compile")
    parser.add_argument("--tune", type=float, default=60.0, help="seconds to tune the hybrid's hottest tensorcomp "
                        "kernels before its tuned run (0: no tuned run)")
    args = parser.parse_args()
    torch.set_num_threads(tc.target.num_threads())
    print(f"machine: {machine()}; torch {torch.__version__}; {torch.get_num_threads()} threads\n")
    print("| call | µs per call (best) |\n|---|---:|")
    print("\n".join(overhead()))
    build, margin = _torch_models()["capsnet-small"]
    rows = []
    torch.manual_seed(0)
    rows.append(("pure torch eager", train(build(), margin, args.epochs)))
    torch.manual_seed(0)
    rows.append(("hybrid (tensorcomp capsule layers), eager", train(HybridCapsNet(), margin, args.epochs)))
    if args.tune:  # the capsule ops' kernels tuned as `tensorcomp train` tunes its hottest ones
        torch.manual_seed(0)
        model = HybridCapsNet()
        x = torch.from_numpy(mnist()[0][:64])
        y = torch.from_numpy(mnist()[1][:64]).long()
        with profile() as prof:
            margin(model(x), y).backward()
        tuned = tune_hot(prof, args.tune)
        print(f"tuned {len([t for t in tuned if 'tuned_ms' in t])} capsule kernels in {args.tune:.0f} s")
        torch.manual_seed(0)
        rows.append((f"hybrid, capsule kernels tuned ({args.tune:.0f} s)", train(HybridCapsNet(), margin, args.epochs)))
    if not args.no_compile:
        torch.manual_seed(0)
        model = HybridCapsNet()
        rows.append(("hybrid under torch.compile", train(model, margin, args.epochs, torch.compile(model))))
    base = rows[0][1]["ms_per_step"]
    print(f"\nCapsNet-small, {args.epochs} epochs, batch 64\n")
    print("| model | ms/step | speed-up vs pure torch | first step s | later compiling steps s | test accuracy |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['ms_per_step']:.1f} | {base / r['ms_per_step']:.2f}x | {r['first_step_s']:.1f} | "
              f"{r['compiling_s']:.1f} | {r['test_accuracy']:.3f} |")


if __name__ == "__main__":
    main()
