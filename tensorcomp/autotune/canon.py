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


def _expr(e: Expr, m: dict[str, str]) -> Expr:
    lins = {k: Lin.var(v) for k, v in m.items()}
    if isinstance(e, Access):
        return Access(m[e.tensor], tuple(lin.rename(lins) for lin in e.index))
    if isinstance(e, Index):
        return Index(e.lin.rename(lins))
    if isinstance(e, Param):
        return Param(m[e.name])
    if isinstance(e, Call):
        return Call(e.fn, tuple(_expr(a, m) for a in e.args))
    return e


def canonical_source(program: Program) -> str:
    m = names_map(program)
    lins = {k: Lin.var(v) for k, v in m.items()}
    out = []
    for st in program.statements:
        out.append(str(Statement(m[st.target], tuple(lin.rename(lins) for lin in st.index), st.reduce,
                                 _expr(st.expr, m))))
    return "\n".join(out)


def rename_records(records: tuple[Record, ...], m: dict[str, str]) -> tuple[Record, ...]:
    """Rename the tensors and loop names in schedule records (loop names like ``i_o`` keep suffixes)."""
    def loop(name: str) -> str:
        parts = name.split("_")
        if all(p in m for p in parts if p not in ("o", "i")):
            return "_".join(m.get(p, p) if p not in ("o", "i") else p for p in parts)
        return m.get(name, name)
    out: list[Record] = []
    for r in records:
        if isinstance(r, Layout):
            out.append(Layout(m[r.tensor], r.perm, r.pad, r.blocks))
        elif isinstance(r, Split):
            out.append(Split(r.stmt, loop(r.index), r.factor))
        elif isinstance(r, Reorder):
            out.append(Reorder(r.stmt, tuple(loop(n) for n in r.order)))
        elif isinstance(r, Fuse):
            out.append(Fuse(r.stmt, loop(r.outer), loop(r.inner)))
        elif isinstance(r, Rfactor):
            out.append(Rfactor(r.stmt, loop(r.index), r.parts))
        elif isinstance(r, Stage):
            out.append(Stage(r.stmt, m[r.tensor], loop(r.loop)))
        elif isinstance(r, (Block, Threads)):
            out.append(r)
    return tuple(out)
