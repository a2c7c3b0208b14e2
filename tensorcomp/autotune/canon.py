"""Canonical form of an op: tensors, indices and parameters renamed in order of first appearance.

Two ops that differ only in names (``C[i, j] += A[i, k] * B[k, j]`` and
``Z[a, b] += X[a, c] * Y[c, b]``) have one canonical source, so they share
tuning results; schedule records are stored in canonical names and mapped
back to each op's own names.
"""

from __future__ import annotations

from ..lang.ir import Access, Call, Expr, Index, Lin, Param, Program, Statement, walk
from ..schedule.records import Block, Fuse, Layout, Record, Reorder, Rfactor, Split, Stage, Threads


def names_map(program: Program) -> dict[str, str]:
    """Own name -> canonical name (T0.. tensors, x0.. indices, p0.. parameters). Declared tensors and
    parameters that no statement uses (a gradient op takes every input of its op) come last, in
    declaration order."""
    tensors: dict[str, str] = {}
    indices: dict[str, str] = {}
    params: dict[str, str] = {}
    for st in program.statements:
        for node in [Access(st.target, st.index), *walk(st.expr)]:
            if isinstance(node, Access):
                tensors.setdefault(node.tensor, f"T{len(tensors)}")
            elif isinstance(node, Param):
                params.setdefault(node.name, f"p{len(params)}")
        for n in st.index_names():
            indices.setdefault(n, f"x{len(indices)}")
    for name in (*program.inputs, *program.outputs, *program.temporaries):
        tensors.setdefault(name, f"T{len(tensors)}")
    for name in program.params:
        params.setdefault(name, f"p{len(params)}")
    return {**tensors, **indices, **params}


def _expr(e: Expr, m: dict[str, str], lins: dict[str, Lin]) -> Expr:
    if isinstance(e, Access):
        return Access(m[e.tensor], tuple(lin.rename(lins) for lin in e.index))
    if isinstance(e, Index):
        return Index(e.lin.rename(lins))
    if isinstance(e, Param):
        return Param(m[e.name])
    if isinstance(e, Call):
        return Call(e.fn, tuple(_expr(a, m, lins) for a in e.args))
    return e


def canonical_source(program: Program) -> str:
    return renamed_source(program, names_map(program))


def renamed_source(program: Program, m: dict[str, str]) -> str:
    """The program's statements with the names in ``m`` (tensors, indices, parameters) renamed."""
    m = {**{n: n for st in program.statements for n in st.index_names()},
         **{n: n for n in (*program.inputs, *program.outputs, *program.temporaries, *program.params)}, **m}
    lins = {k: Lin.var(v) for k, v in m.items()}
    out = []
    for st in program.statements:
        out.append(str(Statement(m[st.target], tuple(lin.rename(lins) for lin in st.index), st.reduce,
                                 _expr(st.expr, m, lins))))
    return "\n".join(out)


def rename_records(records: tuple[Record, ...], m: dict[str, str]) -> tuple[Record, ...]:
    """Rename the tensors and loop names in schedule records with ``m`` (index and tensor names).

    Loop names are derived from index names by the records themselves (``Split`` of ``i`` makes
    ``i_o`` and ``i_i``, ``Fuse`` of ``a`` and ``b`` makes ``a_b``), so they are renamed by replaying
    the records, per statement, on both sides: a loop name is never parsed, and an index named ``i`` or
    ``o`` (``nn.Linear``'s) is told apart from a split's suffix. Names the records do not make (a blocked
    layout's ``v_o``/``v_i``) are an index name plus suffixes."""
    loops: dict[int, dict[str, str]] = {}

    def known(stmt: int) -> dict[str, str]:
        return loops.setdefault(stmt, dict(m))

    def loop(stmt: int, name: str) -> str:
        table = known(stmt)
        if name in table:
            return table[name]
        for suffix in ("_o", "_i"):  # an index cut in two by a blocked layout, or by splits
            if name.endswith(suffix) and len(name) > 2:
                return loop(stmt, name[:-2]) + suffix
        return name
    out: list[Record] = []
    for r in records:
        if isinstance(r, Layout):
            out.append(Layout(m[r.tensor], r.perm, r.pad, r.blocks))
        elif isinstance(r, Split):
            new = loop(r.stmt, r.index)
            known(r.stmt).update({r.index + "_o": new + "_o", r.index + "_i": new + "_i"})
            out.append(Split(r.stmt, new, r.factor))
        elif isinstance(r, Reorder):
            out.append(Reorder(r.stmt, tuple(loop(r.stmt, n) for n in r.order)))
        elif isinstance(r, Fuse):
            if r.outer or r.inner:
                outer, inner = loop(r.stmt, r.outer), loop(r.stmt, r.inner)
                known(r.stmt)[f"{r.outer}_{r.inner}"] = f"{outer}_{inner}"
                out.append(Fuse(r.stmt, outer, inner))
            else:
                out.append(r)
        elif isinstance(r, Rfactor):
            new = loop(r.stmt, r.index)
            known(r.stmt).update({r.index + "_o": new + "_o", r.index + "_i": new + "_i"})
            out.append(Rfactor(r.stmt, new, r.parts))
        elif isinstance(r, Stage):
            out.append(Stage(r.stmt, m[r.tensor], loop(r.stmt, r.loop), r.buffers))
        elif isinstance(r, (Block, Threads)):
            out.append(r)
    return tuple(out)
