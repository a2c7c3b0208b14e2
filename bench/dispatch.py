"""Per-call overhead of a cached op on tiny inputs, beside NumPy and torch eager (same run).

    python bench/dispatch.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, machine  # noqa: E402

import tensorcomp as tc  # noqa: E402


def main() -> None:
    a = np.ones(4, np.float32)
    b = np.ones(4, np.float32)
    add1 = tc.op("O[i] = A[i] + 1")
    axpy = tc.op("O[i] = A[i] * s + B[i]")
    mm = tc.op("C[i, j] += A[i, k] * B[k, j]")
    m = np.ones((2, 2), np.float32)
    np.testing.assert_allclose(add1(a), a + 1)
    np.testing.assert_allclose(axpy(a, b, s=2.0), a * 2 + b)
    rows = [
        ("tensorcomp  O[i] = A[i] + 1", lambda: add1(a)),
        ("tensorcomp  O[i] = A[i] * s + B[i]  (2 inputs, 1 parameter)", lambda: axpy(a, b, s=2.0)),
        ("tensorcomp  2x2 matmul", lambda: mm(m, m)),
        ("numpy       a + 1", lambda: a + 1),
        ("numpy       2x2 a @ b", lambda: m @ m),
    ]
    try:
        import torch
        ta, tb, tm = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(m)
        rows += [("torch eager a + 1", lambda: ta + 1), ("torch eager a * 2 + b", lambda: torch.add(tb, ta, alpha=2)),
                 ("torch eager 2x2 a @ b", lambda: tm @ tm)]
    except ImportError:
        rows.append(("torch not installed", None))
    print(f"machine: {machine()}")
    print(f"{'call':62s} {'µs per call (best of 7 x 20000)':>32s}")
    for name, fn in rows:
        if fn is None:
            print(name)
            continue
        t = best_of(fn, repeats=7, inner=20000)
        print(f"{name:62s} {t * 1e6:32.2f}")


if __name__ == "__main__":
    main()
