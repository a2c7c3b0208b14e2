"""Contractions and reductions over axes."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from tensorcomp.opdef import Op

from ._util import join, names


@lru_cache(maxsize=None)
def matmul() -> Op:
    """``C = A @ B`` for 2-D A (m, k) and B (k, n)."""
    return Op("C[i, j] += A[i, k] * B[k, j]")


@lru_cache(maxsize=None)
def batched_matmul() -> Op:
    """``C[b] = A[b] @ B[b]`` for A (batch, m, k) and B (batch, k, n)."""
    return Op("C[b, i, j] += A[b, i, k] * B[b, k, j]")


def _reduce_source(kind: str, rank: int, axes: Sequence[int]) -> str:
    ax = sorted({a % rank for a in axes})
    idx = names("i", rank)
    kept = [i for k, i in enumerate(idx) if k not in ax]
    target = f"O[{join(kept)}]" if kept else "O"
    if kind == "sum":
        return f"{target} += X[{join(idx)}]"
    if kind == "mean":
        return f"{target} += X[{join(idx)}] * inv_count"  # inv_count is passed at call time
    return f"{target} = {kind}(X[{join(idx)}])"  # (argmax/argmin over several axes: the flat position)


@lru_cache(maxsize=None)
def reduce(kind: str, rank: int, axes: tuple[int, ...]) -> Op:
    """Sum, max, min or prod of a rank-``rank`` tensor over ``axes`` (axes dropped); ``argmax`` and
    ``argmin``: the position (int64) as ``numpy.argmax`` gives it along one axis, or the flat position
    in C order over several (ties and NaN: the first).

    ``mean`` is a sum times the parameter ``inv_count``; use :func:`mean`.
    """
    if kind not in ("sum", "max", "min", "prod", "mean", "argmax", "argmin"):
        raise ValueError(f"unknown reduction '{kind}'; use sum, mean, max, min, prod, argmax or argmin")
    return Op(_reduce_source(kind, rank, axes))


def mean(x, axes: Sequence[int]):
    """Mean of array ``x`` over ``axes``."""
    ax = tuple(sorted({a % x.ndim for a in axes}))
    count = 1
    for a in ax:
        count *= x.shape[a]
    return reduce("mean", x.ndim, ax)(x, inv_count=1.0 / count)
