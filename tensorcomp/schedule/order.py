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
    reductions = [n for n in bs.names if n not in written and n not in group]
    outer = [n for n in written if n not in group]
    if gathers:
        outer = _reuse_outer(bs, outer, reductions + group, extent, itemsize)
    return tuple(outer + reductions + group), (group if len(group) > 1 else [])


LARGE_READ_BYTES = 1 << 19  # a read this large does not stay in the caches of a core across a sweep
MIN_OUTER_EXTENT = 16  # a loop moved outermost must still give every core work


def _reuse_outer(bs: BoundStatement, outer: list[str], inner: list[str], extent: dict[str, int],
                 itemsize: dict[str, int]) -> list[str]:
    """The written loops outside a statement's reductions (``outer``, in the written tensor's order)
    with, innermost, the one whose step brings the fewest new bytes -- each read that depends on a
    loop brings its slice over the ``inner`` loops at each step of it --, where a read that does not
    depend on that loop would otherwise not stay in cache between its steps (the loops inside it
    touch ``LARGE_READ_BYTES`` or more): the capsule votes ``U[n, i, j, d] += X[n, i, k] *
    W[i, j, d, k]`` with ``n`` innermost read each capsule's 5 KB of ``W`` once for the whole batch,
    not the whole 1.5 MB of ``W`` once per sample (0.64 -> 0.32 ms). Otherwise the order is kept."""
    if len(outer) < 2:
        return outer
    st = bs.stmt
    reads = [(a.tensor, {n for lin in a.index for n in lin.names()}) for a in dict.fromkeys(st.accesses())]

    def span(tensor: str, names: set[str], loops) -> int:
        size = itemsize.get(tensor, 4)
        for n in loops:
            if n in names:
                size *= extent[n]
        return size
    fresh = {n: sum(span(t, names, inner) for t, names in reads if n in names) for n in outer}
    last = min(reversed(outer), key=lambda n: fresh[n])  # (ties: the current innermost stays)
    if last == outer[-1] or 2 * fresh[last] > fresh[outer[-1]] or all(last in names for _, names in reads):
        return outer
    between = outer[outer.index(last) + 1:] + inner  # what runs between two steps of ``last``
    touched = sum(span(t, names, between) for t, names in
                  reads + [(st.target, {n for lin in st.index for n in lin.names()})])
    if touched < LARGE_READ_BYTES:
        return outer
    moved = [n for n in outer if n != last] + [last]
    return moved if moved[0] == outer[0] or extent[moved[0]] >= MIN_OUTER_EXTENT else outer


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
