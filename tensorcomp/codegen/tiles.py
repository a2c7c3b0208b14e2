"""Register tiles: a chain of reduction loops ending in constant-bound loops over written indices.

``for k: for c: for f in 0..64: C[.., f] += ...`` — the written element depends on the inner
loops (the tile) and not on the reductions around them, so a backend can keep the tile's elements
in registers across the whole reduction: load them once, update them in registers, store them
once. Both backends use this: the GPU unrolls the tile loops over a local array, the CPU emits
the tile unrolled over a stack array that LLVM promotes to (vector) registers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain import Bound
from ..lang.ir import Lin
from ..schedule.loopnest import Compute, For, IConst, Node
from ..schedule.loopnest import to_lin


@dataclass(frozen=True)
class Tile:
    reduction: tuple[For, ...]  # outermost first; the written element does not depend on them
    tile: tuple[For, ...]  # constant bounds, unit step; the written element depends on each
    compute: Compute
    offset: Lin  # the written element's byte offset as a function of the loop variables
    size: int  # elements in the tile


def register_tile(node: Node, bound: Bound, strides: dict[str, tuple[int, ...]], max_size: int) -> Tile | None:
    """``node`` as reduction loops around a register tile around one reduction statement, if it is one."""
    loops: list[For] = []
    n: Node = node
    while isinstance(n, For):
        loops.append(n)
        if len(n.body) != 1:
            return None
        n = n.body[0]
    if not isinstance(n, Compute) or bound.statements[n.stmt].stmt.reduce is None:
        return None
    lins = {name: to_lin(e) for name, e in n.env}
    if any(v is None for v in lins.values()):
        return None
    st = bound.statements[n.stmt].stmt
    total = Lin()
    for lin, stride in zip(st.index, strides[st.target]):
        total = total + lin.rename(lins) * stride
    total = total.expand_mod()
    used = set(total.names())
    j = len(loops)
    while j > 0 and loops[j - 1].var in used and loops[j - 1].step == 1 and \
            isinstance(loops[j - 1].lo, IConst) and isinstance(loops[j - 1].hi, IConst):
        j -= 1
    reduction, tile = loops[:j], loops[j:]
    size = 1
    for lp in tile:
        size *= lp.hi.value - lp.lo.value
    if not reduction or any(lp.var in used for lp in reduction) or size > max_size or size < 1:
        return None
    return Tile(tuple(reduction), tuple(tile), n, total, size)
