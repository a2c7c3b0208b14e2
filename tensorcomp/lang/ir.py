"""The op IR: quasi-affine index expressions, value expressions, statements.

Everything here is small frozen data: the parser builds it, the domain pass
reads it, autodiff rewrites it by copying, and cache keys hash it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union


# ---------------------------------------------------------------- index expressions


@dataclass(frozen=True, slots=True)
class FloorDiv:
    """``num // den`` for a positive integer constant ``den``."""

    num: "Lin"
    den: int

    def __str__(self) -> str:
        return f"{self.num.paren()} // {self.den}"


@dataclass(frozen=True, slots=True)
class Mod:
    """``num % den`` (the non-negative remainder) for a positive constant ``den``."""

    num: "Lin"
    den: int

    def __str__(self) -> str:
        return f"{self.num.paren()} % {self.den}"


Atom = Union[str, FloorDiv, Mod]


def _atom_key(atom: Atom) -> tuple[int, str]:
    return (0, atom) if isinstance(atom, str) else (1, str(atom))


@dataclass(frozen=True, slots=True)
class Lin:
    """A quasi-affine integer expression ``sum(coef * atom) + const``.

    Atoms are index names or floor divisions / remainders of other ``Lin`` by
    positive constants. Terms are kept sorted with non-zero coefficients, so
    equal expressions compare and hash equal: ``Lin.var("y") * 2 + Lin.var("ky")``
    is the canonical form of ``2*y + ky``.
    """

    terms: tuple[tuple[Atom, int], ...] = ()
    const: int = 0

    @staticmethod
    def var(name: str) -> "Lin":
        return Lin(((name, 1),), 0)

    def magnitude(self, box: dict[str, int]) -> int:
        """An upper bound on |value| of this expression and of every partial sum the generated code
        forms, when each index name n has |n| <= box[n]."""
        total, inner = abs(self.const), 0
        for atom, coef in self.terms:
            if isinstance(atom, str):
                size = box.get(atom, 0)
            else:
                num = atom.num.magnitude(box)
                inner = max(inner, num)
                size = num // atom.den if isinstance(atom, FloorDiv) else min(num, atom.den)
            total += abs(coef) * size
        return max(total, inner)

    @staticmethod
    def of(value: int) -> "Lin":
        return Lin((), int(value))

    @staticmethod
    def _make(coefs: dict[Atom, int], const: int) -> "Lin":
        terms = tuple(sorted(((a, c) for a, c in coefs.items() if c != 0), key=lambda t: _atom_key(t[0])))
        return Lin(terms, const)

    def __add__(self, other: "Lin | int") -> "Lin":
        other = other if isinstance(other, Lin) else Lin.of(other)
        coefs = dict(self.terms)
        for atom, c in other.terms:
            coefs[atom] = coefs.get(atom, 0) + c
        return Lin._make(coefs, self.const + other.const)

    def __neg__(self) -> "Lin":
        return Lin(tuple((a, -c) for a, c in self.terms), -self.const)

    def __sub__(self, other: "Lin | int") -> "Lin":
        other = other if isinstance(other, Lin) else Lin.of(other)
        return self + (-other)

    def __mul__(self, k: int) -> "Lin":
        if k == 0:
            return Lin()
        return Lin(tuple((a, c * k) for a, c in self.terms), self.const * k)

    def floordiv(self, den: int) -> "Lin":
        """``self // den`` in a normal form, so that equal divisions compare equal and cancel (see
        ``expand_mod``): whole multiples of ``den`` come out of the coefficients (each left in
        ``(-den/2, den/2]``) and of the constant (left in ``[0, den)``), and a numerator with only
        negative coefficients is negated (``(-u + b) // d == -((u - b + d - 1) // d)``). isl writes
        the first index of a fused loop ``i`` over a 16 x 10 x 10 box as ``i - (99*i + 99) // 100``:
        that is ``i // 100``."""
        if den == 1:
            return self
        if self.is_const:
            return Lin.of(self.const // den)
        whole, rest = Lin(), []
        for atom, c in self.terms:
            q = (c + (den - 1) // 2) // den
            if q:
                whole = whole + Lin(((atom, q),), 0)
            if c - q * den:
                rest.append((atom, c - q * den))
        if not rest:
            return whole + Lin.of(self.const // den)
        if all(c < 0 for _, c in rest):
            return whole - Lin(tuple((a, -c) for a, c in rest), den - 1 - self.const).floordiv(den)
        return whole + Lin.of(self.const // den) + Lin(((FloorDiv(Lin(tuple(rest), self.const % den), den), 1),), 0)

    def mod(self, den: int) -> "Lin":
        """``self % den`` (Python's non-negative remainder for den > 0)."""
        if den == 1:
            return Lin()
        if self.is_const:
            return Lin.of(self.const % den)
        return Lin(((Mod(self, den), 1),), 0)

    @property
    def is_const(self) -> bool:
        return not self.terms

    @property
    def plain_var(self) -> str | None:
        """The index name if this expression is exactly one index, else None."""
        if self.const == 0 and len(self.terms) == 1:
            atom, coef = self.terms[0]
            if coef == 1 and isinstance(atom, str):
                return atom
        return None

    def names(self) -> Iterator[str]:
        """Every index name used, including inside divisions."""
        for atom, _ in self.terms:
            if isinstance(atom, str):
                yield atom
            else:
                yield from atom.num.names()

    def rename(self, mapping: dict[str, "Lin"]) -> "Lin":
        """Substitute index names by expressions."""
        out = Lin.of(self.const)
        for atom, c in self.terms:
            if isinstance(atom, str):
                out = out + mapping.get(atom, Lin.var(atom)) * c
            elif isinstance(atom, FloorDiv):
                out = out + atom.num.rename(mapping).floordiv(atom.den) * c
            else:
                out = out + atom.num.rename(mapping).mod(atom.den) * c
        return out

    def expand_mod(self) -> "Lin":
        """Rewrite ``c*(x % E)`` as ``c*x - c*E*(x // E)`` so matching floor divisions cancel:
        ``16*(f // 4) + 4*(f % 4)`` becomes ``4*f`` (a fused loop walking contiguous memory)."""
        out = Lin.of(self.const)
        for atom, c in self.terms:
            if isinstance(atom, Mod):
                out = out + atom.num * c - atom.num.floordiv(atom.den) * (c * atom.den)
            else:
                out = out + Lin(((atom, c),), 0)
        return out

    def evaluate(self, env: dict[str, int]) -> int:
        total = self.const
        for atom, c in self.terms:
            if isinstance(atom, str):
                total += c * env[atom]
            elif isinstance(atom, FloorDiv):
                total += c * (atom.num.evaluate(env) // atom.den)
            else:
                total += c * (atom.num.evaluate(env) % atom.den)
        return total

    def to_isl(self, name: "dict[str, str]") -> str:
        """isl syntax, with index names mapped through ``name``."""
        parts = []
        for atom, c in self.terms:
            if isinstance(atom, str):
                text = name[atom]
            elif isinstance(atom, FloorDiv):
                text = f"floor(({atom.num.to_isl(name)})/{atom.den})"
            else:
                text = f"(({atom.num.to_isl(name)}) mod {atom.den})"
            parts.append(f"{c}*{text}")
        parts.append(str(self.const))
        return " + ".join(parts)

    def paren(self) -> str:
        text = str(self)
        return text if (len(self.terms) + (self.const != 0)) <= 1 and not text.startswith("-") else f"({text})"

    def __str__(self) -> str:
        out = ""
        for atom, c in self.terms:
            text = atom if isinstance(atom, str) else str(atom)
            if not isinstance(atom, str) and (c != 1 or len(self.terms) > 1):
                text = f"({text})" if c not in (1, -1) else text
            mag = abs(c)
            body = text if mag == 1 else f"{mag}*{text}"
            if not out:
                out = body if c > 0 else f"-{body}"
            else:
                out += f" + {body}" if c > 0 else f" - {body}"
        if self.const or not out:
            if not out:
                out = str(self.const)
            else:
                out += f" + {self.const}" if self.const > 0 else f" - {-self.const}"
        return out


# ---------------------------------------------------------------- value expressions


class Expr:
    """Base of value expressions (a closed set of frozen node types)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Const(Expr):
    """A literal; ``value`` keeps its Python type (bool, int or float)."""

    value: bool | int | float


@dataclass(frozen=True, slots=True)
class Access(Expr):
    """A read of ``tensor`` at the given index expressions."""

    tensor: str
    index: tuple[Lin, ...]


@dataclass(frozen=True, slots=True)
class Index(Expr):
    """An index expression used as an integer value, e.g. ``i`` in ``A[i] * i``."""

    lin: Lin


@dataclass(frozen=True, slots=True)
class Param(Expr):
    """A scalar parameter passed by keyword at call time."""

    name: str


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """An operator or function application; ``fn`` names an entry of FUNCTIONS."""

    fn: str
    args: tuple[Expr, ...]


# fn -> (arity, printed form). Arity -1 means "two or more".
BINARY_SYMBOLS = {
    "add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%", "pow": "**",
    "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=", "and": "and", "or": "or",
}
UNARY_FUNCTIONS = ("exp", "log", "sqrt", "tanh", "sigmoid", "abs", "relu", "sin", "cos", "floor", "ceil",
                   "erf", "erfc", "expm1", "log1p", "sign", "rsqrt", "softplus")
FUNCTIONS: dict[str, int] = {
    **{name: 1 for name in UNARY_FUNCTIONS},
    "pow": 2, "where": 3, "max": 2, "min": 2, "atan2": 2,
}
REDUCTIONS = ("sum", "max", "min", "prod")
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
# Binding strength for printing with minimal parentheses (Python's own order).
_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "lt": 4, "le": 4, "gt": 4, "ge": 4, "eq": 4, "ne": 4,
               "add": 6, "sub": 6, "mul": 7, "truediv": 7, "floordiv": 7, "mod": 7, "neg": 8, "pow": 9}


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of ``expr``, parents before children."""
    yield expr
    if isinstance(expr, Call):
        for arg in expr.args:
            yield from walk(arg)


def expr_str(expr: Expr, outer: int = 0) -> str:
    """Print ``expr`` as index-expression source with minimal parentheses."""
    if isinstance(expr, Const):
        value = expr.value
        if isinstance(value, float):
            text = repr(value)
            if text in ("inf", "-inf", "nan"):
                return f"float('{text}')"
        else:
            text = str(value)
        return f"({text})" if text.startswith("-") and outer > 0 else text
    if isinstance(expr, Access):
        if not expr.index:
            return expr.tensor
        return f"{expr.tensor}[{', '.join(str(i) for i in expr.index)}]"
    if isinstance(expr, Index):
        text = str(expr.lin)
        return f"({text})" if outer > 5 and (len(expr.lin.terms) + (expr.lin.const != 0)) > 1 else text
    if isinstance(expr, Param):
        return expr.name
    assert isinstance(expr, Call)
    fn, args = expr.fn, expr.args
    if fn in BINARY_SYMBOLS and len(args) == 2:
        prec = _PRECEDENCE[fn]
        # left-associative except **; comparisons never chain when printed
        left_prec = prec + 1 if fn == "pow" or fn in COMPARISONS else prec
        right_prec = prec if fn == "pow" else prec + 1
        text = f"{expr_str(args[0], left_prec)} {BINARY_SYMBOLS[fn]} {expr_str(args[1], right_prec)}"
        return f"({text})" if prec < outer else text
    if fn == "neg":
        text = f"-{expr_str(args[0], _PRECEDENCE['neg'])}"
        return f"({text})" if _PRECEDENCE["neg"] < outer else text
    if fn == "not":
        text = f"not {expr_str(args[0], _PRECEDENCE['not'])}"
        return f"({text})" if _PRECEDENCE["not"] < outer else text
    return f"{fn}({', '.join(expr_str(a) for a in args)})"


# ---------------------------------------------------------------- statements and programs


@dataclass(frozen=True, slots=True)
class Statement:
    """``target[index] (=|+=|reduce=) expr`` on one source line.

    ``reduce`` is None for a plain ``=`` (every point written once), else one
    of ``sum``, ``max``, ``min``, ``prod``: the reduction over the indices that
    appear only on the right.
    """

    target: str
    index: tuple[Lin, ...]
    reduce: str | None
    expr: Expr
    line: int = 0

    def write_names(self) -> tuple[str, ...]:
        """Index names on the written side, in order of first appearance."""
        return tuple(dict.fromkeys(n for lin in self.index for n in lin.names()))

    def index_names(self) -> tuple[str, ...]:
        """All index names: the written side first, then the rest by appearance."""
        names = dict.fromkeys(self.write_names())
        for node in walk(self.expr):
            if isinstance(node, Access):
                for lin in node.index:
                    names.update(dict.fromkeys(lin.names()))
            elif isinstance(node, Index):
                names.update(dict.fromkeys(node.lin.names()))
        return tuple(names)

    def reduction_names(self) -> tuple[str, ...]:
        written = set(self.write_names())
        return tuple(n for n in self.index_names() if n not in written)

    def accesses(self) -> Iterator[Access]:
        for node in walk(self.expr):
            if isinstance(node, Access):
                yield node

    def rename_indices(self, mapping: dict[str, Lin]) -> "Statement":
        """The statement with index names replaced by expressions (on both sides)."""
        def sub(expr: Expr) -> Expr:
            if isinstance(expr, Access):
                return Access(expr.tensor, tuple(lin.rename(mapping) for lin in expr.index))
            if isinstance(expr, Index):
                return Index(expr.lin.rename(mapping))
            if isinstance(expr, Call):
                return Call(expr.fn, tuple(sub(a) for a in expr.args))
            return expr
        return Statement(self.target, tuple(lin.rename(mapping) for lin in self.index), self.reduce, sub(self.expr),
                         self.line)

    def __str__(self) -> str:
        target = f"{self.target}[{', '.join(str(i) for i in self.index)}]" if self.index else self.target
        body = expr_str(self.expr)
        if self.reduce is None:
            return f"{target} = {body}"
        if self.reduce == "sum":
            return f"{target} += {body}"
        return f"{target} = {self.reduce}({body})"


@dataclass(frozen=True, slots=True)
class Program:
    """A parsed op: its statements and the roles of the names they use."""

    statements: tuple[Statement, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    temporaries: tuple[str, ...]
    params: tuple[str, ...]
    ranks: tuple[tuple[str, int], ...] = field(default=())
    lookups: tuple = field(default=())  # lang.lookups.Lookup per index through an index tensor

    def rank(self, tensor: str) -> int:
        return dict(self.ranks)[tensor]

    def writer(self, tensor: str) -> Statement:
        for st in self.statements:
            if st.target == tensor:
                return st
        raise KeyError(tensor)

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.statements)
