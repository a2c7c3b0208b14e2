"""Small helpers for writing op sources of any rank."""

from __future__ import annotations

from typing import Sequence


def names(prefix: str, n: int) -> list[str]:
    """Index names ``prefix0 .. prefix{n-1}`` (``["y0", "y1"]``)."""
    return [f"{prefix}{k}" for k in range(n)]


def per_axis(value: int | Sequence[int], rank: int, what: str) -> tuple[int, ...]:
    """An int applies to every spatial axis; a sequence gives one value per axis."""
    if isinstance(value, int):
        return (value,) * rank
    out = tuple(int(v) for v in value)
    if len(out) != rank:
        raise ValueError(f"{what} has {len(out)} values but the op has {rank} spatial axes")
    return out


def affine(stride: int, outer: str, dilation: int, inner: str) -> str:
    """``stride*outer + dilation*inner`` written without unit coefficients."""
    a = outer if stride == 1 else f"{stride}*{outer}"
    b = inner if dilation == 1 else f"{dilation}*{inner}"
    return f"{a} + {b}"


def join(xs: Sequence[str]) -> str:
    return ", ".join(xs)
