"""The loop-nest IR: what a schedule produces and what code generators consume.

Small frozen nodes: integer expressions over loop variables (``IVar``,
``IConst``, ``IOp``), loops (``For``, whose ``kind`` is "serial" or "parallel":
iterations that write disjoint elements, run on the cores / GPU threads),
guards (``If``), the two leaf operations: ``Fill`` (initialise an element to
the reduction's identity) and ``Compute`` (one instance of a statement, its
indices given as expressions of the loop variables), and ``Tile``: a chain of
reduction loops around a register tile, with the way codegen keeps it in
registers decided (``schedule.tiles``), so code generators only print it.
Statement bodies stay in the op IR and are substituted at codegen, so
layouts, tiling and GPU mapping only ever rewrite the nest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

from ..lang.ir import Lin, Statement


@dataclass(frozen=True, slots=True)
class IVar:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class IConst:
    value: int

    def __str__(self) -> str:
        return str(self.value)


# ops: add sub mul neg floordiv (floor) mod (floor) rem (truncating) min max select eq ne lt le gt ge and or
@dataclass(frozen=True, slots=True)
class IOp:
    op: str
    args: tuple["IExpr", ...]

    def __str__(self) -> str:
        sym = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%", "rem": "rem", "eq": "==",
               "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "and": "and", "or": "or"}
        a = self.args
        if self.op == "neg":
            return f"-{_p(a[0])}"
        if self.op in sym and len(a) == 2:
            return f"{_p(a[0])} {sym[self.op]} {_p(a[1])}"
        if self.op == "select":
            return f"({a[1]} if {a[0]} else {a[2]})"
        return f"{self.op}({', '.join(str(x) for x in a)})"


IExpr = Union[IVar, IConst, IOp]


def _p(e: IExpr) -> str:
    return f"({e})" if isinstance(e, IOp) and e.op not in ("min", "max", "neg") else str(e)


@dataclass(frozen=True, slots=True)
class For:
    """``for var in range(lo, hi, step)``; ``kind`` is "serial" or "parallel"."""

    var: str
    lo: IExpr
    hi: IExpr
    step: int
    body: tuple["Node", ...]
    kind: str = "serial"


@dataclass(frozen=True, slots=True)
class If:
    cond: IExpr
    then: tuple["Node", ...]
    orelse: tuple["Node", ...] = ()


@dataclass(frozen=True, slots=True)
class Fill:
    """``tensor[index] = value`` (the reduction identity, before a statement accumulates)."""

    tensor: str
    index: tuple[IExpr, ...]
    value: float | int | bool


@dataclass(frozen=True, slots=True)
class Compute:
    """One instance of statement ``stmt``; ``env`` gives each of its indices."""

    stmt: int
    env: tuple[tuple[str, IExpr], ...]


@dataclass(frozen=True, slots=True)
class Tile:
    """Reduction loops around tile loops around one reduction ``Compute``: the written element depends
    on the tile loops (constant bounds, unit step) and not on the reductions, so its ``size`` elements
    stay in registers across the whole reduction (loaded once, stored once). ``kind`` says how:

    * "vector": the innermost tile loop in SIMD vectors of ``lanes`` elements (accumulators in vector
      registers; contiguous operands loaded as vectors, the others broadcast), the rest unrolled;
    * "vector_sum": a tile whose innermost reduction loop runs in vectors of ``lanes`` partial sums
      per element (the tile loops unrolled inside it), added up once at the end;
    * "scalar": the tile unrolled over a stack array that LLVM keeps in registers;
    * "register": (CUDA) a thread's register array, the tile loops unrolled;
    * "mma": (CUDA, precision "tf32") a warp's tensor-core fragments (``schedule.tensor_cores``).

    ``offset`` is the written element's byte offset as a function of the loop variables."""

    kind: str
    reduction: tuple["For", ...]  # outermost first; reduction[0] is the whole chain
    tile: tuple["For", ...]
    compute: Compute
    offset: Lin
    size: int
    lanes: int = 0


Node = Union[For, If, Fill, Compute, Tile]


@dataclass(frozen=True)
class LoopNest:
    """A kernel's loop nest plus the statements its ``Compute`` leaves refer to."""

    body: tuple[Node, ...]
    statements: tuple[Statement, ...]

    def walk(self) -> Iterator[Node]:
        def rec(nodes: tuple[Node, ...]) -> Iterator[Node]:
            for n in nodes:
                yield n
                if isinstance(n, For):
                    yield from rec(n.body)
                elif isinstance(n, If):
                    yield from rec(n.then)
                    yield from rec(n.orelse)
                elif isinstance(n, Tile):
                    yield from rec((n.reduction[0],))
        return rec(self.body)

    def tensors_of(self, node: Node) -> set[str]:
        """The tensors loop nest ``node`` reads or writes."""
        out: set[str] = set()
        for n in LoopNest((node,), self.statements).walk():
            if isinstance(n, Fill):
                out.add(n.tensor)
            elif isinstance(n, (Compute, Tile)):
                st = self.statements[(n.compute if isinstance(n, Tile) else n).stmt]
                out.add(st.target)
                out.update(a.tensor for a in st.accesses())
        return out

    def __str__(self) -> str:
        lines: list[str] = []

        def emit(nodes: tuple[Node, ...], depth: int) -> None:
            pad = "  " * depth
            for n in nodes:
                if isinstance(n, Tile):
                    lanes = f", vectors of {n.lanes} lanes" if n.lanes else ""
                    lines.append(f"{pad}# {n.kind} tile: {n.size} element{'s' if n.size != 1 else ''} of "
                                 f"{self.statements[n.compute.stmt].target} in registers{lanes}")
                    emit((n.reduction[0],), depth)
                elif isinstance(n, For):
                    step = f", {n.step}" if n.step != 1 else ""
                    tag = f"  # {n.kind}" if n.kind != "serial" else ""
                    lines.append(f"{pad}for {n.var} in range({n.lo}, {n.hi}{step}):{tag}")
                    emit(n.body, depth + 1)
                elif isinstance(n, If):
                    lines.append(f"{pad}if {n.cond}:")
                    emit(n.then, depth + 1)
                    if n.orelse:
                        lines.append(f"{pad}else:")
                        emit(n.orelse, depth + 1)
                elif isinstance(n, Fill):
                    idx = f"[{', '.join(str(i) for i in n.index)}]" if n.index else ""
                    lines.append(f"{pad}{n.tensor}{idx} = {n.value}")
                else:
                    lines.append(pad + self.compute_text(n))
        emit(self.body, 0)
        return "\n".join(lines)

    def compute_text(self, node: Compute) -> str:
        """The statement with its indices replaced by the loop expressions."""
        st = substitute_statement(self.statements[node.stmt], dict(node.env))
        text = str(st)
        if st.reduce in ("max", "min", "prod"):
            target = text.split(" = ", 1)[0]
            body = text.split(" = ", 1)[1][len(st.reduce) + 1:-1]
            text = f"{target} = {st.reduce}({target}, {body})" if st.reduce != "prod" else f"{target} *= {body}"
        return text


def to_lin(e: IExpr) -> Lin | None:
    """An affine loop expression as a Lin (None if it is not affine)."""
    if isinstance(e, IVar):
        return Lin.var(e.name)
    if isinstance(e, IConst):
        return Lin.of(e.value)
    args = [to_lin(a) for a in e.args]
    if any(a is None for a in args):
        return None
    if e.op == "add":
        return args[0] + args[1]
    if e.op == "sub":
        return args[0] - args[1]
    if e.op == "neg":
        return -args[0]
    if e.op == "mul":
        if args[0].is_const:
            return args[1] * args[0].const
        if args[1].is_const:
            return args[0] * args[1].const
    if e.op in ("floordiv", "mod") and args[1].is_const and args[1].const > 0:
        return args[0].floordiv(args[1].const) if e.op == "floordiv" else args[0].mod(args[1].const)
    return None


def substitute_statement(st: Statement, env: dict[str, IExpr]) -> Statement:
    """The statement with its indices replaced (for printing loop nests)."""
    mapping = {}
    for name, e in env.items():
        lin = to_lin(e)
        if lin is None:
            return st
        mapping[name] = lin
    return st.rename_indices(mapping)
