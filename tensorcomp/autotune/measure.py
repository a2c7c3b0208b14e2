"""Measuring candidates: best-of-N timing, verification against the default, the gemm ceiling."""

from __future__ import annotations

import time

import numpy as np

from ..schedule.default import work


def measure(fn, repeats: int, give_up_after: float) -> float:
    """Best of ``repeats`` timed calls of ``fn`` after one warm-up call (which compiles), in seconds;
    timing stops early once the best is above ``give_up_after``."""
    fn()  # warm-up (and the first-call compile)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if best > give_up_after:  # far slower than the best so far: stop timing it
            break
    return best


def flops(bound) -> float:
    """Floating-point operations of one call (two per statement instance)."""
    return float(sum(work(bs) for bs in bound.statements)) * 2


def verify(outs, refs) -> None:
    """Raise ValueError unless a candidate's outputs match the default schedule's."""
    for got, want in zip(outs, refs):
        tol = 1e-3 if want.dtype == np.float32 else 1e-9
        scale = float(np.abs(want).max(initial=0.0)) or 1.0
        if not np.allclose(got, want, rtol=tol, atol=tol * scale):
            raise ValueError("output differs from the default schedule's")


# The search ends once its best reaches this fraction of the machine's gemm speed. Not lower: a
# best-of-N time on a shared machine runs ahead of later timings (the capsule kernel: 8.3 ms in the
# search, 9.3 ms after), and 0.95 of a 1024² gemm ended a 60 s capsule search after 3 candidates.
NEAR_CEILING = 1.0
GEMM_N = 2048  # the ceiling's matrix size (as bench/: OpenBLAS runs a smaller one slower)
_CEILINGS: dict[str, float] = {}


def gemm_ceiling(dtype: str, again: bool = False) -> float | None:
    """GFLOP/s of numpy's (BLAS) ``GEMM_N``² matrix product in ``dtype`` on this machine, best of 2,
    measured once per process (``again``: measured again, the best of both kept: a busy moment only
    ever lowers it); None for dtypes without one."""
    if dtype not in ("float32", "float64"):
        return None
    if dtype not in _CEILINGS or again:
        a = np.random.default_rng(0).standard_normal((GEMM_N, GEMM_N)).astype(dtype)
        best = measure(lambda: a @ a, 2, float("inf"))
        _CEILINGS[dtype] = max(_CEILINGS.get(dtype, 0.0), 2 * GEMM_N ** 3 / best / 1e9)
    return _CEILINGS[dtype]
