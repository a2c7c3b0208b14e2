"""Whole-program pass ``fuse_updates``: a parameter's optimizer update runs inside the call that
writes its gradient.

An optimizer reads each parameter, its gradient and its moments as flat arrays (``optim``: element
``i`` of each is the same element of the parameter) and writes the new ones flat, viewed back in the
parameter's shape. Where the gradient is made by a plain op's call in C order and every other flat
array the update reads or writes is likewise a flat view of a C-order array of the parameter's shape,
the update is the same computation over the parameter's indices: ``M2[i] = b * M[i] + ... G[i]``
becomes ``M2[u0, u1] = b * M[u0, u1] + ... dW[u0, u1]`` after the gradient's statements, in one op
(tensors and scalars renamed apart, ``_a`` and ``_u``). The gradient stays an output (the step leaves
it in ``.grad``); the update's outputs are the views back, which the merged call now writes; the
flat views go. The update then reads the gradient where it was just written instead of from memory in
a kernel of its own (``fuse_epilogues`` does the same for activations; this pass is for updates,
which read a view of their input and write several outputs).

Not fused: an update whose gradient a gradient op writes that is not a plain op (see
``epilogues.plain_call``), or a call copying it into C order (the gradient is written in another
order, so the optimizer could not view it flat: ``state_layouts`` may rather keep the parameter in
that order, which needs the update unfused), whose arrays are not all C-order views of the
parameter's shape, or whose outputs something other than its views back reads, or whose parameter
an op's own schedule lays out in another order (likewise); a 1-d parameter's update (a bias: nothing
to gain over the merged update kernel) either. A parameter whose update is
fused keeps its traced axis order (``state_layouts`` moves a parameter together with the flat views
of an unfused update).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from .autotune.canon import renamed_source
from .epilogues import index_names, plain_call, producer_then, rewritable
from .opdef import Op
from .schedule.records import Layout
from .settle import copies
from .strides import contiguous
from .trace import Call, Program, View


def _flat_update(op: Op) -> bool:
    """Every statement writes and reads flat arrays at one plain index, or a scalar at a constant
    index (a step count, a hyperparameter), with no reduction: an optimizer's update."""
    if type(op) is not Op or op.lookup_checks or op.schedule or op.given_ranges or op.pad_widths:
        return False
    var = None
    for st in op.program.statements:
        if st.reduce is not None or len(st.index) != 1 or st.index[0].plain_var is None:
            return False
        var = var or st.index[0].plain_var
        if st.index[0].plain_var != var:
            return False
        for a in st.accesses():
            if len(a.index) != 1:
                return False
            if a.index[0].plain_var != var and list(a.index[0].names()):
                return False
    return var is not None


def _flat_view(v: View | None, size: int, itemsize: int) -> bool:
    """Whether ``v`` views its source's first ``size`` elements as one dense axis."""
    return v is not None and (v.offset, v.shape, v.strides, v.upload) == (0, (size,), (itemsize,), False)


def _fused(c: Call, u: Call, bases: dict[int, int], backs: dict[int, int], grad: int,
           shape: tuple[int, ...], needed: set[int]) -> Call | None:
    """Call ``c`` with update ``u`` after its statements, over ``shape`` (``bases``: each flat input of
    ``u`` -> the value it views; ``backs``: each output of ``u`` -> its view back, which the call now
    writes; ``needed``: the outputs of ``c`` something else reads); None where the language refuses
    the merged source."""
    pc, pu = c.op.program, u.op.program
    mc = {t: f"{t}_a" for t in (*c.op.inputs, *pc.outputs, *pc.temporaries, *c.op.params)}
    made = dict(zip(c.outputs, pc.outputs))
    taken = index_names(c.op) | set(mc.values())
    names = [f"u{k}" for k in range(len(shape))]
    while taken & set(names):
        names = [n + "_" for n in names]
    flat = "tc_flat_index"
    mu = {i: flat for st in pu.statements for i in st.index_names()}
    mu.update({t: f"{t}_u" for t in (*u.op.inputs, *pu.outputs, *pu.temporaries, *u.op.params)})
    for t, v in zip(u.op.inputs, u.inputs):
        if bases.get(v) == grad:
            mu[t] = mc[made[grad]]  # (the update reads the gradient where the call writes it)
    if set(mc.values()) & {mu[t] for t in (*pu.outputs, *pu.temporaries, *u.op.params)}:
        return None
    text = renamed_source(pu, mu).replace(f"[{flat}]", f"[{', '.join(names)}]")
    if flat in text:
        return None
    keep = [mc[t] for t, v in zip(pc.outputs, c.outputs) if v in needed] + [mu[t] for t in pu.outputs]
    merged = producer_then(c.op, mc, text, tuple(keep), u.op)
    if merged is None:
        return None
    value = {mc[t]: v for t, v in zip(c.op.inputs, c.inputs)}
    value.update({mc[t]: v for t, v in zip(pc.outputs, c.outputs)})
    value.update({mu[t]: bases.get(v, v) for t, v in zip(u.op.inputs, u.inputs) if bases.get(v) != grad})
    value.update({mu[t]: backs[v] for t, v in zip(pu.outputs, u.outputs)})
    if any(t not in value for t in (*merged.inputs, *merged.outputs)):
        return None
    params = tuple((mc[n], x) for n, x in c.params) + tuple((mu[n], x) for n, x in u.params)
    return Call(merged, params, tuple(value[t] for t in merged.inputs), tuple(value[t] for t in merged.outputs))


def _laid_out_by_a_reader(p: Program, w: int) -> bool:
    """Whether a call reads value ``w`` through an op whose own schedule lays it out in another order
    (its kernel copies it on every call: ``state_layouts`` may rather keep it in that order)."""
    for item in p.body:
        if isinstance(item, Call) and w in item.inputs:
            names = {t for t, v in zip(item.op.inputs, item.inputs) if v == w}
            if any(isinstance(r, Layout) and r.tensor in names and
                   (tuple(r.perm) != tuple(range(len(r.perm))) or r.pad or r.blocks)
                   for r in getattr(item.op, "schedule", ()) or ()):
                return True
    return False


def _hoistable(body: list, values: list[int], j: int) -> list[int] | None:
    """Body indices of the items after ``j`` that make ``values`` (and what they read, transitively),
    in order: they can run before item ``j``, as none reads what ``j`` or a later item that stays makes;
    None where one does."""
    made = {v: k for k, item in enumerate(body) for v in (item.outputs if isinstance(item, Call) else (item.output,))}
    todo, out = list(values), set()
    while todo:
        k = made.get(todo.pop())
        if k is None or k < j or k in out:
            continue
        if k == j:
            return None
        out.add(k)
        item = body[k]
        todo.extend(item.inputs if isinstance(item, Call) else (item.source,))
    return sorted(out)


def fuse_updates(p: Program) -> Program:
    """Each optimizer update whose gradient a plain op's call writes runs inside that call (see the
    module docstring)."""
    body = list(p.body)
    k = 0
    while k < len(body):
        u = body[k]
        k += 1
        if not isinstance(u, Call) or not _flat_update(u.op):
            continue
        views = {item.output: item for item in body if isinstance(item, View)}
        maker = {v: j for j, item in enumerate(body) if isinstance(item, Call) for v in item.outputs}
        readers = Counter(v for item in body for v in (item.inputs if isinstance(item, Call) else (item.source,)))
        kept = p.kept()
        size = int(np.prod(p.specs[u.outputs[0]][0]))
        itemsize = np.dtype(p.specs[u.outputs[0]][1]).itemsize
        bases: dict[int, int] = {}  # flat input -> the N-d value it views
        for v in u.inputs:
            view = views.get(v)
            if _flat_view(view, size, itemsize):
                bases[v] = view.source
            elif p.specs[v][0] == (size,) and size > 1:
                bases = {}
                break
        shapes = {p.specs[b][:2] for b in bases.values()}
        made = [b for b in bases.values() if b in maker]
        if not bases or len(shapes) != 1 or len(set(made)) != 1:
            continue
        grad = made[0]
        shape, dtype = next(iter(shapes))
        if len(shape) < 2 or any(p.specs[b][2] != contiguous(shape, np.dtype(dtype).itemsize)
                                 for b in bases.values()):
            continue  # (1-d: nothing to gain; another order: the flat index is not the C-order one)
        if any(_laid_out_by_a_reader(p, b) for b in bases.values()):
            continue
        j = maker[grad]
        c = plain_call(body[j], p)
        if not isinstance(c, Call) or not rewritable(c.op) or _flat_update(c.op) or copies(c):
            continue  # (a copy of the gradient into C order: ``state_layouts`` may move the parameter instead)
        later = _hoistable(body, [w for w in u.inputs if w not in bases] + [b for b in bases.values() if b != grad], j)
        if later is None:
            continue  # (an array the update reads made from the gradient's call on)
        backs: dict[int, int] = {}
        for v in u.outputs:
            backs_of_v = [item for item in body if isinstance(item, View) and item.source == v]
            if v in kept or readers[v] != 1 or len(backs_of_v) != 1 or backs_of_v[0].offset or \
                    backs_of_v[0].shape != shape or p.specs[backs_of_v[0].output][2] != contiguous(
                        shape, np.dtype(dtype).itemsize):
                backs = {}
                break
            backs[v] = backs_of_v[0].output
        if not backs:
            continue
        needed = {v for v in c.outputs if v in kept or readers[v] > (v == grad)}
        fused = _fused(c, u, bases, backs, grad, shape, needed)
        if fused is None:
            continue
        gone = set(backs.values())
        body[j] = fused
        hoisted = [body[m] for m in later]  # (made from state alone: they can run before the gradient's call)
        body = body[:j] + hoisted + [item for m, item in enumerate(body) if m >= j and m not in later]
        body = [item for item in body if item is not u and not (isinstance(item, View) and item.output in gone)]
        k = 0  # (positions moved: look again from the start)
    live = Counter(v for item in body for v in (item.inputs if isinstance(item, Call) else (item.source,)))
    kept = p.kept()
    body = [item for item in body if not (isinstance(item, View) and item.output not in live and
                                          item.output not in kept)]
    return replace(p, body=tuple(body))
