"""Rfactor: a reduction cut into pieces that each reduce into a copy of the target, then combined.

``Rfactor(k, i, parts)`` (see ``records``) rewrites the bound op before it is
lowered: statement ``k``, ``X[w...] += f(i, ...)``, becomes

    X_rfk[i_o, w...] += f(lo + c*i_o + i_i, ...)     # c = ceil(extent(i) / parts)
    X[w...] += X_rfk[i_o, w...]                      # the same reduction (+=, max, min, prod)

with ``0 <= i_o < parts`` and ``0 <= i_i < c`` and the statement's own
constraints on ``i`` (``lo + c*i_o + i_i`` stays in ``i``'s domain, an isl
preimage). ``i_o`` is a plain written index of the first statement, so its
iterations write disjoint elements and the loop over it runs on threads; the
second reads each copy once. A reduction is taken as associative (the language
says so), so the result equals the original up to rounding.

The default CPU schedule factors the reductions that have nothing else to run in
parallel (``default_rfactor``): every written index is shorter than the thread
count (a scalar sum, a dot product, a matrix-vector product with two outputs).
"""

from __future__ import annotations

from dataclasses import replace

import islpy as isl

from ..domain.bind import Bound, BoundStatement, TensorInfo, dim_interval, index_set
from ..errors import ScheduleError
from ..lang.ir import Access, Lin, Statement
from ..target import slices_per_thread
from .records import Fuse, Record, Reorder, Rfactor, Split

# A statement is factored by default only when it runs at least this many instances: below, the
# extra pass that combines the copies and the hand-off to the threads cost more than they save.
RFACTOR_MIN_POINTS = 1 << 18
# ... and when filling and combining the copies reads and writes at most one element per this many
# statement instances.
COMBINE_SHARE = 16


def apply_rfactor(bound: Bound, schedule: tuple[Record, ...]) -> tuple[Bound, tuple[Record, ...]]:
    """``bound`` with every ``Rfactor`` record of ``schedule`` applied, and the other records renumbered
    for the statements it inserts (a record naming original statement ``j`` names it still)."""
    facts = {}
    for r in schedule:
        if isinstance(r, Rfactor):
            if r.stmt in facts:
                raise ScheduleError(f"Rfactor: statement {r.stmt} is factored twice ({facts[r.stmt]} and {r}); "
                                    "a statement's reduction can be cut along one index")
            if not 0 <= r.stmt < len(bound.statements):
                raise ScheduleError(f"Rfactor names statement {r.stmt}; the kernel runs {len(bound.statements)} "
                                    "(numbered from 0)")
            facts[r.stmt] = r
    if not facts:
        return bound, schedule
    statements: list[BoundStatement] = []
    tensors = dict(bound.tensors)
    program = bound.program
    new_index = {}
    for k, bs in enumerate(bound.statements):
        new_index[k] = len(statements)
        if k not in facts:
            statements.append(bs)
            continue
        partial, combine, info = _factor(bound, k, bs, facts[k], tensors)
        statements += [partial, combine]
        tensors[info.name] = info
        program = replace(program, temporaries=program.temporaries + (info.name,),
                          ranks=program.ranks + ((info.name, len(info.shape)),))
    program = replace(program, statements=tuple(s.stmt for s in statements))
    rest = tuple(replace(r, stmt=new_index[r.stmt]) if getattr(r, "stmt", None) is not None else r
                 for r in schedule if not isinstance(r, Rfactor))
    return Bound(program, tensors, tuple(statements), bound.param_types), rest


def _factor(bound: Bound, k: int, bs: BoundStatement, r: Rfactor, tensors: dict[str, TensorInfo]):
    """The partial and the combining statement of ``bs`` under ``r``, and the copies' tensor."""
    st = bs.stmt
    if st.reduce is None:
        raise ScheduleError(f"Rfactor: statement {k} ({st}) does not reduce; only a statement that combines "
                            "several values into each element (+=, max(...), ...) can be factored")
    reductions = st.reduction_names()
    if r.index not in reductions:
        known = ", ".join(reductions) if reductions else "none"
        why = (f"'{r.index}' is written by it (it indexes {st.target})" if r.index in st.write_names()
               else f"it has no index '{r.index}'")
        raise ScheduleError(f"Rfactor: statement {k} ({st}): {why}; its reduction indices are: {known}")
    lo, hi = next((a, b) for n, a, b in bs.extents if n == r.index)
    extent = hi - lo
    if r.parts > extent:
        raise ScheduleError(f"Rfactor: statement {k} cannot cut '{r.index}' ({extent} values) into {r.parts} "
                            f"parts; use at most {extent}")
    chunk = -(-extent // r.parts)
    parts = -(-extent // chunk)  # pieces that are not empty
    outer, inner = f"{r.index}_o", f"{r.index}_i"
    clash = {outer, inner} & set(bs.names)
    if clash:
        raise ScheduleError(f"Rfactor: statement {k} already has an index named {sorted(clash)[0]}, the name a "
                            f"piece of '{r.index}' takes; rename that index")
    name = f"{st.target}_rf{k}"
    while name in tensors:
        name += "_"
    renamed = st.rename_indices({r.index: Lin.var(outer) * chunk + Lin.var(inner) + lo})
    pst = Statement(name, (Lin.var(outer),) + renamed.index, st.reduce, renamed.expr, st.line)
    partial = split_statement(bs, pst, {r.index: (lo, chunk, parts)})

    shape = tensors[st.target].shape
    plain = [lin.plain_var for lin in st.index]  # the statement's own names where they name an axis
    axes = [p if p is not None and plain.count(p) == 1 else f"{st.target.lower()}{j}" for j, p in enumerate(plain)]
    axes = [a if a != outer and axes.count(a) == 1 else f"{a}_{j}" for j, a in enumerate(axes)]
    cst = Statement(st.target, tuple(Lin.var(a) for a in axes), st.reduce,
                    Access(name, tuple(Lin.var(n) for n in [outer] + axes)), st.line)
    cnames = cst.index_names()
    bounds = dict(zip(axes, shape)) | {outer: parts}
    cext = tuple((n, 0, bounds[n]) for n in cnames)
    combine = BoundStatement(cst, cnames, index_set(len(cnames), [f"0 <= d{j} < {b}" for j, (_, _, b) in enumerate(cext)]),
                             cext, bs.dtype, bs.dtype)
    return partial, combine, TensorInfo(name, (parts,) + tuple(shape), bs.dtype, "temporary")


def split_statement(bs: BoundStatement, st: Statement, splits: dict[str, tuple[int, int, int | None]]
                    ) -> BoundStatement:
    """``st`` bound over the domain of ``bs`` with each index ``n`` of ``splits`` (``n: (lo, factor,
    parts)``) replaced by ``lo + factor*n_o + n_i``, ``0 <= n_i < factor`` (and ``0 <= n_o < parts``
    unless None): the isl preimage of ``bs``'s domain, so every instance maps to one of ``bs``."""
    names = st.index_names()
    nd = {n: f"d{j}" for j, n in enumerate(names)}
    old = [f"{splits[n][0]} + {splits[n][1]}*{nd[n + '_o']} + {nd[n + '_i']}" if n in splits else nd[n]
           for n in bs.names]
    bounds = [f"0 <= {nd[n + '_i']} < {f}" + (f" and 0 <= {nd[n + '_o']} < {p}" if p is not None else "")
              for n, (_, f, p) in splits.items()]
    to_old = isl.Map(f"{{ [{', '.join(nd[n] for n in names)}] -> [{', '.join(old)}] : {' and '.join(bounds)} }}")
    domain = to_old.intersect_range(bs.domain).domain().coalesce()
    extents = tuple((n, *dim_interval(domain, j)) for j, n in enumerate(names))
    box = index_set(len(names), [f"{a} <= d{j} < {b}" for j, (_, a, b) in enumerate(extents)])
    if domain.is_equal(box):
        domain = box  # the same set without redundant constraints (simpler loops)
    return BoundStatement(st, names, domain, extents, bs.dtype, bs.expr_type)


def default_rfactor(bound: Bound, threads: int, schedule: tuple[Record, ...] = ()) -> tuple[Record, ...]:
    """``schedule`` with an ``Rfactor`` for each heavy reduction that nothing else runs in parallel (and
    that ``schedule`` does not schedule itself): every index it writes (plainly) is shorter than
    ``threads``. The index cut is its longest reduction index, into ``threads`` pieces (more, up to
    four per thread, for large statements, so a thread slowed by another process leaves pieces to the
    others), as long as the copies stay small next to the work."""
    if threads < 2:
        return schedule
    own = {r.stmt for r in schedule if isinstance(r, (Split, Reorder, Fuse, Rfactor))}
    out = tuple(schedule)
    for k, bs in enumerate(bound.statements):
        st = bs.stmt
        if st.reduce is None or k in own:
            continue
        extent = {n: b - a for n, a, b in bs.extents}
        if any(not lin.is_const and (lin.plain_var is None or extent[lin.plain_var] >= threads) for lin in st.index):
            continue
        instances = 1
        for n in bs.names:
            instances *= extent[n]
        if instances < RFACTOR_MIN_POINTS:
            continue
        index = max(st.reduction_names(), key=lambda n: extent[n])
        size = 1
        for n in bound.tensors[st.target].shape:
            size *= n
        parts = min(threads * slices_per_thread(instances), extent[index], instances // (COMBINE_SHARE * size))
        if parts >= 2:
            out += (Rfactor(k, index, parts),)
    return out


FEW_WRITTEN = 64  # the tuner tries Rfactor on reductions writing at most this many elements per thread


def rfactor_variants(bound: Bound, threads: int, base: tuple[Record, ...]) -> list[tuple[Record, ...]]:
    """``base`` with other ``Rfactor`` choices for its heavy reductions that write at most ``FEW_WRITTEN``
    elements per thread (the tuner's search over Rfactor):
    each reduction index cut into 1, 2, 4 and 8 pieces per thread, where the copies stay small next
    to the work (filling and combining them reads and writes at most one element per
    ``COMBINE_SHARE`` statement instances). Statements ``base`` schedules itself (Split, Reorder,
    Fuse) are left as they are."""
    if threads < 2:
        return []
    own = {r.stmt for r in base if isinstance(r, (Split, Reorder, Fuse))}
    out: list[tuple[Record, ...]] = []
    for k, bs in enumerate(bound.statements):
        st = bs.stmt
        if st.reduce is None or k in own:
            continue
        extent = {n: b - a for n, a, b in bs.extents}
        instances = 1
        for n in bs.names:
            instances *= extent[n]
        size = 1
        for n in bound.tensors[st.target].shape:
            size *= n
        if instances < RFACTOR_MIN_POINTS or size > FEW_WRITTEN * threads:
            continue
        rest = tuple(r for r in base if not (isinstance(r, Rfactor) and r.stmt == k))
        for index in st.reduction_names():
            for per in (1, 2, 4, 8):
                parts = threads * per
                if parts <= extent[index] and parts * size * COMBINE_SHARE <= instances:
                    out.append(rest + (Rfactor(k, index, parts),))
    return [c for c in out if c != tuple(base)]
