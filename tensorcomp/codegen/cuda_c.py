"""C text for the CUDA generator: types, index arithmetic and integer loop expressions."""

from __future__ import annotations

from ..lang.ir import FloorDiv, Lin
from ..schedule.loopnest import IConst, IExpr, IOp, IVar

CTYPE = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long", "bool": "bool"}
MEMTYPE = {**CTYPE, "bool": "unsigned char"}


def ivars(e: IExpr) -> set[str]:
    if isinstance(e, IVar):
        return {e.name}
    if isinstance(e, IOp):
        return set().union(*(ivars(a) for a in e.args))
    return set()


def lin_c(lin: Lin, name) -> str:
    parts = [str(lin.const)] if lin.const or not lin.terms else []
    for atom, coef in lin.terms:
        if isinstance(atom, str):
            text = name(atom)
        elif isinstance(atom, FloorDiv):
            text = f"tc_floordiv({lin_c(atom.num, name)}, {atom.den}LL)"
        else:
            text = f"tc_mod({lin_c(atom.num, name)}, {atom.den}LL)"
        parts.append(f"{coef}LL * {text}" if coef != 1 else text)
    return "(" + " + ".join(parts) + ")"


def iexpr_c(e: IExpr) -> str:
    if isinstance(e, IConst):
        return f"{e.value}LL"
    if isinstance(e, IVar):
        return e.name
    a = [iexpr_c(x) for x in e.args]
    binary = {"add": "+", "sub": "-", "mul": "*", "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">",
              "ge": ">=", "and": "&&", "or": "||", "rem": "%"}
    if e.op in binary:
        return f"({a[0]} {binary[e.op]} {a[1]})"
    if e.op == "neg":
        return f"(-{a[0]})"
    if e.op == "floordiv":
        return f"tc_floordiv({a[0]}, {a[1]})"
    if e.op == "mod":
        return f"tc_mod({a[0]}, {a[1]})"
    if e.op in ("min", "max"):
        return f"{e.op}((i64)({a[0]}), (i64)({a[1]}))"
    if e.op == "select":
        return f"({a[0]} ? {a[1]} : {a[2]})"
    raise AssertionError(e.op)
