"""The ``mark_tiles`` pass: find register tiles in a loop nest and decide how each is kept in registers.

A register tile is a chain of reduction loops ending in constant-bound loops over written indices,
around one reduction statement::

    for k: for c: for f in 0..64: C[.., f] += ...

The written element depends on the inner loops (the tile) and not on the reductions around them,
so its elements can stay in registers across the whole reduction: loaded once, updated in
registers, stored once. This pass replaces each such chain by a ``loopnest.Tile`` node that says
how (the decision the code generators used to take themselves while printing):

* CPU, "vector": at most ``MAX_VECTOR_TILE`` elements, a sum over floats whose innermost tile loop
  is contiguous in the written tensor and at least one SIMD vector long, its expression made of
  reads contiguous along that loop (or not depending on it) under + - * / and negation, with at
  most ``MAX_VECTOR_ACCUMULATORS`` accumulator vectors;
* CPU, "vector_sum": a tile of at most ``MAX_VECTOR_ACCUMULATORS`` elements (often one: no tile
  loops) summing floats whose innermost reduction loop (constant bounds, unit step, at least a
  vector long) the expression varies along and can be evaluated on vectors: one vector of partial
  sums per element;
* CPU, "scalar": any other tile of at most ``MAX_SCALAR_TILE`` elements;
* CUDA, "register": any tile of at most ``CUDA_MAX_TILE`` elements;
* CUDA with ``precision="tf32"``, "mma": a tile of the shape tensor cores take, computed by a whole
  warp (``schedule.tensor_cores``).
"""

from __future__ import annotations

from dataclasses import replace

from ..domain import Bound, TensorInfo
from ..lang import types
from ..lang.ir import Access, Call, Expr, Index, Lin, walk
from ..strides import ITEMSIZE
from .. import target
from ..target import CUDA_MAX_TILE, MAX_SCALAR_TILE
from .dims import gather_name
from .tensor_cores import mma_plan
from .loopnest import Compute, For, IConst, If, LoopNest, Node, Tile, to_lin

Strides = dict[str, tuple[int, ...]]


def mark_tiles(nest: LoopNest, bound: Bound, strides: Strides, target: str, precision: str = "fp32") -> LoopNest:
    """``nest`` with every register tile replaced by a ``Tile`` node (see the module docstring)."""
    return LoopNest(tuple(_mark(n, bound, strides, target, precision) for n in nest.body), nest.statements)


def _mark(node: Node, bound: Bound, strides: Strides, target: str, precision: str) -> Node:
    if isinstance(node, If):
        return replace(node, then=tuple(_mark(n, bound, strides, target, precision) for n in node.then),
                       orelse=tuple(_mark(n, bound, strides, target, precision) for n in node.orelse))
    if not isinstance(node, For):
        return node
    found = _tile(node, bound, strides, target, precision)
    if found is not None:
        return found
    return replace(node, body=tuple(_mark(n, bound, strides, target, precision) for n in node.body))


def _tile(node: For, bound: Bound, strides: Strides, target: str, precision: str) -> Tile | None:
    """The tile rooted at ``node`` with its kind decided, or None."""
    found = register_tile(node, bound, strides)
    if found is None:
        return None
    if target == "cuda":
        if precision == "tf32" and mma_plan(bound, found) is not None:
            return replace(found, kind="mma")
        return found if found.size <= CUDA_MAX_TILE else None
    lanes = _vector_tile_lanes(found, bound, strides)
    if lanes:
        return replace(found, kind="vector", lanes=lanes)
    lanes = _vector_sum_lanes(found, bound, strides)
    if lanes:
        return replace(found, kind="vector_sum", lanes=lanes)
    if found.size > MAX_SCALAR_TILE:
        return None
    return replace(found, kind="scalar")


def register_tile(node: Node, bound: Bound, strides: Strides) -> Tile | None:
    """``node`` as reduction loops around a register tile around one reduction statement, if it is
    one (kind "register", not yet sized against a target)."""
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
    bs = bound.statements[n.stmt]
    st = bs.stmt
    seen = set().union(*(lin.names() for lin in lins.values()))
    total = Lin()
    for j, (lin, stride) in enumerate(zip(st.index, strides[st.target])):
        if lin.plain_var is None and gather_name(bs, j) in seen:  # gather form: the loop over this coordinate
            total = total + Lin.var(gather_name(bs, j)) * stride
        else:
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
    if not reduction or any(lp.var in used for lp in reduction) or size < 1:
        return None
    return Tile("register", tuple(reduction), tuple(tile), n, total, size)


def _float_sum(tile: Tile, bound: Bound) -> str | None:
    """The tile's dtype when its statement is a sum over float32/float64, else None."""
    st = bound.statements[tile.compute.stmt].stmt
    t = bound.tensors[st.target].dtype
    return t if st.reduce == "sum" and t in ("float32", "float64") else None


def _vector_tile_lanes(tile: Tile, bound: Bound, strides: Strides) -> int:
    """Vector lanes when the tile runs as a "vector" tile, else 0."""
    t = _float_sum(tile, bound)
    if t is None or not tile.tile or tile.size > target.MAX_VECTOR_TILE:
        return 0
    inner = tile.tile[-1]
    width = target.VECTOR_BYTES // ITEMSIZE[t]
    extent = inner.hi.value - inner.lo.value
    if extent < width or sum(c for atom, c in tile.offset.terms if atom == inner.var) != ITEMSIZE[t]:
        return 0
    if tile.size // extent * -(-extent // width) > target.MAX_VECTOR_ACCUMULATORS:
        return 0
    lins = {name: to_lin(e) for name, e in tile.compute.env}
    st = bound.statements[tile.compute.stmt].stmt
    return width if vectorizable(bound, strides, st.expr, lins, inner.var, t) else 0


def _vector_sum_lanes(tile: Tile, bound: Bound, strides: Strides) -> int:
    """Vector lanes when a tile runs as a "vector_sum", else 0."""
    t = _float_sum(tile, bound)
    if t is None or tile.size > target.MAX_VECTOR_ACCUMULATORS:
        return 0
    inner = tile.reduction[-1]
    if inner.step != 1 or not isinstance(inner.lo, IConst) or not isinstance(inner.hi, IConst):
        return 0
    width = target.VECTOR_BYTES // ITEMSIZE[t]
    lins = {name: to_lin(e) for name, e in tile.compute.env}
    st = bound.statements[tile.compute.stmt].stmt
    if inner.hi.value - inner.lo.value < width or not varies(bound, strides, st.expr, lins, inner.var) or \
            not vectorizable(bound, strides, st.expr, lins, inner.var, t):
        return 0
    return width


# -- what runs on vectors along a loop ----------------------------------------------------------------
def padded(info: TensorInfo) -> bool:
    """Whether the tensor is read with zero (or constant) padding on some axis."""
    return bool(info.pad) and any(lo or hi for lo, hi in info.pad)


def offset_lin(strides: Strides, tensor: str, index: tuple[Lin, ...], lins: dict[str, Lin]) -> Lin:
    """The byte offset of ``tensor[index]`` with the statement's indices given in loop variables."""
    total = Lin()
    for lin, stride in zip(index, strides[tensor]):
        total = total + lin.rename(lins) * stride
    return total.expand_mod()


def varies(bound: Bound, strides: Strides, e: Expr, lins: dict[str, Lin], var: str) -> bool:
    """Whether ``e`` depends on loop ``var``."""
    for node in walk(e):
        if isinstance(node, Access) and var in offset_lin(strides, node.tensor, node.index, lins).names():
            return True
        if isinstance(node, Index) and var in node.lin.rename(lins).names():
            return True
    return False


def _typeof(bound: Bound, e: Expr) -> str:
    return types.infer(e, {t: info.dtype for t, info in bound.tensors.items()}, bound.param_types)


def vectorizable(bound: Bound, strides: Strides, e: Expr, lins: dict[str, Lin], var: str, t: str) -> bool:
    """Whether ``e`` can be evaluated on vectors along loop ``var``: sums, products and quotients
    of same-dtype reads that are contiguous along ``var``, and any subexpression that does not
    depend on ``var`` (evaluated once as a scalar and broadcast)."""
    if not varies(bound, strides, e, lins, var):  # padded reads included: the scalar read checks the pad
        return types.promote(_typeof(bound, e), t) == t
    if isinstance(e, Access):
        info = bound.tensors[e.tensor]
        if info.dtype != t:
            return False
        off = offset_lin(strides, e.tensor, e.index, lins)
        coef = sum(c for atom, c in off.terms if atom == var)
        inside = any(not isinstance(atom, str) and var in set(atom.num.names()) for atom, _ in off.terms)
        if inside or coef != ITEMSIZE[t]:
            return False
        # a padded read: lanes outside the real bounds masked off (its axes must be plain sums)
        return not padded(info) or all(isinstance(atom, str) for lin in e.index
                                       for atom, _ in lin.rename(lins).expand_mod().terms)
    if isinstance(e, Call) and e.fn in ("add", "sub", "mul", "neg", "truediv"):
        return _typeof(bound, e) == t and all(vectorizable(bound, strides, a, lins, var, t) for a in e.args)
    return False
