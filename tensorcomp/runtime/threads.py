"""Running a kernel's parallel loop nests on all cores.

Each top-level loop nest of a kernel has an entry point that runs a slice
``[lo, hi)`` of its outermost loop. For a nest whose outer loop is marked
``parallel`` (its iterations write disjoint elements), the slices go to a
persistent thread pool; ctypes releases the GIL during each call, so the
slices run at once. Small kernels skip all this: below ``target.PARALLEL_MIN_POINTS``
iterations the threading costs more than it saves (the thread count and slice rule live in
``tensorcomp.target``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from .pool import get as native_pool
from .pool import run_stage

_pool: ThreadPoolExecutor | None = None


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < n:  # noqa: SLF001 - grow only
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tensorcomp")
    return _pool


def _take(fn: Callable, ptrs: list[int], scalars: list, slices) -> None:
    for a, b in slices:  # next() on a shared iterator hands each slice to one thread
        fn(*ptrs, a, b, *scalars)


_DISPATCH: list[float] = []  # seconds one hand-off to the pool and back costs (measured once)
# serial runs of a parallel stage timed (the fastest counts) before it is decided: one, so that a kernel
# the tuner times (a warm-up call, then best of 3) is timed as it will run, not serially
TIMED_RUNS = 1
GAIN = 3.0  # a stage runs in parallel when it takes this many hand-offs' time serially


def dispatch_seconds(threads: int) -> float:
    """What handing a stage to the native workers and waiting for them costs here, with the workers
    awake (``pool.Pool.hand_off_seconds``): a few microseconds (Python threads: ~40-60 us)."""
    if not _DISPATCH:
        _DISPATCH.append(native_pool(max(threads - 1, 1)).hand_off_seconds())
    return _DISPATCH[0]


def run_stages(stages: Sequence[tuple[Callable, tuple[int, ...], int, int, int]], ptrs: list[int], scalars: list,
               threads: int, plan: list[float] | None = None) -> None:
    """Run each stage ``(entry, buffers it takes, lo, hi, slices per thread)`` in order; a parallel one
    (slices > 0) in ``threads`` x ``slices`` slices that the threads take in turn, so a thread whose core
    is shared with another process leaves its slices to the others instead of holding up the stage.

    ``plan`` (one entry per stage, kept by the caller across calls) decides which parallel stages are
    worth the hand-off: a stage's first ``TIMED_RUNS`` runs are serial and timed (entry: minus the
    runs left and the fastest serial seconds, then True or False); it then runs in parallel
    only when its serial time exceeds ``GAIN`` hand-offs (``dispatch_seconds``)."""
    for j, (fn, take, lo, hi, slices) in enumerate(stages):
        n = min(threads, hi - lo) if slices else 1
        own = [ptrs[k] for k in take]
        if n > 1 and plan is not None and plan[j] is not True:
            if plan[j] is False:
                n = 1
            else:  # undecided: (runs left, fastest serial seconds)
                t0 = time.perf_counter()
                fn(*own, lo, hi, *scalars)
                left, best = plan[j]
                best = min(best, time.perf_counter() - t0)
                plan[j] = (left - 1, best) if left > 1 else best > GAIN * dispatch_seconds(threads)
                continue
        if n <= 1:
            fn(*own, lo, hi, *scalars)
            continue
        c = min(hi - lo, n * slices)
        if run_stage(native_pool(n - 1), fn, own, scalars, lo, hi, c):
            continue
        pool = _get_pool(n - 1)
        bounds = [lo + (hi - lo) * t // c for t in range(c + 1)]
        slices = iter(list(zip(bounds[:-1], bounds[1:])))
        futures = [pool.submit(_take, fn, own, scalars, slices) for _ in range(1, n)]
        _take(fn, own, scalars, slices)  # this thread takes slices too
        for f in futures:
            f.result()


def new_plan(stages: Sequence) -> list:
    """A fresh ``plan`` for ``run_stages``: a stage cut into more than one slice per thread (at least
    ``2 * target.SLICE_POINTS`` statement instances, milliseconds of work against microseconds of
    hand-off) runs on the threads from its first call; every other stage undecided. (Timing the big
    ones serially first made the first call of a step that much slower: a new process's first
    capsnet-em step ran one third longer.)"""
    return [True if slices > 1 else (TIMED_RUNS, float("inf")) for _, _, _, _, slices in stages]


def all_serial(stages: Sequence, plan: list, threads: int) -> bool:
    """Whether every stage that could go to the threads was decided serial (then one call of the
    whole kernel runs them all, without a Python loop over stages and their buffers)."""
    return all(plan[j] is False or not slices or min(threads, hi - lo) <= 1
               for j, (_, _, lo, hi, slices) in enumerate(stages))
