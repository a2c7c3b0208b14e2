"""Loop fusion across the statements of one op (CPU): consecutive statements that share their outer
loops run inside one nest of those loops.

Without fusion every statement (and the initialisation of what it writes) is a loop nest of its own,
a stage: the max-pool gradient's six nests (the pool's maximum, its initialisation, the tie count,
its initialisation, the gradient's initialisation, the gradient) each walk all of memory and each is
one dispatch to the thread pool. Fused over ``n, c`` they run as one nest, one ``(n, c)`` plane at a
time, every value they pass each other still in cache.

A group of consecutive statements may share their first ``m`` loops ``D`` when those open each
statement's loop order as plain, unsplit indices over the same ranges, and every access — read or
write — to a tensor written in the group indexes it with each loop of ``D`` (in each statement, its
own index at that position) alone on one axis, the same axis in every access. Then an instance at
one point of ``D`` touches only the elements of the group's tensors on that point's slice, so
running the points of ``D`` one after another, each running the group's statements in source order,
computes what the statements computed one after another; and the points write disjoint elements,
so the outer loop of ``D`` runs on the threads. An initialisation (``Fill``) joins the group of the
statement it initialises, its axes on ``D`` first. The shared loops take the names of the first
statement's indices; an inner loop of another statement with one of those names keeps it apart.

The isl schedule of a fused piece is ``[group, D..., position in group, the piece's other loops...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import islpy as isl

from ..domain import Bound
from .dims import Dim


@dataclass
class Piece:
    """One isl statement of the nest: a statement (or a peeled tail of one), or an initialisation."""

    name: str  # isl name: S3, S3t1 (a tail), F3 (statement 3's target initialised)
    domain: isl.Set
    stmt: int
    dims: list[Dim] | None  # the statement's loops; None for an initialisation
    loop_names: list[str]
    time: list[str] | None = None  # its isl schedule, set by ``schedule``
    names: list[str] | None = None  # the loop name of each time dimension after the first
    fused: tuple[str, ...] = ()  # the outer loops it shares with the rest of its group

    @property
    def fill(self) -> bool:
        return self.dims is None


def _plain_prefix(piece: Piece, bound: Bound) -> list[str]:
    """The leading loops of a statement piece that are plain, unsplit indices."""
    names = bound.statements[piece.stmt].names
    out = []
    for d in piece.dims:
        if d.name not in names or d.expr != f"d{names.index(d.name)}" or d.full:
            break
        out.append(d.name)
    return out


def _axes(group: list[Piece], m: int, bound: Bound) -> dict[str, list[int]] | None:
    """Per tensor written in the group, the axis each of the ``m`` shared loops indexes in every access
    to it (in each statement, the loop is that statement's own index at that position); None when some
    access does not index it so (sharing the loops would be illegal), or when the shared loops do not
    run over the same ranges in every piece (a shared loop over the largest range with a guard per
    piece inside would keep the pieces' loops from being vectorised)."""
    ranges: set[tuple] = set()
    names: dict[int, list[str]] = {}
    for p in group:
        if not p.fill:
            ranges.add(tuple((d.lo, d.extent) for d in p.dims[:m]))
            names[p.stmt] = [d.name for d in p.dims[:m]]
    written = {bound.statements[k].stmt.target for k in names}
    axes: dict[str, list[int]] = {}
    for k, fused in names.items():
        st = bound.statements[k].stmt
        accesses = [(st.target, st.index)] + [(a.tensor, a.index) for a in st.accesses()]
        for tensor, index in accesses:
            if tensor not in written:
                continue
            here = []
            for d in fused:
                at = [j for j, lin in enumerate(index) if lin.plain_var == d]
                if len(at) != 1:
                    return None
                here.append(at[0])
            if axes.setdefault(tensor, here) != here:
                return None
    shared = set(next(iter(names.values()), []))  # the shared loops' names: the first statement's
    for p in group:
        if p.fill:
            target = bound.statements[p.stmt].stmt.target
            if target not in axes:
                return None
            shape = bound.tensors[target].shape
            ranges.add(tuple((0, shape[a]) for a in axes[target]))
            inner = [n for j, n in enumerate(p.loop_names) if j not in axes[target]]
        else:
            inner = [d.name for d in p.dims[m:]]
        if shared & set(inner):  # an inner loop named as a shared one would hide it
            return None
    return axes if len(ranges) == 1 else None


def _units(pieces: list[Piece]) -> list[list[Piece]]:
    """Pieces cut into units that are fused or not as a whole: a statement's pieces (its tails) with
    the initialisation before them."""
    units: list[list[Piece]] = []
    for p in pieces:
        if units and not p.fill and units[-1][-1].stmt == p.stmt:
            units[-1].append(p)
        else:
            units.append([p])
    return units


def _prefix(unit: list[Piece], bound: Bound) -> int:
    """How many leading loops every statement piece of the unit runs over plain, unsplit indices."""
    return min((len(_plain_prefix(p, bound)) for p in unit if not p.fill), default=0)


def _legal(group: list[Piece], m: int, bound: Bound) -> tuple[int, dict]:
    """The most of the first ``m`` loops the group may share, and the axes."""
    for n in range(m, 0, -1):
        axes = _axes(group, n, bound)
        if axes is not None:
            return n, axes
    return 0, {}


def groups(pieces: list[Piece], bound: Bound) -> list[tuple[list[Piece], list[str], dict]]:
    """Consecutive units joined greedily while they share outer loops legally: (pieces, the shared
    loops' names — those of the group's first statement —, axes of the written tensors); no names for
    a piece run on its own."""
    out: list[tuple[list[Piece], list[str], dict]] = []
    group: list[Piece] = []
    fused, axes = 0, {}

    def close() -> None:
        if len(group) > 1 and fused:
            first = next(p for p in group if not p.fill)
            out.append((group, [d.name for d in first.dims[:fused]], axes))
        else:
            out.extend(([p], [], {}) for p in group)

    for unit in _units(pieces):
        mine = _prefix(unit, bound)
        if group:
            both, found = _legal(group + unit, min(fused, mine), bound)
            if both:
                group, fused, axes = group + unit, both, found
                continue
        close()
        group = unit
        fused, axes = _legal(unit, mine, bound)
    close()
    return out


def schedule(pieces: list[Piece], bound: Bound, fuse: bool = True) -> int:
    """Set every piece's isl schedule (``time``) and loop names (``names``); return the schedule's
    width. Without ``fuse``, every piece is a nest of its own."""
    slot = 0
    for group, fused, axes in groups(pieces, bound) if fuse else [([p], [], {}) for p in pieces]:
        for pos, p in enumerate(group):
            if not fused:
                dims = [d.expr for d in p.dims] if not p.fill else [f"e{j}" for j in range(len(p.loop_names))]
                p.time, p.names = [str(slot), *dims], list(p.loop_names)
            elif p.fill:
                tensor = bound.statements[p.stmt].stmt.target
                on = axes[tensor]
                rest = [j for j in range(len(p.loop_names)) if j not in on]
                p.time = [str(slot), *(f"e{j}" for j in on), str(pos), *(f"e{j}" for j in rest)]
                p.names = [*fused, "", *(p.loop_names[j] for j in rest)]
                p.fused = tuple(fused)
            else:
                m = len(fused)
                p.time = [str(slot), *(d.expr for d in p.dims[:m]), str(pos), *(d.expr for d in p.dims[m:])]
                p.names = [*fused, "", *(d.name for d in p.dims[m:])]
                p.fused = tuple(fused)
            if not fused:
                slot += 1
        if fused:
            slot += 1
    return max(len(p.time) for p in pieces)
