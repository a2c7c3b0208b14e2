"""Shared helpers for the benchmarks: best-of-N timing and a machine description."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from typing import Callable


QUIET_S = 0.3  # a pause before each timing: a peer's BLAS/OpenMP threads spin on after its call


def best_of(fn: Callable[[], object], repeats: int = 5, inner: int = 1, warmup: int = 1) -> float:
    """Best time of ``repeats`` runs (each the mean over ``inner`` calls), after ``warmup`` calls.

    It first waits for the cores to go quiet: the last peer's BLAS or OpenMP threads spin on for a
    while after their call and would take half of them from whatever is timed next.
    """
    time.sleep(QUIET_S)
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from tensorcomp.runtime import host_target
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; LLVM target {host_target()}"


def fresh_process_seconds(code: str, cache: str) -> float | None:
    """Run ``code`` in a new Python process with ``TENSORCOMP_CACHE_DIR=cache``; the number on the last
    line it prints (seconds), or None when it failed (its stderr's tail goes to ours)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, TENSORCOMP_CACHE_DIR=cache))
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(out.stderr[-2000:], file=sys.stderr)
        return None
