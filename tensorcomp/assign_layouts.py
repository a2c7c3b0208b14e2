"""Layouts for a whole step: a value a kernel would copy into another axis order on every call is
written in that order by the call that makes it (a whole-program pass of ``tc.compile``).

Each kernel's schedule may lay an input out in another physical axis order (a ``Layout`` record;
``Kernel.relayout``), copied on each call. Inside a compiled step most such inputs are made by an
earlier call of the same program: a pooling's output read by the next convolution with the batch
innermost, a flattened activation read by a linear layer transposed. ``assign_layouts`` gives the
making call's op that output's layout (``Layout`` on its output: the kernel writes it so) and the
value that spec, so the reading kernel, compiled for the new strides, finds it already in place.

A value is moved only when every call that copies it wants the same order (or the first such
order when they differ: the others keep their copy), it is made by a plain op with no schedule of
its own, nothing else sees its memory (it is not handed on, written back to state, or viewed), and
the making op can name the output. The pass works on the program and the copies its kernels would
make (``wanted``), so it runs where kernels are resolved (``step``), and the step keeps the
program with fewer copies.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .opdef import Op
from .schedule.records import Layout
from .strides import permuted_strides
from .trace import Call, Program, View


def assign_layouts(p: Program, wanted: dict[int, list[tuple[int, tuple[int, ...]]]]) -> tuple[Program, int]:
    """``p`` with values written in the layouts their readers copy them into, and how many values
    moved. ``wanted``: body index of a call -> (input position, axis order) of each input its kernel
    copies into another order on every call."""
    kept = p.kept()
    viewed = {item.source for item in p.body if isinstance(item, View)}
    maker: dict[int, int] = {}
    for k, item in enumerate(p.body):
        if isinstance(item, Call):
            for v in item.outputs:
                maker[v] = k
    orders: dict[int, tuple[int, ...]] = {}
    for k in sorted(wanted):
        for pos, perm in wanted[k]:
            v = p.body[k].inputs[pos]
            orders.setdefault(v, tuple(perm))  # (the first reader's order wins)
    body, specs, moved = list(p.body), list(p.specs), 0
    for v, perm in orders.items():
        k = maker.get(v)
        if k is None or v in kept or v in viewed:
            continue
        call = body[k]
        op = call.op
        if not isinstance(op, Op) or op.schedule or op.lookup_checks:
            continue
        tensor = op.outputs[call.outputs.index(v)]
        records = tuple(r for r in op.schedule if not (isinstance(r, Layout) and r.tensor == tensor))
        body[k] = replace(call, op=_with_layout(op, records + (Layout(tensor, perm),)))
        shape, dtype, _ = specs[v]
        specs[v] = (shape, dtype, permuted_strides(shape, perm, np.dtype(dtype).itemsize))
        moved += 1
    return replace(p, body=tuple(body), specs=tuple(specs)), moved


_OPS: dict[tuple, Op] = {}  # (op identity, records) -> the op with those records


def _with_layout(op: Op, records: tuple) -> Op:
    key = (op.ident, records)
    if key not in _OPS:
        _OPS[key] = op.with_schedule(records)
    return _OPS[key]
