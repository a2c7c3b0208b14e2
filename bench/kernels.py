"""Default-schedule kernels and their derived gradients beside NumPy / torch, in one run.

    python bench/kernels.py            # all rows, default schedules
    python bench/kernels.py --tune 60  # also each tensorcomp kernel tuned for 60 s (tc.tune)
    python bench/kernels.py --quick    # smaller shapes

Prints GFLOP/s and the fraction of the sgemm ceiling measured in the same run and, for every
tensorcomp row, checks the result against the peer. With ``--tune`` the tuned schedules are stored in
the tuning database (``$TENSORCOMP_CACHE_DIR``; point it at an empty folder for a cold start).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, machine  # noqa: E402

import tensorcomp as tc  # noqa: E402
from tensorcomp import ops  # noqa: E402

try:
    import torch
    torch.set_num_threads(tc.target.num_threads())
except ImportError:  # torch is a peer, never a dependency
    torch = None


CEILING = [float("nan")]  # GFLOP/s of numpy's sgemm, measured in main()
TUNE_S = [0.0]  # seconds of tuning per tensorcomp kernel (--tune)


def row(name: str, flops: float, seconds: float, extra: str = "") -> None:
    gflops = flops / seconds / 1e9
    print(f"| {name} | {seconds * 1e3:9.2f} | {gflops:7.1f} | {gflops / CEILING[0]:.2f} | {extra} |", flush=True)


ROUNDS = 4  # with --tune: rounds of timing the untuned and the tuned schedule in turns


def ours(name: str, op, args: tuple, flops: float, repeats: int = 3) -> float:
    """Time ``op`` on its default schedule (a row), and with ``--tune`` also tuned (a second row; the
    two are then timed in turns, ``ROUNDS`` rounds, so a busy moment of a shared machine does not
    land on one of them only); returns the time of the schedule the op now runs."""
    default = op.with_schedule((), use_tuned=False)
    if not TUNE_S[0]:
        seconds = best_of(lambda: default(*args), repeats)
        row(f"{name} tensorcomp", flops, seconds)
        return seconds
    res = tc.tune(op, *args, budget_s=TUNE_S[0], progress=False)
    untuned = tuned = float("inf")
    for _ in range(ROUNDS):
        untuned = min(untuned, best_of(lambda: default(*args), repeats))
        tuned = min(tuned, best_of(lambda: op(*args), repeats))
    row(f"{name} tensorcomp, untuned", flops, untuned)
    row(f"{name} tensorcomp, tuned", flops, tuned,
        f"tuning {res.tuning_s:.0f} s, {len(res.trials) - 1} schedules; in-tuner best {res.best_s * 1e3:.2f} ms")
    return tuned


def check(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-3) -> None:
    scale = float(np.abs(ref).max()) or 1.0
    err = float(np.abs(got - ref).max()) / scale
    if err > rtol:
        raise SystemExit(f"mismatch: relative error {err:.2e}")


def sgemm_ceiling(n: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    t = best_of(lambda: a @ a, repeats=3)
    return 2 * n ** 3 / t / 1e9


def matmul(n: int) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    mm = ops.matmul()
    check(mm(a, b), a @ b)
    fl = 2 * n ** 3
    ours(f"matmul {n}²", mm, (a, b), fl)
    check(mm(a, b), a @ b)
    row(f"matmul {n}² numpy (OpenBLAS)", fl, best_of(lambda: a @ b, 3))


def conv3x3(n: int, c: int, hw: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, hw, hw, c), dtype=np.float32)
    w = rng.standard_normal((3, 3, c, c), dtype=np.float32) * 0.1
    conv = ops.conv(2, padding=1, channels_last=True)
    out = conv(x, w)
    fl = 2 * n * hw * hw * c * c * 9
    dO = rng.standard_normal(out.shape, dtype=np.float32)
    gI, gW = tc.grad(conv, "I"), tc.grad(conv, "W")
    name = f"conv2d 3x3 N={n} C=F={c} {hw}x{hw} pad 1"
    t_f = ours(f"{name} forward (NHWC)", conv, (x, w), fl)
    t_i = ours(f"{name} dI (derived)", gI, (x, w, dO), fl)
    t_w = ours(f"{name} dW (derived)", gW, (x, w, dO), fl)
    if torch is not None:
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
        tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_()
        tdo = torch.from_numpy(dO).permute(0, 3, 1, 2).contiguous()
        ref = torch.nn.functional.conv2d(tx, tw, padding=1)
        check(conv(x, w), ref.detach().permute(0, 2, 3, 1).numpy())
        ref.backward(tdo)
        check(gI(x, w, dO), tx.grad.permute(0, 2, 3, 1).numpy())
        check(gW(x, w, dO), tw.grad.permute(2, 3, 1, 0).numpy())

        def torch_fwd():
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, tw, padding=1)

        def torch_both():
            tx.grad = tw.grad = None
            torch.nn.functional.conv2d(tx, tw, padding=1).backward(tdo)
    if torch is not None:
        row(f"{name} forward torch eager (oneDNN, NCHW)", fl, best_of(torch_fwd, 3))
        t_b = best_of(torch_both, 3)
        row(f"{name} forward + dI + dW torch autograd", 3 * fl, t_b, "3x the forward FLOPs")
        row(f"{name} forward + dI + dW tensorcomp", 3 * fl, t_f + t_i + t_w, "sum of the three rows")


def capsule(n: int) -> None:
    rng = np.random.default_rng(0)
    I = rng.standard_normal((n, 14, 14, 32, 4, 4), dtype=np.float32)
    W = rng.standard_normal((3, 3, 32, 32, 4, 4), dtype=np.float32) * 0.1
    caps = ops.capsule_conv(2)
    out = caps(I, W)
    fl = 2 * out.size * 3 * 3 * 32 * 4
    dO = rng.standard_normal(out.shape, dtype=np.float32)
    gI, gW = tc.grad(caps, "I"), tc.grad(caps, "W")
    name = f"capsule conv N={n}"
    t_f = ours(f"{name} forward", caps, (I, W), fl)
    t_i = ours(f"{name} dI (derived)", gI, (I, W, dO), fl, 2)
    t_w = ours(f"{name} dW (derived)", gW, (I, W, dO), fl, 2)
    if torch is not None:
        tI = torch.from_numpy(I).requires_grad_()
        tW = torch.from_numpy(W).requires_grad_()
        tdO = torch.from_numpy(dO)

        def fwd():
            # unfold the 3x3 stride-2 windows, then one einsum (the usual eager formulation)
            patches = tI.unfold(1, 3, 2).unfold(2, 3, 2)  # n y x ci p q ky kx
            return torch.einsum("nyxcpqab,abcdqr->nyxdpr", patches, tW)

        ref = fwd()
        check(caps(I, W), ref.detach().numpy())
        ref.backward(tdO)
        check(gI(I, W, dO), tI.grad.numpy())
        check(gW(I, W, dO), tW.grad.numpy())

        def torch_fwd():
            with torch.no_grad():
                fwd()

        def torch_both():
            tI.grad = tW.grad = None
            fwd().backward(tdO)
        row(f"{name} forward torch eager (unfold + einsum)", fl, best_of(torch_fwd, 3))
        row(f"{name} forward + dI + dW torch autograd", 3 * fl, best_of(torch_both, 3), "3x the forward FLOPs")
        row(f"{name} forward + dI + dW tensorcomp", 3 * fl, t_f + t_i + t_w, "sum of the three rows")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tune", type=float, default=0.0, metavar="SECONDS",
                        help="also tune each tensorcomp kernel for this long and time it again")
    args = parser.parse_args()
    TUNE_S[0] = args.tune
    print(f"machine: {machine()}; {tc.target.num_threads()} threads; "
          f"torch {torch.__version__ if torch else 'not installed'}")
    t0 = time.perf_counter()
    CEILING[0] = sgemm_ceiling()
    print(f"sgemm ceiling (numpy 2048², this run): {CEILING[0]:.1f} GFLOP/s\n")
    print("| kernel | ms | GFLOP/s | fraction of ceiling | note |\n|---|---:|---:|---:|---|")
    matmul(256 if args.quick else 1024)
    conv3x3(2 if args.quick else 8, 64, 28 if args.quick else 56)
    capsule(4 if args.quick else 32)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
