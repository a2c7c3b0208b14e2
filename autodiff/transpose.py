"""Reverse-mode gradients by transposing statements.

For a statement ``T[f(d)] (+)= E(..., A[g(d)], ...)`` over domain D, the
gradient flowing to each distinct read ``A[g(d)]`` is the statement

    dA[g(d)] += dT[f(d)] * dE/dA[g(d)]          over the same D

(a scatter when g is not a plain list of indices: strides, dilations,
``2*y + ky``). Statements are visited in reverse; contributions to one tensor
from several reads or statements go to separate temporaries and are summed;
forward temporaries the backward statements read are recomputed first.

* ``max``/``min`` reductions route the gradient through
  ``where(E == T[f], dT[f] / N[f], 0)`` where ``N`` counts the tied
  elements: ties share the gradient equally (as ``torch.amax`` does).
* ``prod`` reductions use the count of zero factors and the product of the
  non-zero ones, so factors equal to zero get exact gradients.
* A padded input's gradient is accumulated over the padded extent and
  cropped.

Every derived statement is bound to *exactly* the domain of the forward
statement it comes from (taken from the forward op's binding), so the
gradient is exact even where range inference alone would pick a larger set.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from tensorcomp.domain import Bound, BoundStatement, TensorInfo
from tensorcomp.domain.bind import index_set
from tensorcomp.errors import ArgumentError, DtypeError, ShapeError, UnknownNameError, op_label
from tensorcomp.lang import types
from tensorcomp.lang.ir import Access, Call, Const, Expr, Lin, Program, Statement, walk
from tensorcomp.compiler import ArraySpec
from tensorcomp.opdef import Op, lookup_checks
from tensorcomp.schedule.records import to_json

from . import rules


@dataclass(frozen=True)
class Derived:
    """A derived statement and where its domain and target shape come from.

    ``domain`` is ``("base", k)`` (the domain of the base op's statement k) or
    ``("box", X)`` (every element of tensor X). ``shape`` is ``("base", X)``
    (X's shape) or ``("logical", X)`` (X's shape with its padding).
    ``grad_of`` names the primal tensor whose dtype a gradient tensor takes.
    """

    stmt: Statement
    domain: tuple[str, object]
    shape: tuple[str, str] | None
    grad_of: str | None = None


def _rename(expr: Expr, mapping: dict[str, str]) -> Expr:
    if isinstance(expr, Access):
        return Access(mapping.get(expr.tensor, expr.tensor), expr.index)
    if isinstance(expr, Call):
        return Call(expr.fn, tuple(_rename(a, mapping) for a in expr.args))
    return expr


def _unique_accesses(expr: Expr) -> list[Access]:
    return list(dict.fromkeys(n for n in walk(expr) if isinstance(n, Access)))


class _Transposer:
    def __init__(self, base: Op, wrt: tuple[str, ...]) -> None:
        self.base = base
        self.prog = base.program
        self.wrt = wrt
        used = set(t for t, _ in self.prog.ranks) | set(self.prog.params)
        for st in self.prog.statements:
            used.update(st.index_names())
        self.used = used
        self.derived: list[Derived] = []
        self.contribs: dict[str, list[str]] = {}

    def fresh(self, stem: str) -> str:
        for k in itertools.count():
            name = stem if k == 0 else f"{stem}_{k}"
            if name not in self.used:
                self.used.add(name)
                return name
        raise AssertionError

    def fresh_indices(self, n: int) -> list[Lin]:
        """Index names are local to a statement: they only need to differ from tensor and parameter names."""
        out, k = [], 0
        while len(out) < n:
            if f"i{k}" not in self.used:
                out.append(Lin.var(f"i{k}"))
            k += 1
        return out

    def relevant(self) -> set[str]:
        """Tensors whose gradient reaches a wrt input."""
        rel = set(self.wrt)
        for st in self.prog.statements:
            if any(a.tensor in rel and rules.derivative(st.expr, a) is not None for a in _unique_accesses(st.expr)):
                rel.add(st.target)
        return rel

    def seed(self, k: int, st: Statement, dT: str) -> Expr:
        """dT[f(d)] adjusted for the statement's reduction (what multiplies dE/da)."""
        f = st.index
        grad = Access(dT, f)
        if st.reduce in (None, "sum"):
            return grad
        out = Access(st.target, f)
        if st.reduce in ("max", "min"):
            ties = self.fresh(f"n{st.target}")
            hit = Call("eq", (st.expr, out))
            self.derived.append(Derived(Statement(ties, f, "sum", Call("where", (hit, Const(1), Const(0)))),
                                        ("base", k), ("base", st.target)))
            return rules.where(hit, rules.div(grad, Access(ties, f)), None)
        # prod: exact even when some factors are zero
        zeros, nonzero = self.fresh(f"z{st.target}"), self.fresh(f"p{st.target}")
        is_zero = Call("eq", (st.expr, Const(0)))
        self.derived.append(Derived(Statement(zeros, f, "sum", Call("where", (is_zero, Const(1), Const(0)))),
                                    ("base", k), ("base", st.target)))
        self.derived.append(Derived(Statement(nonzero, f, "prod", Call("where", (is_zero, Const(1), st.expr))),
                                    ("base", k), ("base", st.target)))
        z, p = Access(zeros, f), Access(nonzero, f)
        partial = Call("where", (is_zero, Call("where", (Call("eq", (z, Const(1))), p, Const(0))),
                                 Call("where", (Call("eq", (z, Const(0))), Call("truediv", (p, st.expr)), Const(0)))))
        return rules.mul(grad, partial)

    def combine(self, tensor: str, final: str, crop: tuple[tuple[int, int], ...] | None) -> Derived:
        """final[i...] = sum of the contributions to ``tensor`` (cropping padded ones)."""
        rank = self.prog.rank(tensor)
        idx = self.fresh_indices(rank)
        src = [lin + lo for lin, (lo, _) in zip(idx, crop)] if crop else idx
        parts = self.contribs.get(tensor, [])
        expr: Expr | None = None
        for name in parts:
            expr = rules.add(expr, Access(name, tuple(src)))
        if expr is None:
            expr = Const(0.0)
        return Derived(Statement(final, tuple(idx), None, expr), ("box", tensor), ("base", tensor), tensor)

    def run(self) -> tuple[list[Derived], dict[str, str], list[str]]:
        prog = self.prog
        rel = self.relevant()
        d_out = {o: self.fresh(f"d{o}") for o in prog.outputs}
        finals: dict[str, str] = {}
        for k in reversed(range(len(prog.statements))):
            st = prog.statements[k]
            if st.target not in rel:
                continue
            if st.target in d_out:
                dT = d_out[st.target]
            else:
                if not self.contribs.get(st.target):
                    continue
                dT = self.finish(st.target, finals)
            seed = self.seed(k, st, dT)
            for a in _unique_accesses(st.expr):
                if a.tensor not in rel:
                    continue
                d = rules.derivative(st.expr, a)
                if d is None:
                    continue
                name = self.fresh(f"d{a.tensor}_part")
                self.contribs.setdefault(a.tensor, []).append(name)
                self.derived.append(Derived(Statement(name, a.index, "sum", rules.mul(seed, d)),
                                            ("base", k), ("logical", a.tensor), a.tensor))
        outputs = [self.finish(x, finals) for x in self.wrt]
        self.derived = self.recompute() + self.derived
        return self.derived, d_out, outputs

    def finish(self, tensor: str, finals: dict[str, str]) -> str:
        """Name the complete gradient of ``tensor``: a lone contribution is renamed, others summed."""
        final = self.fresh(f"d{tensor}")
        finals[tensor] = final
        parts = self.contribs.get(tensor, [])
        pad = self.base.pad_widths.get(tensor)
        if len(parts) == 1 and not (pad and any(lo or hi for lo, hi in pad)):
            self._rename_target(parts[0], final)
        else:
            self.derived.append(self.combine(tensor, final, pad))
        return final

    def _rename_target(self, old: str, new: str) -> None:
        self.derived = [Derived(Statement(new if d.stmt.target == old else d.stmt.target, d.stmt.index,
                                          d.stmt.reduce, _rename(d.stmt.expr, {old: new}), d.stmt.line),
                                d.domain, d.shape, d.grad_of) for d in self.derived]
        self.contribs = {t: [new if n == old else n for n in names] for t, names in self.contribs.items()}

    def recompute(self) -> list[Derived]:
        """Forward statements whose results the backward statements read."""
        written = {st.target: k for k, st in enumerate(self.prog.statements)}
        needed = {a.tensor for d in self.derived for a in d.stmt.accesses() if a.tensor in written}
        keep = set()
        for k in reversed(range(len(self.prog.statements))):
            st = self.prog.statements[k]
            if st.target in needed:
                keep.add(k)
                needed.update(a.tensor for a in st.accesses())
        return [Derived(self.prog.statements[k], ("base", k), None) for k in sorted(keep)]


class DerivedOp(Op):
    """An op derived from another (a gradient): ordinary source, bound to the base op's domains."""

    def __init__(self, base: Op, derived: list[Derived], inputs: tuple[str, ...], outputs: tuple[str, ...],
                 extra_inputs: dict[str, str], as_tuple: bool = False) -> None:
        self.as_tuple = as_tuple  # wrt was a list: always return a tuple, even of one gradient
        statements = tuple(Statement(d.stmt.target, d.stmt.index, d.stmt.reduce, d.stmt.expr, line)
                           for line, d in enumerate(derived, start=1))
        self.derived = [Derived(s, d.domain, d.shape, d.grad_of) for s, d in zip(statements, derived)]
        self.base = base
        self.extra_inputs = extra_inputs  # dOut name -> output of the base op
        ranks = dict(base.program.ranks)
        for s in statements:
            ranks.setdefault(s.target, len(s.index))
        for name, out in extra_inputs.items():
            ranks[name] = base.program.rank(out)
        written = [s.target for s in statements]
        self.program = Program(statements, inputs, outputs, tuple(t for t in written if t not in outputs),
                               base.params, tuple(ranks.items()))
        lines = []
        for d, s in zip(self.derived, statements):
            text = str(s)
            if d.domain[0] == "base":
                base_names = base.program.statements[d.domain[1]].index_names()
                missing = [n for n in base_names if n not in s.index_names()]
                if missing:
                    text += f"  # also over {', '.join(missing)} (the domain of line {d.domain[1] + 1})"
            lines.append(text)
        self.source = "\n".join(lines)
        self.label = op_label(self.source)
        self.inputs, self.outputs, self.params = inputs, outputs, base.params
        self.given_ranges, self.pad_widths, self.pad_values = {}, {}, {}
        self.schedule = ()
        self.use_tuned = True
        self.precision = base.precision  # a tf32 op's gradients run on tensor cores too
        self.ident = ("derived", self.source, base.ident, to_json(self.schedule), True)
        self._cache = {}
        self._n_in = len(inputs)
        self._init_args = (base, derived, inputs, outputs, extra_inputs, as_tuple)
        # index tensors are checked as the base op checks them (the base op's inputs come first)
        self.lookup_checks = lookup_checks(base.program.lookups, inputs, base.given_ranges)

    def with_schedule(self, schedule, use_tuned: bool | None = None) -> "DerivedOp":
        """The same derived op run with another schedule (``use_tuned``: see ``Op.with_schedule``)."""
        copy = DerivedOp(*self._init_args)
        copy._wrt = self._wrt
        copy.schedule = copy.check_schedule(tuple(schedule))
        copy.use_tuned = self.use_tuned if use_tuned is None else bool(use_tuned)
        copy.ident = ("derived", copy.source, self.base.ident, to_json(copy.schedule),
                      copy.use_tuned and not copy.schedule)
        return copy

    _wrt: str | list[str] | None = None  # what tc.grad was asked for (see recipe)

    def recipe(self) -> list | None:
        """``tc.grad(base, wrt)`` as JSON-ready data (see ``Op.recipe``)."""
        base = self.base.recipe()
        return None if base is None or self._wrt is None else ["grad", base, self._wrt]

    def canonical(self) -> str:
        """Its own canonical statements plus its base op's: the base op fixes the domains."""
        return f"{self.base.canonical()}\n# derived:\n{super().canonical()}"

    def __call__(self, *arrays, **params):
        out = super().__call__(*arrays, **params)
        return (out,) if self.as_tuple and not isinstance(out, tuple) else out

    def bind_specs(self, specs: list[ArraySpec], kinds: dict[str, str]) -> Bound:
        """Bound to the base op's domains (see the module docstring)."""
        nb = len(self.base.inputs)
        base_bound = self.base.bind_specs(specs[:nb], kinds)
        tensors: dict[str, TensorInfo] = {}
        for name in self.base.inputs:
            tensors[name] = base_bound.tensors[name]
        for spec, (name, out) in zip(specs[nb:], self.extra_inputs.items()):
            want = base_bound.tensors[out]
            if tuple(spec.shape) != want.shape:
                raise ShapeError(f"{self.label}: gradient input {name} has shape {tuple(spec.shape)} but {out} has "
                                 f"shape {want.shape}")
            dtype = str(spec.dtype)
            if dtype not in types.SUPPORTED or not spec.dtype.isnative:
                raise DtypeError(f"{self.label}: gradient input {name} has dtype {spec.dtype}, which is not "
                                 "supported; use float32 or float64")
            tensors[name] = TensorInfo(name, want.shape, dtype, "input")
        statements = []
        for d in self.derived:
            st = d.stmt
            if d.domain[0] == "base":
                bs = base_bound.statements[d.domain[1]]
                names, domain, extents = bs.names, bs.domain, bs.extents
            else:
                shape = base_bound.tensors[d.domain[1]].shape
                names = st.index_names()
                domain = index_set(len(names), [f"0 <= d{k} < {n}" for k, n in enumerate(shape)])
                extents = tuple((n, 0, m) for n, m in zip(names, shape))
            expr_type = types.infer(st.expr, {t: i.dtype for t, i in tensors.items()}, kinds)
            if d.grad_of is not None:
                dtype = base_bound.tensors[d.grad_of].dtype
                if not types.is_float(dtype):
                    raise DtypeError(f"{self.label}: tensor {d.grad_of} has dtype {dtype}; only float32 and float64 "
                                     "tensors have gradients")
            else:
                dtype = base_bound.tensors[st.target].dtype if d.shape is None else types.result_type(st.reduce,
                                                                                                   expr_type)
            if d.shape is None:
                shape = base_bound.tensors[st.target].shape
            elif d.shape[0] == "logical":
                shape = base_bound.tensors[d.shape[1]].logical_shape
            else:
                shape = base_bound.tensors[d.shape[1]].shape
            role = "output" if st.target in self.outputs else "temporary"
            tensors[st.target] = TensorInfo(st.target, shape, dtype, role)
            statements.append(BoundStatement(st, names, domain, extents, dtype, expr_type))
        return Bound(self.program, tensors, tuple(statements), dict(kinds))


def grad(op: Op, wrt: str | list[str] | tuple[str, ...]) -> DerivedOp:
    """The gradient op of ``op`` with respect to input(s) ``wrt``.

    Its inputs are ``op.inputs`` followed by one output gradient per output of
    ``op`` (named ``d<output>``); it returns the gradient of
    ``sum(out * dOut)`` with respect to ``wrt`` (a tuple when ``wrt`` is a
    list). The result is an ordinary op: print ``.source``, call it, or
    differentiate it again.
    """
    if hasattr(op, "gradient_op"):  # an op that derives its own gradient (tensorcomp.recurrence)
        return op.gradient_op(wrt)
    if not isinstance(op, Op):
        raise ArgumentError(f"tc.grad expects an op made by tc.op, got {type(op).__name__}")
    read = {a.tensor for st in op.program.statements for a in st.accesses()}
    if any(t in read for t in op.outputs):
        raise ArgumentError(f"tc.grad: {op.label}: outputs {', '.join(t for t in op.outputs if t in read)} are read by "
                            f"later statements (outputs=); differentiate the op without outputs= instead")
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt) if isinstance(wrt, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise ArgumentError(f"tc.grad: {op.label}: wrt must be an input name or a list of input names, got {wrt!r}")
    for name in names:
        if name in op.inputs:
            continue
        if name in op.params:
            raise ArgumentError(f"tc.grad: {op.label}: '{name}' is a scalar parameter; gradients are taken with "
                                f"respect to input tensors ({', '.join(op.inputs)})")
        if name in op.outputs or name in op.program.temporaries:
            raise ArgumentError(f"tc.grad: {op.label}: '{name}' is written by the op, not an input; its inputs "
                                f"are: {', '.join(op.inputs)}")
        raise UnknownNameError(f"tc.grad: {op.label}: op has no input '{name}'; its inputs are: "
                               f"{', '.join(op.inputs)}")
    if len(set(names)) != len(names):
        raise ArgumentError(f"tc.grad: {op.label}: wrt names an input twice: {list(names)}")
    t = _Transposer(op, names)
    try:
        derived, d_out, outputs = t.run()
    except rules.MissingRule as exc:
        raise ArgumentError(f"tc.grad: {op.label}: no derivative rule for '{exc.fn}'") from None
    inputs = tuple(op.inputs) + tuple(d_out.values())
    out = DerivedOp(op, derived, inputs, tuple(outputs), {v: k for k, v in d_out.items()},
                    as_tuple=not isinstance(wrt, str))
    out._wrt = wrt if isinstance(wrt, str) else list(wrt)
    return out
