"""The default loop order of a statement: written indices outside, the most contiguous innermost.

``default_order`` is the rule every unscheduled statement follows (``schedule.dims``) and the base
from which the vector tiles (``schedule.microkernel``) and the tuner's window orders start.
"""

from __future__ import annotations

from ..domain import BoundStatement
from ..domain.bind import index_set


def _accesses(bs: BoundStatement):
    """The write and each distinct read (an element read several times in the expression is one load:
    a routing gradient's ``Q[n, j]`` appears six times beside ``S[n, j, d]`` once)."""
    st = bs.stmt
    yield st.target, st.index, 1
    for a in dict.fromkeys(st.accesses()):
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
    box = index_set(len(bs.names), [f"{lo} <= d{k} < {hi}" for k, (_, lo, hi) in enumerate(bs.extents)])
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
