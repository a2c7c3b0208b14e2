"""Lower a bound op to a loop nest with isl's AST generator.

Each statement ``k`` becomes an isl statement ``S{k}`` over its domain, and
the tensor it writes gets an initialisation statement ``F{k}`` over the
tensor's box when needed (reductions, and ``=`` statements that do not cover
every element). The schedule maps every instance to a time vector
``[2k (+1 for S), loop dims...]``, so statements run in source order and each
statement's loops follow the order chosen for it. isl turns that into loops
with exact bounds and strides (scatter, ``//`` and ``%`` included).
"""

from __future__ import annotations

import islpy as isl

from ..domain import Bound, BoundStatement, TensorInfo
from ..domain.bind import write_map
from ..strides import ITEMSIZE, contiguous
from . import fusion
from .dims import loop_dims
from .fusion import Piece
from .loopnest import Compute, Fill, For, IConst, IExpr, If, IOp, IVar, LoopNest, Node

IDENTITY = {"sum": 0, "prod": 1, None: 0}


def identity(reduce: str | None, dtype: str) -> float | int | bool:
    """The value a written tensor starts from."""
    import numpy as np
    if reduce == "max":
        return -np.inf if dtype.startswith("float") else (False if dtype == "bool" else int(np.iinfo(dtype).min))
    if reduce == "min":
        return np.inf if dtype.startswith("float") else (True if dtype == "bool" else int(np.iinfo(dtype).max))
    value = IDENTITY[reduce]
    return float(value) if dtype.startswith("float") else (bool(value) if dtype == "bool" else value)


def is_conflicting_scatter(bs: BoundStatement) -> bool:
    """A reduction whose written indices are not plain indices and where several points write one element.

    Such a statement (``dI[2*y + ky] += ...``, a transposed convolution) can be
    scheduled in gather form: isl's change of basis puts loops over the written
    element's coordinates outermost and enumerates the points writing each
    element inside (with exact strides), so distinct outer iterations write
    distinct elements and the outer loops can run in parallel without atomics.
    ``lower`` uses it where parallelism needs it (see there); elsewhere, and for
    scatters whose write map is injective (``O[i // 2, i % 2] = A[i]``), the
    cheaper, contiguous scatter order is kept.
    """
    st = bs.stmt
    if st.reduce is None or all(lin.plain_var is not None for lin in st.index):
        return False
    return not write_map(bs.names, st.index, bs.domain).is_injective()


def gather_form(bs: BoundStatement, target: str) -> bool:
    """Whether the statement runs in gather form (loops over the written element's coordinates
    outermost): on the CPU only when it is a conflicting scatter and no plain written index can carry
    the parallel loop (a batch index n already gives disjoint writes, and the scatter order is the
    cheaper, contiguous one); on the GPU for every conflicting scatter, so every written coordinate
    maps to threads."""
    return is_conflicting_scatter(bs) and (target == "cuda" or all(lin.plain_var is None for lin in bs.stmt.index))


def needs_fill(bs: BoundStatement, info: TensorInfo) -> bool:
    """Whether the written tensor must be initialised before the statement runs."""
    if bs.stmt.reduce is not None:
        return True
    write = write_map(bs.names, bs.stmt.index, bs.domain)
    box = _box(info.shape)
    return not write.range().is_equal(box)


def _box(shape: tuple[int, ...]) -> isl.Set:
    names = ", ".join(f"e{k}" for k in range(len(shape)))
    cons = " and ".join(f"0 <= e{k} < {n}" for k, n in enumerate(shape))
    return isl.Set(f"{{ [{names}] : {cons} }}" if cons else f"{{ [{names}] }}")


def _peeled(domain: isl.Set, dims: list) -> list[isl.Set]:
    """``domain`` cut at each split whose factor does not divide its loop: the full iterations of the
    outer loop, then the last, partial one (for two such splits, four pieces). Each piece runs as a
    nest of its own after the one before, so every inner loop of a tile has constant bounds (the
    tail's are the remainder) and the tile is generated for both: peeled tails. Pieces of one
    statement write the same elements only when the split loop is a reduction's, and a reduction
    is taken as associative, so running them in turn is legal."""
    cuts = [d for d in dims if d.full]
    if not cuts:
        return [domain]
    names = ", ".join(f"d{j}" for j in range(domain.dim(isl.dim_type.set)))
    pieces = [domain.set_tuple_name("P")]
    for d in cuts:
        full = isl.Set(f"{{ P[{names}] : {d.expr} < {d.full} }}")
        tail = isl.Set(f"{{ P[{names}] : {d.expr} >= {d.full} }}")
        pieces = [p.intersect(c) for p in pieces for c in (full, tail)]
    return [p for p in pieces if not p.is_empty()]


def lower(bound: Bound, schedule: tuple = (), strides: dict[str, tuple[int, ...]] | None = None,
          target: str = "cpu", fuse: bool = True) -> LoopNest:
    """The loop nest of ``bound`` under ``schedule`` (records; the default heuristic fills in the rest).

    ``strides`` gives each tensor's byte strides (its layout); C order when omitted. On the CPU,
    consecutive statements that share outer loops run inside one nest of them (``fusion``) unless
    ``fuse`` is False.
    """
    itemsize = {t: ITEMSIZE[info.dtype] for t, info in bound.tensors.items()}
    if strides is None:
        strides = {t: contiguous(info.logical_shape, itemsize[t]) for t, info in bound.tensors.items()}
    pieces: list[Piece] = []
    parallel_safe: dict[str, set[str]] = {}  # loops whose iterations write disjoint elements
    fills: dict[str, tuple[str, tuple, object]] = {}
    records = list(schedule)
    for k, bs in enumerate(bound.statements):
        info = bound.tensors[bs.stmt.target]
        if needs_fill(bs, info):
            name = f"F{k}"
            plain = [lin.plain_var for lin in bs.stmt.index]
            loop_names = [p if p and plain.count(p) == 1 else f"a{j}" for j, p in enumerate(plain)]
            pieces.append(Piece(name, _box(info.shape).set_tuple_name(name), k, None, loop_names))
            fills[name] = (bs.stmt.target, identity(bs.stmt.reduce, bs.dtype))
            parallel_safe[name] = set(loop_names)
        name = f"S{k}"
        gather = gather_form(bs, target)
        dims, safe = loop_dims(k, bs, records, strides, itemsize, gather, target)
        for j, dom in enumerate(_peeled(bs.domain, dims) if target == "cpu" else [bs.domain]):
            piece = name if j == 0 else f"{name}t{j}"
            pieces.append(Piece(piece, dom.set_tuple_name(piece), k, dims, [d.name for d in dims]))
            parallel_safe[piece] = safe
    width = fusion.schedule(pieces, bound, fuse=target == "cpu" and fuse) + 1
    for p in pieces:  # the loops a group shares write disjoint slices of everything it writes
        parallel_safe[p.name] = parallel_safe[p.name] | set(p.fused)

    domain = None
    schedule = None
    names_of: dict[str, list[str]] = {}
    for p in pieces:
        in_dims = ", ".join(f"{'e' if p.fill else 'd'}{j}" for j in range(p.domain.dim(isl.dim_type.set)))
        out = p.time + ["0"] * (width - len(p.time))
        m = isl.UnionMap(f"{{ {p.name}[{in_dims}] -> [{', '.join(out)}] }}")
        us = isl.UnionSet.from_set(p.domain)
        domain = us if domain is None else domain.union(us)
        schedule = m if schedule is None else schedule.union(m)
        names_of[p.name] = p.names
    schedule = schedule.intersect_domain(domain)
    build = isl.AstBuild.from_context(isl.Set("{ : }"))
    ast = build.node_from_schedule_map(schedule)
    conv = _Converter(bound, names_of, fills)
    body = tuple(_mark_parallel(node, conv, parallel_safe) for node in conv.nodes(ast, {}))
    return LoopNest(body, tuple(bs.stmt for bs in bound.statements))


def _mark_parallel(node: Node, conv: "_Converter", safe: dict[str, set[str]]) -> Node:
    """Tag a top-level loop ``parallel`` when its iterations write disjoint elements of its target."""
    if not isinstance(node, For) or not isinstance(node.lo, IConst) or not isinstance(node.hi, IConst):
        return node
    owners = set()
    for leaf in LoopNest((node,), ()).walk():
        if isinstance(leaf, Compute):
            owners.add(f"S{leaf.stmt}")
        elif isinstance(leaf, Fill):
            owners.add(next(k for k, v in conv.fills.items() if v[0] == leaf.tensor))
    if not owners:
        return node
    ok = set.intersection(*(safe.get(o, set()) for o in owners))

    def tag(n: Node) -> Node:
        """Tag this loop and the perfectly nested, constant-bound disjoint-write loops inside it."""
        if not (isinstance(n, For) and n.var in ok and isinstance(n.lo, IConst) and isinstance(n.hi, IConst)):
            return n
        body = (tag(n.body[0]),) if len(n.body) == 1 else n.body
        return For(n.var, n.lo, n.hi, n.step, body, "parallel")
    return tag(node)


class _Converter:
    """isl AST -> loop-nest IR, naming loops after the statement indices they run over."""

    def __init__(self, bound: Bound, names_of: dict[str, list[str]], fills: dict) -> None:
        self.bound = bound
        self.names_of = names_of
        self.fills = fills

    def nodes(self, node: isl.AstNode, rename: dict[str, str]) -> tuple[Node, ...]:
        t = node.get_type()
        if t == isl.ast_node_type.block:  # (nested blocks flattened without recursion: a long
            out: list[Node] = []             # sequence of statements nests one block per statement)
            stack = [node]
            while stack:
                top = stack.pop()
                if top.get_type() != isl.ast_node_type.block:
                    out.extend(self.nodes(top, rename))
                    continue
                children = top.block_get_children()
                stack.extend(reversed(children.get_list() if hasattr(children, "get_list") else _ast_list(children)))
            return tuple(out)
        if t == isl.ast_node_type.for_:
            it = node.for_get_iterator().get_id().get_name()
            rename = dict(rename)
            depth = int(it[1:]) if it.startswith("c") and it[1:].isdigit() else None
            name = self._loop_name(node, depth) if depth is not None and depth >= 1 else None
            if name:
                rename[it] = name
            var = rename.get(it, it)
            lo = self.expr(node.for_get_init(), rename)
            cond = node.for_get_cond()
            op = cond.op_get_type()
            arg0 = self.expr(cond.op_get_arg(0), rename)
            bound_e = self.expr(cond.op_get_arg(1), rename)
            if arg0 != IVar(var) or op not in (isl.ast_expr_op_type.le, isl.ast_expr_op_type.lt):
                raise AssertionError(f"unexpected isl loop condition {cond.to_C_str()}")
            hi = IOp("add", (bound_e, IConst(1))) if op == isl.ast_expr_op_type.le else bound_e
            if isinstance(bound_e, IConst) and op == isl.ast_expr_op_type.le:
                hi = IConst(bound_e.value + 1)
            step = node.for_get_inc().get_val().to_python()
            return (For(var, lo, hi, step, self.nodes(node.for_get_body(), rename)),)
        if t == isl.ast_node_type.if_:
            cond = self.expr(node.if_get_cond(), rename)
            then = self.nodes(node.if_get_then_node(), rename)
            orelse = self.nodes(node.if_get_else_node(), rename) if node.if_has_else_node() else ()
            return (If(cond, then, orelse),)
        if t == isl.ast_node_type.user:
            call = node.user_get_expr()
            name = call.op_get_arg(0).get_id().get_name()
            args = tuple(self.expr(call.op_get_arg(j + 1), rename) for j in range(call.op_get_n_arg() - 1))
            if name.startswith("F"):
                tensor, value = self.fills[name]
                return (Fill(tensor, args, value),)
            k = int(name[1:].split("t")[0])  # S3, or S3t1: a peeled tail of statement 3
            names = self.bound.statements[k].names
            return (Compute(k, tuple(zip(names, args))),)
        if t == isl.ast_node_type.mark:
            return self.nodes(node.mark_get_node(), rename)
        raise AssertionError(f"unexpected isl AST node {t}")

    def _loop_name(self, node: isl.AstNode, depth: int) -> str | None:
        """The name of the loop at schedule dimension ``depth`` that ``node`` runs: the one every isl
        statement under it gives that dimension (a fused group's pieces name their shared loops alike)."""
        found: set[str] = set()

        def visit(n: isl.AstNode) -> bool:
            if n.get_type() == isl.ast_node_type.user:
                names = self.names_of[n.user_get_expr().op_get_arg(0).get_id().get_name()]
                found.add(names[depth - 1] if depth <= len(names) else "")
            return True
        node.foreach_descendant_top_down(visit)
        return found.pop() if len(found) == 1 else None

    def expr(self, e: isl.AstExpr, rename: dict[str, str]) -> IExpr:
        t = e.get_type()
        if t == isl.ast_expr_type.id:
            name = e.get_id().get_name()
            return IVar(rename.get(name, name))
        if t == isl.ast_expr_type.int:
            return IConst(e.get_val().to_python())
        op = e.op_get_type()
        args = tuple(self.expr(e.op_get_arg(j), rename) for j in range(e.op_get_n_arg()))
        T = isl.ast_expr_op_type
        table = {T.add: "add", T.sub: "sub", T.mul: "mul", T.minus: "neg", T.div: "floordiv",
                 T.fdiv_q: "floordiv", T.pdiv_q: "floordiv", T.pdiv_r: "mod", T.zdiv_r: "rem",
                 T.min: "min", T.max: "max", T.cond: "select", T.select: "select", T.eq: "eq",
                 T.le: "le", T.lt: "lt", T.ge: "ge", T.gt: "gt", T.and_: "and", T.and_then: "and",
                 T.or_: "or", T.or_else: "or"}
        if op not in table:
            raise AssertionError(f"unexpected isl expression {e.to_C_str()}")
        name = table[op]
        if name in ("min", "max") and len(args) > 2:
            out = args[0]
            for a in args[1:]:
                out = IOp(name, (out, a))
            return out
        return IOp(name, args)


def _ast_list(lst: isl.AstNodeList) -> list[isl.AstNode]:
    return [lst.get_at(j) for j in range(lst.n_ast_node())]
