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

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

_pool: ThreadPoolExecutor | None = None


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < n:  # noqa: SLF001 - grow only
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tensorcomp")
    return _pool


def _take(fn: Callable, ptrs: list[int], scalars: list, slices) -> None:
    for a, b in slices:  # next() on a shared iterator hands each slice to one thread
        fn(*ptrs, a, b, *scalars)


def run_stages(stages: Sequence[tuple[Callable, tuple[int, ...], int, int, int]], ptrs: list[int], scalars: list,
               threads: int) -> None:
    """Run each stage ``(entry, buffers it takes, lo, hi, slices per thread)`` in order; a parallel one
    (slices > 0) in ``threads`` x ``slices`` slices that the threads take in turn, so a thread whose core
    is shared with another process leaves its slices to the others instead of holding up the stage."""
    for fn, take, lo, hi, slices in stages:
        n = min(threads, hi - lo) if slices else 1
        own = [ptrs[k] for k in take]
        if n <= 1:
            fn(*own, lo, hi, *scalars)
            continue
        pool = _get_pool(n - 1)
        c = min(hi - lo, n * slices)
        bounds = [lo + (hi - lo) * t // c for t in range(c + 1)]
        slices = iter(list(zip(bounds[:-1], bounds[1:])))
        futures = [pool.submit(_take, fn, own, scalars, slices) for _ in range(1, n)]
        _take(fn, own, scalars, slices)  # this thread takes slices too
        for f in futures:
            f.result()
