"""A gradient op's call as the call of a plain op, where that op computes exactly the same.

A derived gradient op (``tc.grad``) binds each statement to the domain of the forward statement it
comes from, which its source alone does not state; the whole-program passes that rewrite sources
(``epilogues.fuse_epilogues``) therefore take plain ops only. Most gradient statements, though, run
over exactly the domain a plain op's range inference gives them (a ReLU's gradient, a max pool's, an
unpadded convolution's). ``as_plain`` checks that for one call — the plain op made from the gradient
op's statements, bound to the call's input shapes, must have the same tensors (shapes, dtypes) and,
statement by statement, the same isl domain (its indices perhaps in another order) — and then
returns the call of the plain op (its inputs: those the statements read, in the plain op's order;
the base op's window ranges and padded inputs carried over). Gradient ops that read index tensors
are left as they are; so are those whose statements a plain op would compute in another dtype (a
max pool's gradient divides by an integer tie count: float64 in a plain op).
"""

from __future__ import annotations

from dataclasses import replace

import islpy as isl

from .autodiff.transpose import DerivedOp
from .autotune.canon import renamed_source
from .errors import TensorcompError
from .opdef import Op
from .trace import Call, blank

_PLAIN: dict[tuple, Op | None] = {}  # (gradient op identity, input specs) -> the plain op, or None


def _in_order(bs, names: tuple[str, ...]) -> isl.Set | None:
    """The statement's domain with its dimensions in the order of ``names`` (None: other indices)."""
    if sorted(bs.names) != sorted(names):
        return None
    k = len(names)
    src, dst = ", ".join(f"e{j}" for j in range(k)), ", ".join(f"e{bs.names.index(n)}" for n in names)
    return bs.domain.apply(isl.Map(f"{{ [{src}] -> [{dst}] }}"))


def _same(derived, plain) -> bool:
    """Whether the plain op's binding holds the gradient op's tensors (less inputs it never reads)
    and its statements over the same domains (the indices perhaps in another order)."""
    for t, info in derived.tensors.items():
        other = plain.tensors.get(t)
        if other is None and info.role != "input" or other is not None and \
                (other.shape, other.dtype) != (info.shape, info.dtype):
            return False
    if set(plain.tensors) - set(derived.tensors) or len(derived.statements) != len(plain.statements):
        return False
    for x, y in zip(derived.statements, plain.statements):
        domain = _in_order(y, x.names)
        if domain is None or not domain.is_equal(x.domain) or x.dtype != y.dtype:
            return False
    return True


def as_plain(call: Call, specs) -> Call | None:
    """``call`` (of a gradient op) as the call of an equal plain op, or None where there is none."""
    g = call.op
    if type(g) is not DerivedOp or g.schedule or g.lookup_checks:
        return None
    key = (g.ident, tuple((specs[v][0], str(specs[v][1])) for v in call.inputs))
    if key not in _PLAIN:
        _PLAIN[key] = None
        try:
            source = renamed_source(g.program, {})
            bare = Op(source)
            indices = {n for st in bare.program.statements for n in st.index_names()}
            base = g.base  # its options carry over (those naming the plain op's indices and inputs)
            options = dict(ranges={n: r for n, r in base.given_ranges.items() if n in indices} or None,
                           pad={t: w for t, w in base.pad_widths.items() if t in bare.inputs} or None,
                           pad_value={t: x for t, x in base.pad_values.items() if t in bare.inputs} or None,
                           precision=g.precision)
            plain = Op(source, **options)
            if plain.outputs != g.outputs:  # (outputs= only where needed: an elementwise op without it merges)
                plain = Op(source, outputs=g.outputs, **options)
            given = dict(zip(g.inputs, (blank(specs[v]) for v in call.inputs)))
            params = dict(call.params)
            if all(t in given for t in plain.inputs) and set(plain.params) <= set(params) and _same(
                    g.bind(*given.values(), **params),
                    plain.bind(*(given[t] for t in plain.inputs), **{n: params[n] for n in plain.params})):
                _PLAIN[key] = plain
        except TensorcompError:
            pass
    plain = _PLAIN[key]
    if plain is None:
        return None
    value = dict(zip(g.inputs, call.inputs))
    return replace(call, op=plain, params=tuple((n, x) for n, x in call.params if n in plain.params),
                   inputs=tuple(value[t] for t in plain.inputs))
