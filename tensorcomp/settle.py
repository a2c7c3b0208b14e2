"""Each call's outputs in the layout its kernel writes them in, and the kernels a step needs compiled
on all cores (``tc.compile``, between the whole-program passes and the replay).

``settle_layouts`` plans the calls in order; a kernel not built yet is only planned (its schedule
says where it writes), so that ``compile_kernels`` can then compile all of them at once in worker
processes, one per core (``autotune.precompile``), before ``step`` resolves them from the cache.
After the layout passes, ``drop_same_layout_copies`` removes the calls that copy a value into its
own layout.
"""

from __future__ import annotations

from dataclasses import replace

from . import compiler
from .autotune.precompile import compile_in_workers
from .compiler import ArraySpec
from .runtime import objects
from .schedule.records import Layout
from .strides import contiguous, permuted_strides
from .lang.ir import Access
from .trace import Call, Program, View


def settle_layouts(p: Program) -> Program:
    """``p`` with each call's outputs in the layout its kernel writes them in. The trace recorded the
    layouts the eager kernels wrote; a call the passes gave another op (a forward op returning extra
    values, a fused or merged op) may write another (its own default schedule picks its outputs'
    axis orders), and a reader compiled for the recorded strides would read it wrongly. So the
    calls are planned in order and each output's spec becomes what its kernel writes -- except a
    value that is viewed, handed on or written back to state, whose memory others see as recorded:
    its call is pinned to the recorded layout (a ``Layout`` record on that output)."""
    specs, body = list(p.specs), list(p.body)
    pinned = p.kept() | {item.source for item in p.body if isinstance(item, View)}
    device = on_device(p) if p.device == "cuda" else set()
    for k, item in enumerate(body):
        if not isinstance(item, Call):
            continue
        for _ in range(2):  # (a pinned op is planned once more)
            written = _written(item, [ArraySpec(*specs[v]) for v in item.inputs], any(v in device for v in item.inputs))
            wrong = [(j, v) for j, v in enumerate(item.outputs) if written[j] != tuple(specs[v][2])]
            pins = [(j, v) for j, v in wrong if v in pinned]
            if not pins:
                break
            records = tuple(r for r in item.op.schedule if not (isinstance(r, Layout) and r.tensor in
                                                                  {item.op.outputs[j] for j, _ in pins}))
            item = body[k] = replace(item, op=item.op.with_schedule(records + tuple(
                Layout(item.op.outputs[j], _order(specs[v][2])) for j, v in pins)))
        for j, v in enumerate(item.outputs):
            specs[v] = (specs[v][0], specs[v][1], written[j])
    return replace(p, body=tuple(body), specs=tuple(specs))


def _written(item: Call, specs: list[ArraySpec], gpu: bool) -> list[tuple[int, ...]]:
    """The byte strides of each output of ``item``'s kernel for inputs of these specs."""
    params = dict(item.params)
    kinds = item.op.check_call(tuple(specs), params)
    if gpu:
        shapes, perms = compiler.output_layouts(item.op, specs, kinds, params, "cuda")
    else:  # (a kernel not built yet is only planned: it compiles later, with the others, on all cores)
        shapes, perms = compiler.written_layouts(item.op, specs, kinds, params, item.op._kernel_key(specs, params))
    perms = perms or (None,) * len(shapes)
    return [contiguous(shape, dtype.itemsize) if perm is None else permuted_strides(shape, perm, dtype.itemsize)
            for (shape, dtype), perm in zip(shapes, perms)]


def _order(strides: tuple[int, ...]) -> tuple[int, ...]:
    """The axis order (outermost first) of a dense layout's strides."""
    return tuple(sorted(range(len(strides)), key=lambda a: -abs(strides[a])))


def on_device(p: Program) -> set[int]:
    """The values a replay holds on the GPU: as traced for the inputs; uploads and views of device
    values; the outputs of calls that read one (as eager calls run on the GPU when an input is there)."""
    out = {v for v, _ in p.sources if v in p.on_device}
    for item in p.body:
        if isinstance(item, View):
            if item.upload or item.source in out:
                out.add(item.output)
        elif any(v in out for v in item.inputs):
            out.update(item.outputs)
    return out


def compile_kernels(*programs: Program) -> int:
    """Compile the CPU kernels of the programs' calls that are neither built in this process nor on
    disk, on all cores at once (worker processes write them to the cache, this one compiles those they
    cannot make meanwhile); returns how many the workers built. A kernel they could not build is
    compiled when the step resolves it."""
    todo, seen = [], set()
    devices = [on_device(p) if p.device == "cuda" else set() for p in programs]
    for p, device, item in ((p, device, item) for p, device in zip(programs, devices) for item in p.body):
        if not isinstance(item, Call) or any(v in device for v in item.inputs):
            continue
        specs = [ArraySpec(*p.specs[v]) for v in item.inputs]
        params = dict(item.params)
        if item.op.built_kernel(specs, params) is not None:
            continue
        kinds = item.op.check_call(tuple(specs), params)
        key = compiler.manifest_key(item.op, specs, kinds, params)
        if key is None or key in seen or objects.read_manifest(key) is not None:
            continue
        seen.add(key)
        todo.append((item.op, specs, params))
    return compile_in_workers(todo, lambda op, specs, params: op.kernel_for(specs, params))


def copies(item: Call | View) -> bool:
    """A call of an op that copies its one input: ``O[i0, ...] = A[i0, ...]``."""
    if not isinstance(item, Call) or len(item.inputs) != 1 or len(item.outputs) != 1 or item.op.lookup_checks:
        return False
    statements = item.op.program.statements
    if len(statements) != 1 or statements[0].reduce is not None:
        return False
    st = statements[0]
    return isinstance(st.expr, Access) and st.expr.index == st.index and len({lin.plain_var for lin in st.index}) == \
        len(st.index) and None not in {lin.plain_var for lin in st.index}


def drop_same_layout_copies(p: Program) -> Program:
    """``p`` without the calls that copy a value into an array of its own layout, their readers reading
    the value itself. A traced step copies a gradient numpy cannot flatten in place (an optimizer reads
    it flat); once the layout passes store the copy as its source is stored, the copy changes nothing.
    A copy the step hands on (writes to state, returns) keeps its own memory."""
    kept, alias, body = p.kept(), {}, []
    for item in p.body:
        if isinstance(item, View):
            body.append(replace(item, source=alias.get(item.source, item.source)))
            continue
        item = replace(item, inputs=tuple(alias.get(v, v) for v in item.inputs))
        if copies(item) and item.outputs[0] not in kept and p.specs[item.inputs[0]] == p.specs[item.outputs[0]]:
            alias[item.outputs[0]] = item.inputs[0]
            continue
        body.append(item)
    return replace(p, body=tuple(body)) if alias else p


def copy_calls(p: Program) -> int:
    """The calls that copy a value into another layout (counted with the kernels' relayout copies)."""
    return sum(copies(item) and p.specs[item.inputs[0]][2] != p.specs[item.outputs[0]][2] for item in p.body)
