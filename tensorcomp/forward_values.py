"""Whole-program pass ``keep_forward_values``: a gradient reads the forward values it would recompute.

A derived gradient op (``tc.grad``) recomputes, before its own statements, every forward statement
whose result it reads (``autodiff.transpose``: the max pool's maximum, the dynamic routing's
agreements, softmaxes and squashed capsules), so that it can run on the forward op's inputs alone.
In a traced step the forward call ran just before, on the same inputs: its values only need to be
kept. For each gradient call whose base op was called on the same input values and scalars earlier
in the program, the forward call is given the recomputed tensors as extra outputs
(``Op(outputs=...)``) and the gradient call becomes the same gradient op without the recomputing
statements, reading those tensors as inputs (bound to the same domains of the base op). The
routing gradient of the capsule networks stops re-running three routing iterations; a tensor the
forward op already returns (the pool's maximum) costs nothing to keep.

Only plain forward ops (``tc.op``, no schedule of their own, no index tensors) take extra outputs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .autodiff.transpose import DerivedOp
from .epilogues import rewritable
from .errors import TensorcompError
from .opdef import Op
from .strides import contiguous
from .trace import Call, Program, blank

_KEPT: dict[tuple, tuple[Op, DerivedOp] | None] = {}  # (base ident, gradient ident, kept) -> new ops


def _recomputed(g: DerivedOp) -> tuple[str, ...]:
    """The tensors a gradient op recomputes: its statements copied from the base op (no shape of
    their own), in order."""
    return tuple(d.stmt.target for d in g.derived if d.shape is None and d.grad_of is None)


def _rebuilt(base: Op, g: DerivedOp, kept: tuple[str, ...]) -> tuple[Op, DerivedOp] | None:
    """``base`` also returning ``kept``, and ``g`` on it reading them instead of recomputing them."""
    key = (base.ident, g.ident, kept)
    if key not in _KEPT:
        try:
            extra = tuple(t for t in kept if t not in base.outputs)
            forward = Op(base.source, ranges=base.given_ranges or None, pad=base.pad_widths or None,
                         pad_value=base.pad_values or None, outputs=base.outputs + extra, precision=base.precision)
            derived = [d for d in g.derived if d.stmt.target not in kept]
            extra_inputs = dict(g.extra_inputs)
            extra_inputs.update({t: t for t in kept})
            inputs = tuple(forward.inputs) + tuple(extra_inputs)
            gradient = DerivedOp(forward, derived, inputs, g.outputs, extra_inputs, g.as_tuple)
            gradient._wrt = g._wrt
            _KEPT[key] = (forward, gradient)
        except TensorcompError:  # a form the language refuses: the gradient keeps recomputing
            _KEPT[key] = None
    return _KEPT[key]


def keep_forward_values(p: Program) -> Program:
    """Each gradient call reads the forward values it recomputes from the forward call before it."""
    body = list(p.body)
    specs = list(p.specs)
    for j, g in enumerate(body):
        if not (isinstance(g, Call) and isinstance(g.op, DerivedOp) and type(g.op) is DerivedOp and
                not g.op.schedule and _recomputed(g.op)):
            continue
        base = g.op.base
        nb = len(base.inputs)
        params = dict(g.params)
        found = None
        for i in range(j - 1, -1, -1):
            f = body[i]
            if isinstance(f, Call) and f.op.ident == base.ident and f.inputs == g.inputs[:nb] and \
                    all(params.get(k) == x for k, x in f.params):
                found = i
                break
        if found is None or not rewritable(body[found].op):
            continue
        f = body[found]
        kept = _recomputed(g.op)
        rebuilt = _rebuilt(f.op, g.op, kept)
        if rebuilt is None:
            continue
        forward, gradient = rebuilt
        tensors = f.op.bind(*(blank(specs[v]) for v in f.inputs), **dict(f.params)).tensors
        made = dict(zip(f.op.outputs, f.outputs))
        outputs = list(f.outputs)
        for t in forward.outputs[len(f.op.outputs):]:
            made[t] = len(specs)
            outputs.append(len(specs))
            dtype = np.dtype(tensors[t].dtype)
            specs.append((tensors[t].shape, dtype, contiguous(tensors[t].shape, dtype.itemsize)))
        body[found] = replace(f, op=forward, outputs=tuple(outputs))
        body[j] = replace(g, op=gradient, inputs=g.inputs + tuple(made[t] for t in kept))
    return replace(p, body=tuple(body), specs=tuple(specs))
