"""Blocked layouts: an input's axis cut into blocks, stored as two axes (packed panels).

``Layout(X, perm, blocks=((a, b),))`` stores input ``X`` with its axis ``a`` cut
into blocks of ``b`` elements: ``X[..., v, ...]`` becomes ``X[..., v // b, v % b, ...]``
on a tensor with one more axis (``ceil(n / b)`` blocks of ``b``), whose axes are then
stored in order ``perm``. A matrix product's ``B[k, j]`` with ``blocks=((1, 16),)``
and ``perm=(1, 0, 2)`` is the packed column panel of a BLAS: each 16-wide panel
down all of ``k`` one contiguous run, where it was 16 floats per row.

This rewrites the bound op before it is lowered (like ``rfactor``): every
statement reading ``X`` indexes the blocked axis with a plain index ``v`` (else a
ScheduleError), and ``v`` is replaced by ``b*v_o + v_i`` with ``0 <= v_i < b``
(the statement's domain is the isl preimage, so ``v`` stays in its range and every
access in bounds), so the access is ``X[..., v_o, v_i, ...]``, affine with plain
strides. The statement's loops over ``v`` are then ``v_o`` and ``v_i``, as after
``Split(k, v, b)`` (which the block makes redundant and absorbs; another split of
``v`` is an error: split ``v_o`` or ``v_i``).
"""

from __future__ import annotations

from dataclasses import replace

from ..domain.bind import Bound, BoundStatement
from ..errors import ScheduleError
from ..lang.ir import Access, Call, Expr, Index, Lin, Statement
from .records import Layout, Record, Split
from .rfactor import split_statement


def blocked_shape(shape: tuple[int, ...], blocks: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """The shape of a tensor of ``shape`` with each (axis, size) of ``blocks`` cut into
    (blocks, size): the last block is padded when ``size`` does not divide the axis."""
    sizes = dict(blocks)
    out: list[int] = []
    for a, n in enumerate(shape):
        out += [-(-n // sizes[a]), sizes[a]] if a in sizes else [n]
    return tuple(out)


def check_blocks(label: str, tensor: str, rank: int, blocks) -> None:
    """Raise ScheduleError unless ``blocks`` is a tuple of distinct (axis, size >= 2) pairs."""
    ok = isinstance(blocks, tuple) and all(
        isinstance(p, tuple) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in blocks)
    if not ok or any(not 0 <= a < rank or b < 2 for a, b in blocks) or len({a for a, _ in blocks}) != len(blocks):
        raise ScheduleError(f"{label}: Layout blocks of {tensor} must be distinct (axis, size) pairs with "
                            f"0 <= axis < {rank} and size >= 2, got {blocks!r}")


def apply_blocks(bound: Bound, schedule: tuple[Record, ...]) -> tuple[Bound, tuple[Record, ...]]:
    """``bound`` with every blocked input of ``schedule`` stored blocked and the statements reading it
    rewritten (see the module doc); the records, less the splits the blocks absorb."""
    blocks = {r.tensor: dict(r.blocks) for r in schedule if isinstance(r, Layout) and r.blocks}
    if not blocks:
        return bound, schedule
    tensors = dict(bound.tensors)
    for name, sizes in blocks.items():
        info = tensors[name]
        if info.role != "input":
            raise ScheduleError(f"Layout blocks {name}, a {info.role}; only inputs (copied into the blocked "
                                "layout per call) can be blocked")
        if info.pad:
            raise ScheduleError(f"Layout blocks {name}, which is read with pad=; block an input without padding")
        tensors[name] = replace(info, shape=blocked_shape(info.shape, tuple(sorted(sizes.items()))))
    statements = []
    absorbed: set[int] = set()
    for k, bs in enumerate(bound.statements):
        splits = _splits(k, bs, blocks)
        if not splits:
            statements.append(bs)
            continue
        for j, r in enumerate(schedule):
            if isinstance(r, Split) and r.stmt == k and r.index in splits:
                if r.factor != splits[r.index]:
                    raise ScheduleError(f"Split(stmt={k}, '{r.index}', {r.factor}): statement {k}'s index "
                                        f"'{r.index}' is cut into blocks of {splits[r.index]} by a Layout; its "
                                        f"loops are '{r.index}_o' and '{r.index}_i': split those instead")
                absorbed.add(j)
        statements.append(_blocked_statement(bs, blocks, splits))
    rest = tuple(r for j, r in enumerate(schedule) if j not in absorbed)
    return Bound(bound.program, tensors, tuple(statements), bound.param_types), rest


def _splits(k: int, bs: BoundStatement, blocks: dict[str, dict[int, int]]) -> dict[str, int]:
    """Index -> block size for the indices of statement ``k`` that index a blocked axis."""
    out: dict[str, int] = {}
    for a in bs.stmt.accesses():
        for axis, size in blocks.get(a.tensor, {}).items():
            lin = a.index[axis]
            v = lin.plain_var
            if v is None:
                raise ScheduleError(f"Layout blocks axis {axis} of {a.tensor}, which statement {k} ({bs.stmt}) "
                                    f"indexes with '{lin}'; only an axis indexed by a plain index can be blocked")
            if out.get(v, size) != size:
                raise ScheduleError(f"Layout blocks give statement {k}'s index '{v}' two block sizes "
                                    f"({out[v]} and {size}); block the axes it indexes alike")
            out[v] = size
    clash = {f"{v}_{s}" for v in out for s in "oi"} & set(bs.names)
    if clash:
        raise ScheduleError(f"Layout blocks: statement {k} already has an index named {sorted(clash)[0]}, the "
                            "name a block loop takes; rename that index")
    return out


def _blocked_statement(bs: BoundStatement, blocks: dict[str, dict[int, int]],
                       splits: dict[str, int]) -> BoundStatement:
    st = bs.stmt
    mapping = {v: Lin.var(f"{v}_o") * b + Lin.var(f"{v}_i") for v, b in splits.items()}

    def sub(expr: Expr) -> Expr:
        if isinstance(expr, Access):
            sizes = blocks.get(expr.tensor, {})
            index: list[Lin] = []
            for axis, lin in enumerate(expr.index):
                if axis in sizes:
                    v = lin.plain_var
                    index += [Lin.var(f"{v}_o"), Lin.var(f"{v}_i")]
                else:
                    index.append(lin.rename(mapping))
            return Access(expr.tensor, tuple(index))
        if isinstance(expr, Index):
            return Index(expr.lin.rename(mapping))
        if isinstance(expr, Call):
            return Call(expr.fn, tuple(sub(a) for a in expr.args))
        return expr
    new = Statement(st.target, tuple(lin.rename(mapping) for lin in st.index), st.reduce, sub(st.expr), st.line)
    return split_statement(bs, new, {v: (0, b, None) for v, b in splits.items()})
