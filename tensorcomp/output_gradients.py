"""Whole-program pass ``gradients_from_outputs``: an activation's gradient reads the activation's
output instead of its input.

The gradient of ``O[i] = relu(X[i])`` derived by transposition reads X (``dX = dO * where(X > 0, 1,
0)``), so the value before the activation must live until the backward pass even when the
activation runs inside the call making X (``epilogues.fuse_epilogues``: a convolution then writes
both its output and the activated one). For activations whose derivative is a function of their
output (relu, sigmoid, tanh, exp) the gradient call can read O, which the step keeps anyway for the
next layer: X then never leaves the call that makes it (CapsNet-small's first convolution stops
writing 6.5 MB per step). relu's rewrite computes the same values bit for bit (``relu(x) > 0`` exactly
when ``x > 0``); the others the same derivative in the output's form, as other frameworks do.
"""

from __future__ import annotations

from dataclasses import replace

from .autodiff.transpose import DerivedOp
from .lang.ir import expr_str
from .opdef import Op
from .trace import Call, Program

# activation applied to X[i] -> its derivative written in its output Y
_FROM_OUTPUT = {
    "relu": "where(Y[{i}] > 0, 1, 0)",
    "sigmoid": "Y[{i}] * (1 - Y[{i}])",
    "tanh": "(1 - Y[{i}] * Y[{i}])",
    "exp": "Y[{i}]",
}
_OPS: dict[tuple, Op | None] = {}  # (gradient op identity) -> the op reading the output, or None


def _activation(op: Op) -> tuple[str, str] | None:
    """(activation name, index list) when ``op`` is one statement ``O[i...] = f(X[i...])`` of a listed f."""
    if type(op) is not Op or op.schedule or len(op.program.statements) != 1 or len(op.inputs) != 1:
        return None
    st = op.program.statements[0]
    if st.reduce is not None or any(lin.plain_var is None for lin in st.index):
        return None
    i = ", ".join(lin.plain_var for lin in st.index)
    for name in _FROM_OUTPUT:
        if expr_str(st.expr) == f"{name}({op.inputs[0]}[{i}])":
            return name, i
    return None


def _from_output(g: DerivedOp) -> Op | None:
    """The gradient op ``g`` (of a listed activation, with respect to its input) written on the
    activation's output: ``dX[i] = dO[i] * f'(Y[i])``, inputs (dO, Y); or None."""
    key = g.ident
    if key not in _OPS:
        _OPS[key] = None
        found = _activation(g.base)
        if found is not None and len(g.outputs) == 1 and len(g.extra_inputs) == 1 and \
                set(g.inputs) == {g.base.inputs[0], *g.extra_inputs}:
            name, i = found
            d_out = next(iter(g.extra_inputs))
            op = Op(f"{g.outputs[0]}[{i}] = {d_out}[{i}] * {_FROM_OUTPUT[name].format(i=i)}", precision=g.precision)
            if op.inputs == (d_out, "Y") and op.outputs == g.outputs:
                _OPS[key] = op
    return _OPS[key]


def gradients_from_outputs(p: Program) -> Program:
    """Each activation gradient call whose activation ran on the same value earlier in the program
    reads that call's output instead of the activation's input (see the module docstring)."""
    made: dict[tuple, int] = {}  # (op identity, input value) -> the output of that call
    body = []
    for item in p.body:
        if isinstance(item, Call):
            if len(item.inputs) == 1 and len(item.outputs) == 1 and not item.params:
                made.setdefault((item.op.ident, item.inputs[0]), item.outputs[0])
            g = item.op
            new = _from_output(g) if type(g) is DerivedOp and not item.params else None
            if new is not None:
                values = dict(zip(g.inputs, item.inputs))
                y = made.get((g.base.ident, values[g.base.inputs[0]]))
                if y is not None:
                    item = replace(item, op=new, inputs=(values[next(iter(g.extra_inputs))], y))
        body.append(item)
    return replace(p, body=tuple(body))
