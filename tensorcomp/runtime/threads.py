"""Running a kernel's parallel loop nests on all cores.

Each top-level loop nest of a kernel has an entry point that runs a slice
``[lo, hi)`` of its outermost loop. For a nest whose outer loop is marked
``parallel`` (its iterations write disjoint elements), the slices go to a
persistent thread pool; ctypes releases the GIL during each call, so the
slices run at once. Small kernels skip all this: below ``PARALLEL_MIN_POINTS``
iterations the threading costs more than it saves.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence


def num_threads() -> int:
    """Threads used for parallel loops: $TENSORCOMP_NUM_THREADS, else the cores this process may use."""
    env = os.environ.get("TENSORCOMP_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


PARALLEL_MIN_POINTS = 1 << 16
_pool: ThreadPoolExecutor | None = None


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < n:  # noqa: SLF001 - grow only
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tensorcomp")
    return _pool


def run_stages(stages: Sequence[tuple[Callable, int, int, bool]], ptrs: list[int], scalars: list,
               threads: int) -> None:
    """Run each stage in order; split the parallel ones into ``threads`` slices."""
    for fn, lo, hi, parallel in stages:
        n = min(threads, hi - lo) if parallel else 1
        if n <= 1:
            fn(*ptrs, lo, hi, *scalars)
            continue
        pool = _get_pool(n - 1)
        bounds = [lo + (hi - lo) * t // n for t in range(n + 1)]
        futures = [pool.submit(fn, *ptrs, bounds[t], bounds[t + 1], *scalars) for t in range(1, n)]
        fn(*ptrs, bounds[0], bounds[1], *scalars)  # this thread takes the first slice
        for f in futures:
            f.result()
