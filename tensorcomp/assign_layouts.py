"""Layouts for a whole step: a value a kernel would copy into another axis order on every call is
written in that order by the call that makes it (a whole-program pass of ``tc.compile``).

Each kernel's schedule may lay an input out in another physical axis order (a ``Layout`` record;
``Kernel.relayout``), copied on each call. Inside a compiled step most such inputs are made by an
earlier call of the same program: a pooling's output read by the next convolution with the batch
innermost, a flattened activation read by a linear layer transposed. ``assign_layouts`` gives the
making call's op that output's layout (``Layout`` on its output: the kernel writes it so) and the
value that spec, so the reading kernel, compiled for the new strides, finds it already in place.

A value is moved only when every call that copies it wants the same order (or the first such
order when they differ: the others keep their copy), it is made by an op with no schedule of its
own, nothing else sees its memory (it is not handed on, written back to state, or viewed), and the
making op can name the output. Whether a move pays is measured, not assumed: writing a pooled
activation batch-innermost made LeNet's pooling 5x slower, and a linear layer compiled for an input
already transposed chose a slower tile than the one it copied into. So ``step`` times the kernels
that make or read each candidate value (``touching``) on inputs of their specs, with and without
the move, and keeps the moves that make them faster.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from .opdef import Op
from .runtime import kernel as cpu_kernel, objects
from .schedule.records import Layout
from .settle import compile_kernels
from .strides import permuted_strides
from .trace import Call, Program, View, view_of


def assign_layouts(p: Program, wanted: dict[int, list[tuple[int, tuple[int, ...]]]], only: set[int] | None = None
                   ) -> tuple[Program, list[int]]:
    """``p`` with values written in the layouts their readers copy them into, and the values moved
    (of ``only``, when given). ``wanted``: body index of a call -> (input position, axis order) of
    each input its kernel copies into another order on every call."""
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
    body, specs, moved = list(p.body), list(p.specs), []
    for v, perm in orders.items():
        k = maker.get(v)
        if k is None or v in kept or v in viewed or (only is not None and v not in only):
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
        moved.append(v)
    return replace(p, body=tuple(body), specs=tuple(specs)), moved


def touching(p: Program, v: int) -> list[int]:
    """Body indices of the calls that make or read value ``v``."""
    return [k for k, item in enumerate(p.body) if isinstance(item, Call) and (v in item.outputs or v in item.inputs)]


def choose_layouts(p: Program, runs: tuple, resolve, key: str) -> tuple[Program, tuple]:
    """``assign_layouts`` on the copies the resolved ``runs`` make (``step``'s, one per body item;
    ``resolve``: a program -> its runs), each move kept where the kernels making and reading the
    value run faster with it (timed on inputs of their specs); the program and its runs. The choice
    is stored on disk under ``key`` (the program's), so a new process does not time it again."""
    wanted = {k: [(pos, perm) for pos, perm, pad, blocks in r.kernel.relayout if not pad and not blocks]
              for k, (r, _) in enumerate(runs) if hasattr(r, "kernel") and r.kernel.relayout}
    moved_all, candidates = assign_layouts(p, wanted)
    if not candidates:
        return p, runs
    names = {v: _describe(p, moved_all, v) for v in candidates}  # (value numbers differ between processes)
    stored = objects.read_manifest(key, "layouts")
    if stored is not None and isinstance(stored.get("moves"), list):
        keep = {v for v in candidates if names[v] in stored["moves"]}
    else:
        keep = set()
        trials = {v: assign_layouts(p, wanted, {v})[0] for v in candidates}
        compile_kernels(*trials.values())  # (the kernels each move needs, on all cores at once)
        for v, one in trials.items():
            ks = touching(p, v)
            if all(runs[k][0].checks is None for k in ks) and \
                    seconds(one, resolve(one), ks) < 0.98 * seconds(p, runs, ks):
                keep.add(v)
        if keep:  # the kernels alone can mislead (other data in cache, a noisy moment): the whole step decides
            moved = assign_layouts(p, wanted, keep)[0]
            moved_runs = resolve(moved)
            if not faster(moved, moved_runs, p, runs):
                keep = set()
        objects.write_manifest(key, {"moves": sorted(names[v] for v in keep)}, "layouts")
    if not keep:
        return p, runs
    moved, _ = assign_layouts(p, wanted, keep)
    return moved, resolve(moved)


def refuted(before: Program, before_runs: tuple, after: Program, after_runs: tuple) -> bool:
    """Whether a change the kernels timed alone favour makes the whole step slower: ``before`` runs at
    least 3% faster than ``after`` twice in a row (one loaded moment on a shared machine does not
    refuse it)."""
    return faster(before, before_runs, after, after_runs) and faster(before, before_runs, after, after_runs)


def faster(a: Program, a_runs: tuple, b: Program, b_runs: tuple, rounds: int = 7) -> bool:
    """Whether program ``a`` runs at least 3% faster than ``b`` (best of ``rounds`` interleaved runs of
    each, every call in order on random inputs of each program's input specs; nothing written back)."""
    inputs = {0: _random_inputs(a), 1: _random_inputs(b)}
    best = {0: float("inf"), 1: float("inf")}
    for _ in range(rounds):
        for side, (p, runs) in enumerate(((a, a_runs), (b, b_runs))):
            t0 = time.perf_counter()
            _run_all(p, runs, inputs[side])
            best[side] = min(best[side], time.perf_counter() - t0)
    return best[0] < 0.97 * best[1]


def _random_inputs(p: Program) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {v: _random(rng, p.specs[v]) for v, _ in p.sources}


def _random(rng, spec) -> np.ndarray:
    """An array of this spec (shape, dtype, byte strides: its axis order) holding random floats or zeros."""
    shape, dtype, strides = spec
    order = sorted(range(len(shape)), key=lambda a: -strides[a])
    physical = tuple(shape[a] for a in order)
    data = rng.standard_normal(physical).astype(dtype) if np.dtype(dtype).kind == "f" else np.zeros(physical, dtype)
    return data.transpose(np.argsort(order)) if order else data


def _run_all(p: Program, runs: tuple, inputs: dict[int, np.ndarray]) -> None:
    env: dict[int, np.ndarray] = dict(inputs)
    for item, (r, release) in zip(p.body, runs):
        if release is None:
            for v, out in zip(r.outputs, cpu_kernel.run(r.kernel, [env[v] for v in r.inputs], r.scalars)):
                env[v] = out
        else:
            env[item.output] = view_of(env[item.source], item)


def _describe(p: Program, moved: Program, v: int) -> str:
    """Value ``v``'s move in words that do not depend on value numbers: its maker and new spec."""
    maker = next(c for c in p.body if isinstance(c, Call) and v in c.outputs)
    return f"{maker.op.source} -> {maker.op.outputs[maker.outputs.index(v)]} {moved.specs[v]}"


def seconds(p: Program, runs: tuple, ks: list[int], repeats: int = 5) -> float:
    """Best-of-``repeats`` seconds of the runs at body indices ``ks`` on random inputs of their specs."""
    rng = np.random.default_rng(0)
    total = 0.0
    for k in ks:
        r = runs[k][0]
        arrays = [_random(rng, p.specs[v]) for v in r.inputs]
        best = float("inf")
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            cpu_kernel.run(r.kernel, list(arrays), r.scalars)
            best = min(best, time.perf_counter() - t0)
        total += best
    return total


_OPS: dict[tuple, Op] = {}  # (op identity, records) -> the op with those records


def _with_layout(op: Op, records: tuple) -> Op:
    key = (op.ident, records)
    if key not in _OPS:
        _OPS[key] = op.with_schedule(records)
    return _OPS[key]
