"""Derivative rules, one per function of the language, and a small simplifier.

``derivative(e, a)`` is the partial derivative of expression ``e`` with
respect to one tensor element ``a`` (an Access: every occurrence of the same
tensor at the same index expressions is the same variable). ``None`` stands
for zero, so rules can drop dead terms; the constructors below fold the
trivial algebra (``x * 1 -> x``, ``x + 0 -> x``, ``--x -> x``) so derived
sources stay readable.
"""

from __future__ import annotations

from tensorcomp.lang.ir import Access, Call, Const, Expr

Z = None  # the zero expression
ONE = Const(1)


def is_const(e: Expr | None, value: float) -> bool:
    return isinstance(e, Const) and not isinstance(e.value, bool) and e.value == value


# ---------------------------------------------------------------- simplifying constructors


def add(a: Expr | None, b: Expr | None) -> Expr | None:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(a.value + b.value)
    if isinstance(b, Call) and b.fn == "neg":  # a + -b -> a - b
        return Call("sub", (a, b.args[0]))
    return Call("add", (a, b))


def neg(a: Expr | None) -> Expr | None:
    if a is None:
        return None
    if isinstance(a, Const):
        return Const(-a.value)
    if isinstance(a, Call) and a.fn == "neg":  # --x -> x
        return a.args[0]
    return Call("neg", (a,))


def sub(a: Expr | None, b: Expr | None) -> Expr | None:
    if b is None:
        return a
    if a is None:
        return neg(b)
    return Call("sub", (a, b))


def mul(a: Expr | None, b: Expr | None) -> Expr | None:
    if a is None or b is None:  # 0 * x -> 0
        return None
    if is_const(a, 0) or is_const(b, 0):
        return None
    if is_const(a, 1):  # 1 * x -> x
        return b
    if is_const(b, 1):
        return a
    if is_const(a, -1):
        return neg(b)
    if is_const(b, -1):
        return neg(a)
    if isinstance(a, Call) and a.fn == "neg":  # (-a) * b -> -(a * b)
        return neg(mul(a.args[0], b))
    if isinstance(b, Call) and b.fn == "neg":
        return neg(mul(a, b.args[0]))
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(a.value * b.value)
    if isinstance(b, Call) and b.fn == "truediv" and is_const(b.args[0], 1):  # a * (1 / b) -> a / b
        return Call("truediv", (a, b.args[1]))
    return Call("mul", (a, b))


def div(a: Expr | None, b: Expr) -> Expr | None:
    if a is None:
        return None
    if is_const(b, 1):
        return a
    return Call("truediv", (a, b))


def where(c: Expr, a: Expr | None, b: Expr | None) -> Expr | None:
    if a is None and b is None:
        return None
    return Call("where", (c, a if a is not None else Const(0), b if b is not None else Const(0)))


def square(a: Expr) -> Expr:
    return Call("pow", (a, Const(2)))


# ---------------------------------------------------------------- the rule table


class MissingRule(Exception):
    """No derivative rule for function ``fn`` (``grad`` reports it with the op's name)."""

    def __init__(self, fn: str) -> None:
        super().__init__(fn)
        self.fn = fn


def derivative(e: Expr, a: Access) -> Expr | None:
    """d e / d a (None when it is identically zero); MissingRule for a function without a rule."""
    if isinstance(e, Access):
        return ONE if e == a else None
    if not isinstance(e, Call):
        return None  # constants, index values, scalar parameters
    args = e.args
    ds = [derivative(x, a) for x in args]
    if all(d is None for d in ds):
        return None
    rule = RULES.get(e.fn)
    if rule is None:
        raise MissingRule(e.fn)
    return rule(e, args, ds)


def _pow(e, args, ds):
    x, y = args
    dx, dy = ds
    out = None
    if dx is not None:
        if isinstance(y, Const) and not isinstance(y.value, bool):
            if y.value == 2:
                base = mul(Const(2), x)
            elif y.value == 1:
                base = ONE
            else:
                base = mul(y, Call("pow", (x, Const(y.value - 1))))
        else:
            base = mul(y, Call("pow", (x, sub(y, ONE))))
        out = mul(base, dx)
    if dy is not None:
        out = add(out, mul(mul(Call("log", (x,)), e), dy))
    return out


RULES = {
    "add": lambda e, a, d: add(d[0], d[1]),
    "sub": lambda e, a, d: sub(d[0], d[1]),
    "mul": lambda e, a, d: add(mul(d[0], a[1]), mul(a[0], d[1])),
    "truediv": lambda e, a, d: sub(div(d[0], a[1]), div(mul(a[0], d[1]), square(a[1])) if d[1] else None),
    "neg": lambda e, a, d: neg(d[0]),
    "pow": _pow,
    "exp": lambda e, a, d: mul(e, d[0]),
    "log": lambda e, a, d: div(d[0], a[0]),
    "sqrt": lambda e, a, d: div(d[0], mul(Const(2), e)),
    "tanh": lambda e, a, d: mul(sub(ONE, square(e)), d[0]),
    "sigmoid": lambda e, a, d: mul(mul(e, sub(ONE, e)), d[0]),
    "sin": lambda e, a, d: mul(Call("cos", a), d[0]),
    "erf": lambda e, a, d: mul(mul(Const(1.1283791670955126), Call("exp", (neg(square(a[0])),))), d[0]),
    "erfc": lambda e, a, d: neg(mul(mul(Const(1.1283791670955126), Call("exp", (neg(square(a[0])),))), d[0])),
    "expm1": lambda e, a, d: mul(Call("exp", a), d[0]),
    "log1p": lambda e, a, d: div(d[0], add(ONE, a[0])),
    "rsqrt": lambda e, a, d: mul(mul(Const(-0.5), div(e, a[0])), d[0]),
    "softplus": lambda e, a, d: mul(Call("sigmoid", a), d[0]),
    "sign": lambda e, a, d: None,
    "atan2": lambda e, a, d: div(sub(mul(a[1], d[0]), mul(a[0], d[1])), add(square(a[0]), square(a[1]))),
    "cos": lambda e, a, d: neg(mul(Call("sin", a), d[0])),
    "abs": lambda e, a, d: where(Call("gt", (a[0], Const(0))), d[0],
                                 where(Call("lt", (a[0], Const(0))), neg(d[0]), None)),
    "relu": lambda e, a, d: where(Call("gt", (a[0], Const(0))), d[0], None),
    # ties go to the first argument, like a branch that takes it
    "max": lambda e, a, d: where(Call("ge", (a[0], a[1])), d[0], d[1]),
    "min": lambda e, a, d: where(Call("le", (a[0], a[1])), d[0], d[1]),
    "where": lambda e, a, d: where(a[0], d[1], d[2]),
    # piecewise constant: zero almost everywhere
    "floor": lambda e, a, d: None,
    "ceil": lambda e, a, d: None,
    "floordiv": lambda e, a, d: None,
    "mod": lambda e, a, d: sub(d[0], mul(Call("floordiv", (a[0], a[1])), d[1])),
    **{fn: (lambda e, a, d: None) for fn in ("lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not")},
}
