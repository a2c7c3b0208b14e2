"""Per-statement schedules: the time dimensions a statement's loops run over.

A statement's loops are a list of ``Dim``s, each a quasi-affine function of
the statement's indices (isl syntax) with a name, a lower bound and an extent.
Records (``Split``, ``Reorder``, ``Fuse``) rewrite that list; without records
the default heuristic picks the order and fuses contiguous innermost loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import islpy as isl

from ..domain import BoundStatement
from ..errors import ScheduleError
from ..domain.bind import write_map
from .order import default_order
from .records import Fuse, Record, Reorder, Split


@dataclass(frozen=True)
class Dim:
    name: str
    expr: str  # isl expression over the statement's d-dimensions
    lo: int
    extent: int
    sources: frozenset[str]  # the statement indices it is made of
    full: int = 0  # outer loop of a split whose factor does not divide the loop: its full iterations


def loop_dims(k: int, bs: BoundStatement, records: list[Record], strides: dict[str, tuple[int, ...]],
         itemsize: dict[str, int], gather: bool, target: str = "cpu") -> tuple[list[Dim], set[str]]:
    """The statement's loops (outermost first) and the loop names safe to run in parallel."""
    dim = {n: f"d{j}" for j, n in enumerate(bs.names)}
    extents = {n: (lo, hi - lo) for n, lo, hi in bs.extents}
    written_plain = {lin.plain_var for lin in bs.stmt.index} - {None}
    mine = [r for r in records if getattr(r, "stmt", None) == k]
    for r in mine:
        if isinstance(r, (Split, Reorder, Fuse)) and not 0 <= r.stmt:
            raise ScheduleError(f"schedule record {r} names statement {r.stmt}, which does not exist")
    dims = [Dim(n, dim[n], extents[n][0], extents[n][1], frozenset([n])) for n in bs.names]
    reorder = next((r for r in reversed(mine) if isinstance(r, Reorder)), None)
    if gather:
        # gather form: loops over the written element's coordinates (see lower.is_conflicting_scatter),
        # named by their plain index or as <target><axis>, outermost -- or in the order of a Reorder
        # that names exactly these loops (a register tile of written coordinates inside the reductions)
        order, _ = default_order(bs, strides, itemsize)
        outer = []
        for j, lin in enumerate(bs.stmt.index):
            name = lin.plain_var or gather_name(bs, j)
            outer.append(Dim(name, lin.to_isl(dim), 0, 0, frozenset(written_plain | {name})))
        plain = [lin.plain_var for lin in bs.stmt.index]
        inner = [d for n in order for d in dims if d.name == n and n not in plain]
        if reorder is None:
            return outer + inner, {d.name for d in outer}
        if sorted(reorder.order) == sorted(d.name for d in outer + inner):
            ordered = [next(d for d in outer + inner if d.name == n) for n in reorder.order]
            return ordered, {d.name for d in outer}

    for r in mine:
        if isinstance(r, Split):
            pos = next((j for j, d in enumerate(dims) if d.name == r.index), None)
            if pos is None:
                raise ScheduleError(f"Split: statement {k} has no loop '{r.index}'; its loops are: "
                                    f"{', '.join(d.name for d in dims)}")
            if r.factor < 1:
                raise ScheduleError(f"Split: factor must be >= 1, got {r.factor}")
            d = dims[pos]
            base = f"(({d.expr}) - ({d.lo}))"
            full = d.extent // r.factor if d.extent % r.factor and d.extent > r.factor else 0
            outer = Dim(f"{d.name}_o", f"floor({base}/{r.factor})", 0, -(-d.extent // r.factor), d.sources, full)
            inner = Dim(f"{d.name}_i", f"({base} mod {r.factor})", 0, min(r.factor, d.extent), d.sources)
            dims[pos:pos + 1] = [outer, inner]
    reorders = [r for r in mine if isinstance(r, Reorder)]
    fuses = [r for r in mine if isinstance(r, Fuse)]
    if reorders:
        order = reorders[-1].order
        names = [d.name for d in dims]
        if sorted(order) != sorted(names):
            raise ScheduleError(f"Reorder: statement {k} has loops {', '.join(names)}; the order must list each "
                                f"exactly once, got {', '.join(order)}")
        dims = [next(d for d in dims if d.name == n) for n in order]
    elif not any(isinstance(r, Split) for r in mine) and target == "cuda":
        # GPU default: every written index outside (one thread per written element), reductions inside
        written = bs.stmt.write_names()
        order = tuple(written) + tuple(n for n in bs.names if n not in written)
        dims = [next(d for d in dims if d.name == n) for n in order]
    elif not any(isinstance(r, Split) for r in mine):
        order, group = default_order(bs, strides, itemsize, gathers=True)
        dims = [next(d for d in dims if d.name == n) for n in order]
        if not fuses:
            fuses = [Fuse(k, "", "")] * (len(group) - 1)  # fuse the innermost group, pairwise from the inside
    for r in fuses:
        if r.outer == "":  # from the default heuristic: fuse the last two loops
            pos = len(dims) - 2
        else:
            names = [d.name for d in dims]
            if r.outer not in names or r.inner not in names or names.index(r.inner) != names.index(r.outer) + 1:
                raise ScheduleError(f"Fuse: loops '{r.outer}' and '{r.inner}' of statement {k} must be adjacent "
                                    f"(outer first); its loops are: {', '.join(names)}")
            pos = names.index(r.outer)
        a, b = dims[pos], dims[pos + 1]
        expr = f"(({a.expr}) - ({a.lo})) * {b.extent} + (({b.expr}) - ({b.lo}))"
        dims[pos:pos + 2] = [Dim(f"{a.name}_{b.name}", expr, 0, a.extent * b.extent, a.sources | b.sources)]
    safe = {d.name for d in dims if d.sources <= written_plain}
    written = set(bs.stmt.write_names())  # (a reduction index's values all write the same elements)
    if any(d.sources <= written and not d.sources <= written_plain for d in dims):
        disjoint = disjoint_writers(bs)  # an isl check, once per statement
        safe |= {d.name for d in dims if d.sources <= disjoint}
    return dims, safe


def gather_name(bs: BoundStatement, axis: int) -> str:
    """The loop over axis ``axis`` of the written tensor in gather form, where its index is not a
    plain index (``di1`` for axis 1 of ``dI``)."""
    return f"{bs.stmt.target.lower()}{axis}"


def gather_loops(bs: BoundStatement, order: list[str]) -> list[str]:
    """The loops of a statement in gather form: the written coordinates, then the other indices in
    ``order``."""
    plain = [lin.plain_var for lin in bs.stmt.index]
    return [p or gather_name(bs, j) for j, p in enumerate(plain)] + [n for n in order if n not in plain]


def disjoint_writers(bs: BoundStatement) -> set[str]:
    """The statement's indices whose distinct values never write one element: plain written indices,
    and those of compound written axes that determine them (``j_o`` in ``C[i, 16*j_o + j_i]`` with
    ``0 <= j_i < 16``, after a blocked layout), from the isl write map."""
    names = bs.names
    writes = write_map(names, bs.stmt.index, bs.domain)
    same = writes.apply_range(writes.reverse())  # pairs of instances writing one element
    ins, outs = ", ".join(f"d{j}" for j in range(len(names))), ", ".join(f"e{j}" for j in range(len(names)))
    return {n for j, n in enumerate(names)
            if same.intersect(isl.Map(f"{{ [{ins}] -> [{outs}] : d{j} != e{j} }}")).is_empty()}
