"""Result dtypes, following NumPy 2's promotion rules (NEP 50).

Tensors have strong dtypes. Literals, index values and scalar parameters are
*weak*, like Python scalars in NumPy: ``A[i] * 2.0`` keeps A's float32.
Types are written as strings: ``bool``, ``int32``, ``int64``, ``float32``,
``float64``, and the weak kinds ``int`` and ``float``.
"""

from __future__ import annotations

import numpy as np

from .ir import COMPARISONS, Access, Call, Const, Expr, Index, Param

SUPPORTED = ("float32", "float64", "int32", "int64", "bool")
_KIND = {"bool": 0, "int": 1, "int32": 1, "int64": 1, "float": 2, "float32": 2, "float64": 2}
_FLOAT_FNS = ("exp", "log", "sqrt", "tanh", "sigmoid", "sin", "cos", "erf", "erfc", "expm1", "log1p", "rsqrt",
              "softplus")


def is_weak(t: str) -> bool:
    return t in ("int", "float")


def is_float(t: str) -> bool:
    return _KIND[t] == 2


def is_int(t: str) -> bool:
    return _KIND[t] == 1


def concrete(t: str) -> str:
    """The dtype a weak type takes when nothing stronger is around."""
    return {"int": "int64", "float": "float64"}.get(t, t)


def promote(a: str, b: str) -> str:
    """NumPy's result type of a binary operation on types a and b."""
    if a == b:
        return a
    wa, wb = is_weak(a), is_weak(b)
    if wa and wb:
        return a if _KIND[a] >= _KIND[b] else b
    if wa or wb:
        weak, strong = (a, b) if wa else (b, a)
        if _KIND[strong] >= _KIND[weak]:
            return strong
        return "float64" if weak == "float" else "int64"  # bool with a weak int/float
    return str(np.promote_types(a, b))


def to_float(t: str) -> str:
    """Type of a float-valued function of a t (int -> float64, like np.exp)."""
    if is_float(t):
        return t
    return "float" if is_weak(t) else "float64"


def infer(expr: Expr, tensor_types: dict[str, str], param_types: dict[str, str]) -> str:
    """The (possibly weak) type of ``expr``."""
    if isinstance(expr, Const):
        v = expr.value
        return "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float"
    if isinstance(expr, Access):
        return tensor_types[expr.tensor]
    if isinstance(expr, Index):
        return "int"
    if isinstance(expr, Param):
        return param_types[expr.name]
    assert isinstance(expr, Call)
    args = [infer(a, tensor_types, param_types) for a in expr.args]
    fn = expr.fn
    if fn in COMPARISONS or fn in ("and", "or", "not"):
        return "bool"
    if fn == "where":
        return promote(args[1], args[2])
    if fn in _FLOAT_FNS:
        return to_float(args[0])
    if fn in ("truediv", "atan2"):
        return to_float(promote(args[0], args[1]))
    if fn in ("abs", "relu", "floor", "ceil", "neg", "sign"):
        t = args[0]
        return "int" if t == "bool" and fn != "abs" else t
    out = promote(args[0], args[1])
    if out == "bool" and fn in ("add", "sub", "mul", "floordiv", "mod", "pow"):
        return "int64" if fn != "add" else "bool"
    return out


def result_type(reduce: str | None, t: str) -> str:
    """The stored dtype of a statement whose expression has type t."""
    t = concrete(t)
    if reduce in ("sum", "prod") and t == "bool":
        return "int64"  # like np.sum of a bool array
    return t
