"""Scans along one axis: cumulative sums and products, inclusive or exclusive, forward or reverse.

Each is one statement: the output at position i reduces the input over the positions j that come at or
before i (``where`` picks them), so domains, code generation and gradients are those of any reduction
(a scan's gradient is the reverse scan; a product's is exact with zero factors, as every ``prod``).
The cost is quadratic in the axis length (a statement that reads its own earlier values, with a
serial loop along the axis, would make it linear).
"""

from __future__ import annotations

from functools import lru_cache

from tensorcomp.errors import ShapeError
from tensorcomp.opdef import Op

from ._util import join, names


def _source(kind: str, rank: int, axis: int, reverse: bool, exclusive: bool) -> str:
    if rank < 1:
        raise ShapeError(f"a scan needs a tensor of rank >= 1, got rank {rank}")
    if not -rank <= axis < rank:
        raise ShapeError(f"scan: axis {axis} is out of range for a tensor of rank {rank}")
    axis %= rank
    idx = names("i", rank)
    src = list(idx)
    src[axis] = "j"
    i = idx[axis]
    before = {(False, False): "j <= {i}", (False, True): "j < {i}", (True, False): "j >= {i}",
              (True, True): "j > {i}"}[(reverse, exclusive)].format(i=i)
    identity = "0" if kind == "sum" else "1"
    # (X[..., i] in a branch never taken: it gives i its range, the extent of the axis)
    picked = f"where({before}, X[{join(src)}], where(j < 0, X[{join(idx)}], {identity}))"
    return f"C[{join(idx)}] += {picked}" if kind == "sum" else f"C[{join(idx)}] = prod({picked})"


@lru_cache(maxsize=None)
def cumsum(rank: int, axis: int = -1, reverse: bool = False, exclusive: bool = False) -> Op:
    """``numpy.cumsum(x, axis)`` of a rank-``rank`` tensor; ``reverse``: from the end; ``exclusive``:
    each position leaves itself out (the first is 0)."""
    return Op(_source("sum", rank, axis, reverse, exclusive))


@lru_cache(maxsize=None)
def cumprod(rank: int, axis: int = -1, reverse: bool = False, exclusive: bool = False) -> Op:
    """``numpy.cumprod(x, axis)``, with the same options as :func:`cumsum` (exclusive: the first is 1)."""
    return Op(_source("prod", rank, axis, reverse, exclusive))
