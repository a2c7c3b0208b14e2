"""Parameters and optimizer state in the layouts the step's kernels read them in (a whole-program
pass of ``tc.compile``, beside ``assign_layouts``).

A kernel may copy a parameter into another axis order on every call (CapsNet-small's primary-
capsule gradient reads its weights with the output channels outside the input channels). The
parameter is an input of the step and its new value an output, so it could as well live in that
order across steps: the copy then happens once, at the first replay, not per step. What holds a
parameter to its traced order is its update: the optimizer reads the parameter, its gradient and
its moments as flat arrays (``optim``: element ``i`` of each is the same element of the parameter)
and writes the new ones flat, viewed back in the parameter's shape. All of them can change order
together: a flat view of a dense array in any axis order walks its memory, so the update pairs the
same elements as long as every array it reads and writes at ``i`` has one physical order.

``group`` finds, for one parameter, every value of that update (the parameter, its gradient and
each moment, their flat views, the new values and their views back) and refuses anything else that
sees their memory; ``move`` gives them all one axis order: the sources' specs (the caller converts
the state tensors at the next replay, ``relay_state``), a ``Layout`` record on the call writing the
gradient, and the strides of the views back. ``state_dict()``, ``.numpy()`` and ``.grad`` still show
the logical layout: they are numpy arrays with the moved strides.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .assign_layouts import refuted, seconds, touching
from .opdef import Op
from .runtime import objects
from .settle import compile_kernels
from .schedule.records import Layout
from .strides import contiguous, permuted_strides
from .trace import Call, Program, View, result_values, spec_of


@dataclass(frozen=True)
class Group:
    """The values of one parameter's update that must share an axis order."""
    sources: tuple[int, ...]  # state data read by the step (the parameter, its moments)
    made: tuple[int, ...]  # N-d values calls write (its gradient)
    views_back: tuple[int, ...]  # body indices of the views of the update's flat outputs in the parameter's shape


def _elementwise_partners(op: Op, tensor: str, size: int, shapes: dict[str, tuple]) -> set[str] | None:
    """The tensors of ``op`` that its statements pair with ``tensor`` element by element (connected
    through statements that read or write them at one plain index), or None when one such statement
    is not elementwise over ``size`` elements (a reduction, a shifted or scattered index)."""
    stmts = op.program.statements
    partners, todo = {tensor}, [tensor]
    while todo:
        name = todo.pop()
        for st in stmts:
            flat = [(st.target, st.index)] + [(a.tensor, a.index) for a in st.accesses()]
            if not any(t == name for t, _ in flat):
                continue
            if st.reduce is not None or len(st.index) != 1 or st.index[0].plain_var is None:
                return None
            var = st.index[0].plain_var
            for t, index in flat:
                if len(index) == 1 and not list(index[0].names()):
                    continue  # a scalar held in a tensor (Adam's step count, a hyperparameter)
                if shapes.get(t) != (size,) or len(index) != 1 or index[0].plain_var != var:
                    return None
                if t not in partners:
                    partners.add(t)
                    todo.append(t)
    return partners


def group(p: Program, w: int) -> Group | None:
    """The update group of state value ``w`` (a parameter's data), or None when something else than
    the kernels reading it in its shape and one elementwise update sees the memory of its values."""
    shape, dtype, strides = p.specs[w]
    itemsize = np.dtype(dtype).itemsize
    if strides != contiguous(shape, itemsize) or len(shape) < 2:
        return None
    size = int(np.prod(shape))
    flat_spec = ((size,), np.dtype(dtype), (itemsize,))
    sources = {v: s for v, s in p.sources}
    readers: dict[int, list[int]] = {}
    for k, item in enumerate(p.body):
        for v in (item.inputs if isinstance(item, Call) else (item.source,)):
            readers.setdefault(v, []).append(k)
    maker = {v: k for k, item in enumerate(p.body) if isinstance(item, Call) for v in item.outputs}
    written = {v for _, _, v in p.writes if v is not None}

    def flat_views(v: int) -> list[int] | None:
        out = []
        for k in readers.get(v, ()):
            item = p.body[k]
            if isinstance(item, View):
                if (item.offset, item.shape, item.strides, item.upload) != (0, (size,), (itemsize,), False):
                    return None
                out.append(k)
        return out

    update: tuple[int, set[str]] | None = None  # (body index of the update call, its tensors paired with w)
    for k in flat_views(w) or ():
        fv = p.body[k].output
        for j in readers.get(fv, ()):
            call = p.body[j]
            if not isinstance(call, Call) or not isinstance(call.op, Op) or call.op.lookup_checks:
                return None
            shapes = {t: p.specs[v][0] for t, v in zip((*call.op.inputs, *call.op.outputs),
                                                         (*call.inputs, *call.outputs))}
            pos = call.inputs.index(fv)
            partners = _elementwise_partners(call.op, call.op.inputs[pos], size, shapes)
            if partners is None or (update is not None and update[0] != j):
                return None
            update = (j, partners)
    if update is None:
        return None
    j, partners = update
    call = p.body[j]
    members, made, back = {w}, set(), []
    for name, v in zip(call.op.inputs, call.inputs):
        if name not in partners:
            continue
        if p.specs[v] != flat_spec:
            return None
        view = next((item for item in p.body if isinstance(item, View) and item.output == v), None)
        if view is None:
            return None
        src = view.source
        if p.specs[src][:2] != (shape, np.dtype(dtype)) or p.specs[src][2] != strides or flat_views(src) is None \
                or readers.get(v) != [j]:
            return None
        if src in sources:
            if sources[src].kind != "data":
                return None
            members.add(src)
        elif src in maker and isinstance(p.body[maker[src]].op, Op) and not p.body[maker[src]].op.lookup_checks:
            made.add(src)
        else:
            return None
    for name, v in zip(call.op.outputs, call.outputs):
        if name not in partners:
            continue
        if v in written or v in set(result_values(p.result)):
            return None
        for k in readers.get(v, ()):
            item = p.body[k]
            if not (isinstance(item, View) and item.shape == shape and item.offset == 0 and
                    item.strides == strides and not item.upload):
                return None
            back.append(k)
    return Group(tuple(sorted(members)), tuple(sorted(made)), tuple(back))


def move(p: Program, g: Group, perm: tuple[int, ...]) -> Program:
    """``p`` with every value of group ``g`` in physical axis order ``perm``."""
    specs, body = list(p.specs), list(p.body)

    def moved(v: int) -> tuple:
        shape, dtype, _ = specs[v]
        return (shape, dtype, permuted_strides(shape, perm, np.dtype(dtype).itemsize))
    for v in g.sources:
        specs[v] = moved(v)
    for v in g.made:
        k = next(k for k, item in enumerate(body) if isinstance(item, Call) and v in item.outputs)
        call = body[k]
        tensor = call.op.outputs[call.outputs.index(v)]
        records = tuple(r for r in call.op.schedule if not (isinstance(r, Layout) and r.tensor == tensor))
        body[k] = replace(call, op=call.op.with_schedule(records + (Layout(tensor, perm),)))
        specs[v] = moved(v)
    for k in g.views_back:
        view = body[k]
        specs[view.output] = moved(view.output)
        body[k] = replace(view, strides=specs[view.output][2])
    return replace(p, specs=tuple(specs), body=tuple(body))


def moved_specs(p: Program) -> dict[int, tuple]:
    """State index -> the spec its data has in the program, for the state tensors whose layout the
    program moved (their traced spec is in ``p.guards``)."""
    traced = {k: data for k, data, _, _ in p.guards}
    return {s.index: p.specs[v] for v, s in p.sources if s.kind == "data" and p.specs[v] != traced.get(s.index)}


def relay_state(p: Program, moved: dict[int, tuple]) -> None:
    """Put each moved state tensor (``moved_specs``) in the layout the program expects of it: a copy
    at the first replay after the move; later replays find the layout the step wrote back."""
    for k, want in moved.items():
        t = p.state[k]
        a = t.data
        if not isinstance(a, np.ndarray) or spec_of(a) == want:
            continue
        shape, dtype, strides = want
        order = sorted(range(len(shape)), key=lambda ax: -strides[ax])
        out = np.empty(tuple(shape[ax] for ax in order), dtype).transpose(np.argsort(order))
        out[...] = a
        t.data = out


def choose_state_layouts(p: Program, runs: tuple, resolve, key: str) -> tuple[Program, tuple]:
    """Each parameter a kernel copies into another axis order on every call (``runs``: the resolved
    body, one per item) moved to that order with its whole update group, when that pays (``_pays``);
    the program and its runs. The choice is stored on disk under ``key``, so a new process does not
    time it again."""
    sources = {v for v, s in p.sources if s.kind == "data"}
    wanted: dict[int, tuple[int, ...]] = {}
    for k, (r, release) in enumerate(runs):
        if release is not None or not r.kernel.relayout:
            continue
        for pos, perm, pad, blocks in r.kernel.relayout:
            v = r.inputs[pos]
            if v in sources and not pad and not blocks and tuple(perm) != tuple(range(len(perm))):
                wanted.setdefault(v, tuple(perm))
    moves = [(g, perm, _describe(p, v, perm)) for v, perm in wanted.items() for g in [group(p, v)] if g is not None]
    if not moves:
        return p, runs
    stored = objects.read_manifest(key, "state-layouts")
    if stored is not None and isinstance(stored.get("moves"), list):
        keep = [m for m in moves if m[2] in stored["moves"]]
    else:
        compile_kernels(*(move(p, g, perm) for g, perm, _ in moves))  # (all moves' kernels on all cores at once)
        keep = [m for m in moves if _pays(p, runs, resolve, *m[:2])]
        objects.write_manifest(key, {"moves": sorted(m[2] for m in keep)}, "state-layouts")
    if not keep:
        return p, runs
    for g, perm, _ in keep:
        p = move(p, g, perm)
    return p, resolve(p)


def _pays(p: Program, runs: tuple, resolve, g: Group, perm: tuple[int, ...]) -> bool:
    """Whether moving group ``g`` pays: the calls that read or make its values run at least 5% faster
    (timed alone, on inputs of their specs) and the whole step is not slower (``refuted``). (Moving
    CapsNet-small's primary-capsule weights saved its gradient's copy but made the forward
    convolution, compiled for the new strides, 2.3x slower; its digit capsules' weights gained 0.2
    ms of the 19 ms step: too little for the whole-step check alone to tell from noise.)"""
    moved = move(p, g, perm)
    moved_runs = resolve(moved)
    values = set(g.sources) | set(g.made) | {p.body[k].output for k in g.views_back}
    ks = sorted({k for v in values for k in touching(p, v)})
    return seconds(moved, moved_runs, ks) < 0.95 * seconds(p, runs, ks) and not refuted(p, runs, moved, moved_runs)


def _describe(p: Program, v: int, perm: tuple[int, ...]) -> str:
    """A parameter's move in words that do not depend on value numbers: its spec, its first reader, the order."""
    reader = next(c for c in p.body if isinstance(c, Call) and v in c.inputs)
    return f"{p.specs[v][0]} {p.specs[v][1]} read by {reader.op.source} at {reader.inputs.index(v)} -> {perm}"


def effective_copies(p: Program, runs: tuple) -> int:
    """The relayout copies the step's kernels make per call: each input a kernel's schedule lays out
    in another order or with padding, unless the value is already stored so."""
    count = 0
    for r, release in runs:
        if release is not None:
            continue
        for pos, perm, pad, blocks in r.kernel.relayout:
            shape, dtype, strides = p.specs[r.inputs[pos]]
            count += bool(pad or blocks or strides != permuted_strides(shape, perm, np.dtype(dtype).itemsize))
    return count
