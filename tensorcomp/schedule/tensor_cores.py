"""Which register tiles run on tensor cores: the shape ``mma.sync.m16n8k8`` needs (``precision="tf32"``).

A statement ``C[..] += A[..] * B[..]`` -- a float32 sum of the product of two float32 reads -- fits
when its register tile (``schedule.tiles``) has this shape: the tile loops split into *M loops*,
which one operand reads and the other does not, and *N loops*, which only the other one reads,
covering a multiple of 16 and of 8 points; and the innermost reduction loops (constant bounds) that
both operands read -- the *K group* -- cover a multiple of 8 steps. ``mark_tiles`` marks such a
tile "mma"; ``codegen.cuda_mma`` prints it, one warp per tile.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..lang import types
from ..lang.ir import Access, Call
from .loopnest import For, IConst, Tile, to_lin
from .records import Reorder, Split

MAX_FRAGMENTS = 16  # MT * NT: 64 accumulators per lane


@dataclass(frozen=True)
class MmaPlan:
    """How one register tile maps onto ``mma.m16n8k8``: the loops of each dimension (outermost
    first), the operand indexed by M (``a``) and by N (``b``), and the fragment counts."""

    m: tuple[For, ...]
    n: tuple[For, ...]
    k: tuple[For, ...]  # the K group: the innermost reduction loops
    outer: tuple[For, ...]  # reduction loops around the K group
    a: Access
    b: Access
    mt: int  # 16-row fragments along M
    nt: int  # 8-column fragments along N
    kt: int  # 8-step chunks along K


def count(lp: For) -> int:
    return -(-(lp.hi.value - lp.lo.value) // lp.step)


def _product(loops) -> int:
    n = 1
    for lp in loops:
        n *= count(lp)
    return n


def mma_plan(bound, found: Tile) -> MmaPlan | None:
    """The tensor-core mapping of a register tile, or None where its statement or shape does not fit."""
    st = bound.statements[found.compute.stmt].stmt
    tensors = bound.tensors
    e = st.expr
    if st.reduce != "sum" or types.concrete(tensors[st.target].dtype) != "float32" or not (
            isinstance(e, Call) and e.fn == "mul" and all(isinstance(x, Access) for x in e.args)) or any(
            types.concrete(tensors[x.tensor].dtype) != "float32" for x in e.args):
        return None
    lins = {name: to_lin(x) for name, x in found.compute.env}
    if any(v is None for v in lins.values()):
        return None

    def reads(a: Access) -> set[str]:
        return {n for lin in a.index for n in lin.rename(lins).names()}
    for a, b in (e.args, e.args[::-1]):
        ra, rb = reads(a), reads(b)
        m = tuple(lp for lp in found.tile if lp.var in ra and lp.var not in rb)
        n = tuple(lp for lp in found.tile if lp.var in rb and lp.var not in ra)
        if len(m) + len(n) != len(found.tile) or not m or not n:
            continue
        rows, cols = _product(m), _product(n)
        if rows % 16 or cols % 8 or (rows // 16) * (cols // 8) > MAX_FRAGMENTS:
            continue
        k: list[For] = []
        for lp in reversed(found.reduction):  # the shortest innermost group that fills whole 8-step chunks
            if not (isinstance(lp.lo, IConst) and isinstance(lp.hi, IConst)) or lp.var not in ra or lp.var not in rb:
                break
            k.insert(0, lp)
            if _product(k) % 8 == 0:
                break
        if not k or _product(k) % 8:
            continue
        outer = found.reduction[:len(found.reduction) - len(k)]
        return MmaPlan(m, n, tuple(k), tuple(outer), a, b, rows // 16, cols // 8, _product(k) // 8)
    return None


def mma_schedules(bound, k: int, warps: int = 0) -> list[tuple]:
    """Schedules whose register tile for statement ``k`` fits ``mma_plan``: one written index that
    only one operand reads, split by 32 or 16, for M; one that only the other reads, split by 16
    or 8, for N; a reduction index both read, split by 8, innermost, for K; the other written
    indices outside (one tile per warp), the other reductions around the K group. Best guess first:
    the largest tiles (most reuse of each fragment) among those that give at least ``warps`` warps,
    then the others by how many warps they give."""
    bs = bound.statements[k]
    st = bs.stmt
    e = st.expr
    if st.reduce != "sum" or not (isinstance(e, Call) and e.fn == "mul" and all(isinstance(x, Access) for x in e.args)):
        return []
    if any(lin.plain_var is None for lin in st.index):
        return []
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    written = [lin.plain_var for lin in st.index]
    reductions = [n for n in bs.names if n not in written]

    def reads(a: Access) -> set[str]:
        return {n for lin in a.index for n in lin.names()}

    def parts(name: str, factors: tuple[int, ...]) -> list[tuple[tuple, str | None, str]]:
        """(records, outer loop or None, inner loop) for each way ``name`` makes whole fragments."""
        out = []
        for f in factors:
            if extent[name] == f:
                out.append(((), None, name))
            elif extent[name] % f == 0:
                out.append(((Split(k, name, f),), f"{name}_o", f"{name}_i"))
        return out
    total = 1
    for w in written:
        total *= extent[w]
    out = []
    for a, b in (e.args, e.args[::-1]):
        ra, rb = reads(a), reads(b)
        ms = [w for w in written if w in ra and w not in rb]
        ns = [w for w in written if w in rb and w not in ra]
        ks = [r for r in reductions if r in ra and r in rb]
        for m, n, kk in itertools.product(ms, ns, ks):
            for (mr, mo, mi), (nr, no, ni), (kr, ko, ki) in itertools.product(
                    parts(m, (32, 16)), parts(n, (16, 8)), parts(kk, (8,))):
                outer = [w for w in written if w not in (m, n)] + [x for x in (mo, no) if x]
                order = outer + [r for r in reductions if r != kk] + [x for x in (ko, ki) if x] + [mi, ni]
                tile = (extent[m] if mo is None else mr[0].factor) * (extent[n] if no is None else nr[0].factor)
                out.append((mr + nr + kr + (Reorder(k, tuple(order)),), total // tile, tile))
    out.sort(key=lambda c: (0, -c[2]) if c[1] >= warps else (1, -c[1]))  # (stable: the order above breaks ties)
    return list(dict.fromkeys(c[0] for c in out))
