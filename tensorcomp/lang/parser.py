"""Parse index-expression source (Python syntax) into a :class:`Program`.

Python's own ``ast`` module does the tokenizing; this module checks that the
tree only uses the constructs of the language and builds the IR from it.
"""

from __future__ import annotations

import ast
import difflib
import sys
import textwrap
import warnings

from ..errors import ParseError, UnknownNameError, op_label
from dataclasses import replace

from .ir import (
    FUNCTIONS, REDUCTIONS, Access, Call, Const, Expr, Index, Lin, Param, Program, Statement, walk,
)
from .lookups import Unsupported, appearance, lower_lookups

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "truediv",
           ast.FloorDiv: "floordiv", ast.Mod: "mod", ast.Pow: "pow"}
_CMPOPS = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}
_ARG_REDUCTIONS = ("argmax", "argmin")
_KNOWN_CALLS = sorted(set(FUNCTIONS) | set(REDUCTIONS) | set(_ARG_REDUCTIONS))
_NO_MATCH = 2 ** 62  # the position an arg-reduction over no element would give (never: domains are not empty)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.label = op_label(source)
        self.lines = source.splitlines()

    # -- errors ----------------------------------------------------------------------
    def fail(self, node: ast.AST | None, message: str, hint: str = "", cls: type = ParseError) -> None:
        line = getattr(node, "lineno", None)
        where = ""
        if line is not None:
            text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
            where = f" on line {line} ('{text}')"
        full = f"{self.label}: {message}{where}"
        if hint:
            full += f"; {hint}"
        if cls is ParseError:
            raise ParseError(full, line)
        raise cls(full)

    def snippet(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.dump(node)

    # -- index expressions -----------------------------------------------------------
    def index_expr(self, node: ast.expr) -> Lin:
        if isinstance(node, ast.Name):
            return Lin.var(node.id)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Lin.of(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self.index_expr(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, (ast.Add, ast.Sub)):
                a, b = self.index_expr(node.left), self.index_expr(node.right)
                return a + b if isinstance(node.op, ast.Add) else a - b
            if isinstance(node.op, ast.Mult):
                a, b = self.index_expr(node.left), self.index_expr(node.right)
                if a.is_const:
                    return b * a.const
                if b.is_const:
                    return a * b.const
                self.fail(node, f"index expression '{self.snippet(node)}' is not affine (a product of two indices)",
                          "index expressions may multiply indices by integer constants only")
            if isinstance(node.op, (ast.FloorDiv, ast.Mod)):
                a, b = self.index_expr(node.left), self.index_expr(node.right)
                if not b.is_const or b.const <= 0:
                    self.fail(node, f"index expression '{self.snippet(node)}' divides by "
                              f"'{self.snippet(node.right)}'", "// and % in an index need a positive integer constant")
                return a.floordiv(b.const) if isinstance(node.op, ast.FloorDiv) else a.mod(b.const)
        if isinstance(node, ast.Subscript):
            self.fail(node, f"index expression '{self.snippet(node)}' reads a tensor",
                      "indices must be affine expressions of index names (data-dependent indexing is not supported)")
        if isinstance(node, ast.Slice):
            self.fail(node, "slices are not supported in an index", "name every axis with an index, e.g. A[i, j]")
        if isinstance(node, ast.Constant):
            self.fail(node, f"index expression '{self.snippet(node)}' is not an integer")
        self.fail(node, f"index expression '{self.snippet(node)}' is not affine",
                  "use +, -, * by a constant, and // or % by a positive constant")
        raise AssertionError("unreachable")

    def subscript(self, node: ast.Subscript) -> tuple[str, tuple[Lin, ...]]:
        if not isinstance(node.value, ast.Name):
            self.fail(node, f"'{self.snippet(node.value)}' is not a tensor name")
        sl = node.slice
        items = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        return node.value.id, tuple(self.index_expr(item) for item in items)

    # -- value expressions -----------------------------------------------------------
    def value(self, node: ast.expr) -> Expr:
        if isinstance(node, ast.Constant):
            if type(node.value) is int and not -2 ** 63 <= node.value < 2 ** 63:
                self.fail(node, f"integer literal {node.value} does not fit in 64 bits",
                          "write it as a float (e.g. 1e20) if a float is meant")
            if type(node.value) in (int, float, bool):
                return Const(node.value)
            self.fail(node, f"literal {node.value!r} is not a number")
        if isinstance(node, ast.Subscript):
            name, index = self.subscript(node)
            return Access(name, index)
        if isinstance(node, ast.Name):
            return Param(node.id)  # resolved to an index, tensor or parameter later
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                self.fail(node, f"operator '{self.snippet(node)}' is not supported",
                          "use + - * / // % ** and comparisons")
            return Call(_BINOPS[type(node.op)], (self.value(node.left), self.value(node.right)))
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand)
            if isinstance(node.op, ast.USub):
                if isinstance(operand, Const) and not isinstance(operand.value, bool):
                    return Const(-operand.value)
                return Call("neg", (operand,))
            if isinstance(node.op, ast.UAdd):
                return operand
            if isinstance(node.op, ast.Not):
                return Call("not", (operand,))
            self.fail(node, f"operator '{self.snippet(node)}' is not supported")
        if isinstance(node, ast.Compare):
            left, parts = self.value(node.left), []
            for op, right_node in zip(node.ops, node.comparators):
                if type(op) not in _CMPOPS:
                    self.fail(node, f"comparison '{self.snippet(node)}' is not supported", "use < <= > >= == !=")
                right = self.value(right_node)
                parts.append(Call(_CMPOPS[type(op)], (left, right)))
                left = right
            out = parts[0]
            for part in parts[1:]:
                out = Call("and", (out, part))
            return out
        if isinstance(node, ast.BoolOp):
            fn = "and" if isinstance(node.op, ast.And) else "or"
            out = self.value(node.values[0])
            for v in node.values[1:]:
                out = Call(fn, (out, self.value(v)))
            return out
        if isinstance(node, ast.IfExp):
            return Call("where", (self.value(node.test), self.value(node.body), self.value(node.orelse)))
        if isinstance(node, ast.Call):
            return self.call(node)
        self.fail(node, f"'{self.snippet(node)}' is not supported in an index expression")
        raise AssertionError("unreachable")

    def call(self, node: ast.Call) -> Expr:
        if not isinstance(node.func, ast.Name):
            self.fail(node, f"'{self.snippet(node.func)}' is not a function name")
        name = node.func.id
        if node.keywords:
            self.fail(node, f"function '{name}' takes no keyword arguments")
        if name == "float" and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            try:
                return Const(float(node.args[0].value))
            except ValueError:
                self.fail(node, f"'{self.snippet(node)}' is not a number")
        if name in _ARG_REDUCTIONS:
            self.fail(node, f"{name}(...) must be the whole right-hand side of an '=' statement",
                      f"write it as a statement of its own, e.g. I[n] = {name}(X[n, c])")
        if name not in FUNCTIONS and name not in REDUCTIONS:
            close = difflib.get_close_matches(name, _KNOWN_CALLS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.fail(node, f"unknown function '{name}'", f"{hint}known functions: {', '.join(_KNOWN_CALLS)}",
                      cls=UnknownNameError)
        args = [self.value(a) for a in node.args]
        if name in ("max", "min"):
            if len(args) == 1:
                self.fail(node, f"reduction {name}(...) must be the whole right-hand side",
                          "write it as a statement of its own, e.g. M[i] = max(A[i, j])")
            if len(args) < 2:
                self.fail(node, f"{name}() needs at least one argument")
            out = args[0]
            for a in args[1:]:
                out = Call(name, (out, a))
            return out
        if name in REDUCTIONS:
            self.fail(node, f"reduction {name}(...) must be the whole right-hand side",
                      f"write it as a statement of its own, e.g. S[i] = {name}(A[i, j])")
        if len(args) != FUNCTIONS[name]:
            self.fail(node, f"function '{name}' takes {FUNCTIONS[name]} argument"
                      f"{'s' if FUNCTIONS[name] != 1 else ''} but {len(args)} were given")
        return Call(name, tuple(args))

    # -- statements ------------------------------------------------------------------
    def statement(self, node: ast.stmt) -> Statement:
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1:
                self.fail(node, "chained assignment is not supported", "write one statement per line")
            target_node, rhs, reduce = node.targets[0], node.value, None
            if isinstance(rhs, ast.Call) and isinstance(rhs.func, ast.Name) and rhs.func.id in REDUCTIONS \
                    and len(rhs.args) == 1 and not rhs.keywords:
                reduce, rhs = rhs.func.id, rhs.args[0]
        elif isinstance(node, ast.AugAssign):
            ops = {ast.Add: "sum", ast.Mult: "prod"}
            if type(node.op) not in ops:
                self.fail(node, "only '=', '+=' and '*=' statements are supported",
                          "reductions are written max(e), min(e), sum(e), prod(e)")
            target_node, rhs, reduce = node.target, node.value, ops[type(node.op)]
            if isinstance(rhs, ast.Call) and isinstance(rhs.func, ast.Name) and rhs.func.id in REDUCTIONS \
                    and len(rhs.args) == 1:
                if rhs.func.id != reduce:
                    self.fail(node, f"'{'+=' if reduce == 'sum' else '*='}' cannot be combined with "
                              f"{rhs.func.id}(...)", f"write O[...] = {rhs.func.id}(...)")
                rhs = rhs.args[0]
        elif isinstance(node, ast.Expr):
            self.fail(node, "a statement must write a tensor", "write e.g. O[i] = A[i]")
            raise AssertionError("unreachable")
        else:
            self.fail(node, f"'{type(node).__name__}' statements are not part of the language",
                      "each line is X[...] = e or X[...] += e")
            raise AssertionError("unreachable")
        target, index = self.written(node, target_node)
        return Statement(target, index, reduce, self.value(rhs), node.lineno)

    def written(self, node: ast.stmt, target_node: ast.expr) -> tuple[str, tuple[Lin, ...]]:
        """The tensor a statement writes and its index (``X[...]``, or ``X`` for rank 0)."""
        if isinstance(target_node, ast.Subscript):
            return self.subscript(target_node)
        if isinstance(target_node, ast.Name):
            return target_node.id, ()
        self.fail(node, f"cannot write to '{self.snippet(target_node)}'", "the left side must be X[...] or X")
        raise AssertionError("unreachable")

    # -- whole program ---------------------------------------------------------------
    def program(self) -> Program:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Python's own warnings about odd literals; we report errors
                tree = ast.parse(self.source, mode="exec")
        except SyntaxError as exc:
            line = exc.lineno or 1
            text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
            raise ParseError(f"{self.label}: syntax error on line {line} ('{text}'): {exc.msg}", line) from None
        if not tree.body:
            raise ParseError(f"{self.label}: the source has no statements; write e.g. 'O[i] = A[i]'", None)
        body, lookups = tree.body, ()
        if any(isinstance(n, ast.Subscript) and any(isinstance(m, ast.Subscript) for m in ast.walk(n.slice))
               for n in ast.walk(tree)):
            order = appearance(body)
            try:
                body, lookups = lower_lookups(body)
            except Unsupported as exc:
                self.fail(exc.node, exc.message, exc.hint)
        raw: list[Statement] = []
        for node in body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                    isinstance(node.value.func, ast.Name) and node.value.func.id in _ARG_REDUCTIONS:
                raw.extend(self.arg_reduction(node))
            else:
                raw.append(self.statement(node))
        program = self.resolve(raw)
        if not lookups:
            return program
        for lk in lookups:
            if lk.index not in program.inputs:
                raise ParseError(f"{self.label}: index tensor {lk.index} is written by the op; an index tensor must "
                                 f"be an input (its values are checked before the op runs)", None)
            if not lk.written and lk.tensor not in program.inputs:
                raise ParseError(f"{self.label}: {lk.tensor} is looked up through index tensor {lk.index} but is "
                                 f"written by the op; a looked-up tensor must be an input", None)
        inputs = tuple(sorted(program.inputs, key=order.index))
        return replace(program, inputs=inputs, lookups=lookups)

    def arg_reduction(self, node: ast.Assign) -> list[Statement]:
        """``I[n] = argmax(e)``: the position of the largest e over the indices only on the right (int64;
        ties and NaN as numpy: the first; several indices: the flat position in C order), written as
        statements of the language — the max, the extents of the later indices, then the least position
        where e equals the max (or is NaN, which the max propagates)."""
        call = node.value
        fn = call.func.id
        if len(node.targets) != 1 or len(call.args) != 1 or call.keywords:
            self.fail(node, f"{fn} takes one argument and writes one tensor", f"e.g. I[n] = {fn}(X[n, c])")
        target_node = node.targets[0]
        target, index = self.written(node, target_node)
        expr = self.value(call.args[0])
        written = {n for lin in index for n in lin.names()}
        over = list(dict.fromkeys(n for a in walk(expr) if isinstance(a, Access) for lin in a.index
                                  for n in lin.names() if n not in written))
        if not over:
            self.fail(node, f"{fn}(...) on line {node.lineno} reduces over no index",
                      f"the indices it runs over appear only on the right, e.g. I[n] = {fn}(X[n, c])")
        line = node.lineno
        best = f"{target}__{fn}_value"
        statements = [Statement(best, index, "max" if fn == "argmax" else "min", expr, line)]
        position: Expr = Param(over[0])
        for k, name in enumerate(over[1:], start=1):
            extent = f"{target}__{fn}_extent{k}"
            one_more = Call("add", (Param(name), Const(1)))
            statements.append(Statement(extent, (), "max", Call("where", (Call("ne", (expr, expr)), one_more,
                                                                          one_more)), line))
            position = Call("add", (Call("mul", (position, Param(extent))), Param(name)))
        hit = Call("or", (Call("eq", (expr, Access(best, index))), Call("ne", (expr, expr))))
        statements.append(Statement(target, index, "min", Call("where", (hit, position, Const(_NO_MATCH))), line))
        return statements

    def resolve(self, raw: list[Statement]) -> Program:
        """Decide what every bare name means and which tensors are inputs/outputs."""
        ranks: dict[str, tuple[int, int]] = {}  # tensor -> (rank, first line)
        written: dict[str, int] = {}
        read_order: list[str] = []
        index_line: dict[str, int] = {}
        param_line: dict[str, int] = {}
        functions = set(FUNCTIONS) | set(REDUCTIONS)

        def note_rank(tensor: str, rank: int, line: int) -> None:
            if tensor in ranks and ranks[tensor][0] != rank:
                r0, l0 = ranks[tensor]
                raise ParseError(f"{self.label}: tensor {tensor} is indexed with {r0} indices on line {l0} "
                                 f"but {rank} on line {line}", line)
            ranks.setdefault(tensor, (rank, line))

        statements = []
        for st in raw:
            indices = set(st.write_names())
            for node in walk(st.expr):
                if isinstance(node, Access):
                    for lin in node.index:
                        indices.update(lin.names())
            tensors = {st.target} | {a.tensor for a in walk(st.expr) if isinstance(a, Access)}
            for name in sorted(indices & tensors):
                raise ParseError(f"{self.label}: '{name}' is used both as a tensor and as an index "
                                 f"on line {st.line}", st.line)
            for name in sorted(indices & functions):
                raise ParseError(f"{self.label}: index name '{name}' on line {st.line} is a function name; "
                                 "rename the index", st.line)

            def resolve(expr: Expr) -> Expr:
                if isinstance(expr, Param):
                    name = expr.name
                    if name in indices:
                        index_line.setdefault(name, st.line)
                        return Index(Lin.var(name))
                    if name in written:
                        note_rank(name, 0, st.line)
                        return Access(name, ())
                    if name in ranks:
                        raise ParseError(f"{self.label}: tensor {name} is used without indices on line "
                                         f"{st.line}; it has rank {ranks[name][0]}", st.line)
                    if name in functions:
                        raise ParseError(f"{self.label}: function '{name}' is used without being called "
                                         f"on line {st.line}", st.line)
                    param_line.setdefault(name, st.line)
                    return expr
                if isinstance(expr, Call):
                    return Call(expr.fn, tuple(resolve(a) for a in expr.args))
                if isinstance(expr, Index):
                    return expr
                return expr

            expr = resolve(st.expr)
            for node in walk(expr):
                if isinstance(node, Access):
                    if node.tensor == st.target:
                        raise ParseError(f"{self.label}: tensor {st.target} is both read and written on line "
                                         f"{st.line}; recurrences are not supported, write the result to a new "
                                         "tensor", st.line)
                    if node.tensor in param_line:
                        raise ParseError(f"{self.label}: '{node.tensor}' is used as a scalar parameter on line "
                                         f"{param_line[node.tensor]} and as a tensor on line {st.line}", st.line)
                    note_rank(node.tensor, len(node.index), st.line)
                    if node.tensor not in written and node.tensor not in read_order:
                        read_order.append(node.tensor)
            for name in st.index_names():
                index_line.setdefault(name, st.line)
            if st.target in written:
                raise ParseError(f"{self.label}: tensor {st.target} is written on line {written[st.target]} and "
                                 f"again on line {st.line}; each tensor is written by one statement", st.line)
            if st.target in read_order:
                raise ParseError(f"{self.label}: tensor {st.target} is read before it is written (line "
                                 f"{st.line}); an input cannot be overwritten, write to a new tensor", st.line)
            if st.target in param_line:
                raise ParseError(f"{self.label}: '{st.target}' is used as a scalar parameter on line "
                                 f"{param_line[st.target]} and written on line {st.line}", st.line)
            note_rank(st.target, len(st.index), st.line)
            if st.reduce is None:
                only_right = [n for n in st.reduction_names()]
                if only_right:
                    raise ParseError(
                        f"{self.label}: index '{only_right[0]}' appears only on the right side of '=' on line "
                        f"{st.line}; write '+=' or a reduction such as sum(...) or max(...) to reduce over it",
                        st.line)
            written[st.target] = st.line
            statements.append(Statement(st.target, st.index, st.reduce, expr, st.line))

        for name, line in param_line.items():
            if name in index_line:
                raise ParseError(f"{self.label}: '{name}' is an index on line {index_line[name]} and a scalar "
                                 f"parameter on line {line}; rename one of them", line)
        read_later = set()
        for st in statements:
            read_later.update(a.tensor for a in st.accesses())
        outputs = tuple(t for t in written if t not in read_later)
        temporaries = tuple(t for t in written if t in read_later)
        return Program(
            statements=tuple(statements),
            inputs=tuple(read_order),
            outputs=outputs,
            temporaries=temporaries,
            params=tuple(param_line),
            ranks=tuple((t, r) for t, (r, _) in ranks.items()),
        )


MAX_NAME = 200  # characters in a tensor, index or parameter name


def parse(source: str) -> Program:
    """Parse op source text into a :class:`Program` (raises ParseError on bad input)."""
    if not isinstance(source, str):
        raise ParseError(f"op source must be a string, got {type(source).__name__}")
    text = textwrap.dedent(source).strip("\n")
    try:
        program = _Parser(text).program()
    except (RecursionError, MemoryError):
        raise ParseError(f"{op_label(text)}: the source nests too deeply to compile (Python's recursion limit, "
                         f"{sys.getrecursionlimit()}); split the expression into statements with temporaries",
                         None) from None
    for st in program.statements:
        for name in (st.target, *st.index_names(), *(a.tensor for a in st.accesses())):
            if len(name) > MAX_NAME:
                raise ParseError(f"{op_label(text)}: name '{name[:20]}...' on line {st.line} is {len(name)} characters "
                                 f"long; names are at most {MAX_NAME}", st.line)
    for name in program.params:
        if len(name) > MAX_NAME:
            raise ParseError(f"{op_label(text)}: scalar parameter '{name[:20]}...' is {len(name)} characters long; "
                             f"names are at most {MAX_NAME}", None)
    return program
