"""Memory and recompilation over a long training run: RSS at every 50th step, kernels compiled.

    python bench/memory.py [--model lenet] [--steps 500]

RSS comes from /proc/self/statm. The first steps compile every kernel (and the last, partial batch
of an epoch its own); after that, no step may compile and RSS must stay flat.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from tensorcomp import nn, optim, train  # noqa: E402
from tensorcomp.data import DataLoader, mnist  # noqa: E402
from tensorcomp.runtime import compile_count  # noqa: E402
from tensorcomp.tensor import Tensor  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--steps", type=int, default=500)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    nn.manual_seed(0)
    build, make_loss = train.MODELS[args.model]
    model, loss_fn = build(), make_loss()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    xtr, ytr, _, _ = mnist()
    step, rows, compiled_after_warmup, warm = 0, [], 0, None
    t0 = time.perf_counter()
    while step < args.steps:
        for xb, yb in DataLoader(xtr, ytr, 64, shuffle=True, seed=step, drop_last=True):
            before = compile_count()
            loss = loss_fn(model(Tensor(xb)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if warm is not None and compile_count() != before:
                compiled_after_warmup += 1
            if step == 10:
                warm = rss_mb()
            if step % 50 == 0:
                rows.append((step, rss_mb(), loss.item()))
            if step >= args.steps:
                break
    print(f"{args.model}: {args.steps} steps in {time.perf_counter() - t0:.1f} s; kernels compiled: {compile_count()}, "
          f"steps that compiled after step 10: {compiled_after_warmup}")
    print("| step | RSS MB | loss |\n|---:|---:|---:|")
    for s, r, loss in rows:
        print(f"| {s} | {r:.1f} | {loss:.3f} |")
    growth = (rows[-1][1] - rows[0][1]) / rows[0][1]
    print(f"RSS growth from step {rows[0][0]} to {rows[-1][0]}: {100 * growth:+.1f}% (RSS at step 10: {warm:.1f} MB)")


if __name__ == "__main__":
    main()
