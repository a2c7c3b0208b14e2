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
from .records import Fuse, Record, Reorder, Split


@dataclass(frozen=True)
class Dim:
    name: str
    expr: str  # isl expression over the statement's d-dimensions
    lo: int
    extent: int
    sources: frozenset[str]  # the statement indices it is made of
    full: int = 0  # outer loop of a split whose factor does not divide the loop: its full iterations


def _accesses(bs: BoundStatement):
    st = bs.stmt
    yield st.target, st.index, 1
    for a in st.accesses():
        yield a.tensor, a.index, 2


def _axis_of(index, name: str) -> int | None:
    for axis, lin in enumerate(index):
        if lin.plain_var == name:
            return axis
    return None


def _mentions(index, name: str) -> bool:
    return any(name in lin.names() for lin in index)


def default_order(bs: BoundStatement, strides: dict[str, tuple[int, ...]], itemsize: dict[str, int],
                  gathers: bool = False) -> tuple[tuple[str, ...], list[str]]:
    """Loop order and the innermost group to fuse.

    Written indices go outside (in the written tensor's order), reductions
    inside, and innermost the index that walks the most tensors contiguously
    (a unit-coefficient index on the axis of stride one element; reads weigh
    more than the write). With ``gathers`` (the order of a statement without a
    vector tile), an index also loses a read's weight for each tensor it strides
    across: innermost, that is a load per element (for the written tensor a load
    and a store: LeNet's first convolution's input gradient with the batch index
    innermost, which only the reads walk contiguously, ran 120 ms) and everything
    computed from it per element, while a tensor it does not index stays put. That innermost
    index is then grown into a group of indices that together walk one
    contiguous run in every tensor they index (``stride(outer) == extent(inner)
    * stride(inner)``), up to 128 elements; the group is fused into one loop so
    short axes still vectorize.
    """
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    score = {n: 0 for n in bs.names}
    for tensor, index, weight in _accesses(bs):
        st = strides.get(tensor)
        if not index or st is None:
            continue
        walks = set()
        for axis, lin in enumerate(index):
            if abs(st[axis]) == itemsize[tensor] and lin.plain_var is not None:
                walks.add(lin.plain_var)
                break
            if abs(st[axis]) == itemsize[tensor]:
                walks.update(atom for atom, coef in lin.terms if isinstance(atom, str) and abs(coef) == 1)
                break
        for name in walks:
            score[name] += weight
        if gathers:  # a strided write costs a load and a store per element: as much as a strided read
            for name in {n for lin in index for n in lin.names()} - walks:
                score[name] -= 2
    written = bs.stmt.write_names()
    candidates = [n for n in bs.names if extent[n] > 1 and score[n] > 0]
    if not candidates:
        return tuple(written) + tuple(n for n in bs.names if n not in written), []
    # contiguity weighted by trip count (up to a few vectors): a contiguous 5-long loop vectorizes
    # worse than a contiguous 28-long one
    inner = max(candidates, key=lambda n: (score[n] * min(extent[n], 32), n in written, bs.names.index(n)))
    group = [inner]
    boxed = _is_box(bs)
    while boxed and _group_extent(group, extent) < 128:
        nxt = _extend(bs, group, extent, strides)
        if nxt is None:
            break
        group.insert(0, nxt)
    outer = [n for n in written if n not in group] + [n for n in bs.names if n not in written and n not in group]
    return tuple(outer + group), (group if len(group) > 1 else [])


def _group_extent(group: list[str], extent: dict[str, int]) -> int:
    total = 1
    for n in group:
        total *= extent[n]
    return total


def _is_box(bs: BoundStatement) -> bool:
    from ..domain.bind import _set
    box = _set(len(bs.names), [f"{lo} <= d{k} < {hi}" for k, (_, lo, hi) in enumerate(bs.extents)])
    return bs.domain.is_equal(box)


def _extend(bs: BoundStatement, group: list[str], extent: dict[str, int], strides) -> str | None:
    """An index that continues the group's contiguous run in every tensor that uses either."""
    head = group[0]
    for cand in bs.names:
        if cand in group or extent[cand] <= 1:
            continue
        ok, used = True, False
        for tensor, index, _ in _accesses(bs):
            has_c = _mentions(index, cand)
            has_g = [_mentions(index, g) for g in group]
            if not has_c and not any(has_g):
                continue
            axes = [_axis_of(index, n) for n in [cand] + group]
            st = strides.get(tensor)
            if not has_c or not all(has_g) or None in axes or st is None:
                ok = False
                break
            if st[axes[0]] != extent[head] * st[axes[1]]:
                ok = False
                break
            used = True
        if ok and used:
            return cand
    return None


def plan(k: int, bs: BoundStatement, records: list[Record], strides: dict[str, tuple[int, ...]],
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
    if target == "cpu" and not gather and not any(isinstance(r, (Split, Reorder, Fuse)) for r in mine):
        from .microkernel import default_tile
        mine += list(default_tile(bs, k, strides, itemsize) or ())
    if gather and not any(isinstance(r, Reorder) for r in mine):
        # gather form: loops over the written element's coordinates outermost (see lower.is_conflicting_scatter)
        order, _ = default_order(bs, strides, itemsize)
        outer = []
        for j, lin in enumerate(bs.stmt.index):
            name = lin.plain_var or f"{bs.stmt.target.lower()}{j}"
            outer.append(Dim(name, lin.to_isl(dim), 0, 0, frozenset(written_plain | {name})))
        plain = [lin.plain_var for lin in bs.stmt.index]
        inner = [d for n in order for d in dims if d.name == n and n not in plain]
        return outer + inner, {d.name for d in outer}

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


def disjoint_writers(bs: BoundStatement) -> set[str]:
    """The statement's indices whose distinct values never write one element: plain written indices,
    and those of compound written axes that determine them (``j_o`` in ``C[i, 16*j_o + j_i]`` with
    ``0 <= j_i < 16``, after a blocked layout), from the isl write map."""
    from ..domain.bind import write_map
    names = bs.names
    writes = write_map(names, bs.stmt.index, bs.domain)
    same = writes.apply_range(writes.reverse())  # pairs of instances writing one element
    ins, outs = ", ".join(f"d{j}" for j in range(len(names))), ", ".join(f"e{j}" for j in range(len(names)))
    return {n for j, n in enumerate(names)
            if same.intersect(isl.Map(f"{{ [{ins}] -> [{outs}] : d{j} != e{j} }}")).is_empty()}
