"""Kernels that read a value as it is stored instead of copying it (a whole-program pass of
``tc.compile``, after ``assign_layouts`` and ``state_layouts``).

Those two passes remove a relayout copy by moving the value: its producer writes it, or the step
keeps it, in the order its reader wants. Where neither pays (the producer writes the new order
slowly, another reader wants the old one: LeNet's pooled activations, CapsNet-small's primary
capsule weights), the other way round remains: the reader's kernel compiled with a schedule for the
value's layout as stored (``schedule.default.default_schedule(..., as_given=...)``: the default
layout choice with that input left alone, and a ``Layout`` record naming its stored order, so no
copy is made). Its outputs keep the orders the copying kernel wrote them in (the readers after it
are compiled for those). The variant is kept where the reading kernel, copy included, then runs no
slower, timed alone on inputs of its specs, and the whole step is not slower (``refuted``); the
choice is stored on disk with the program's other layout choices.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import compiler
from .assign_layouts import refuted, seconds
from .compiler import ArraySpec
from .opdef import Op
from .runtime import objects
from .schedule.default import default_schedule
from .schedule.records import Layout
from .settle import compile_kernels
from .strides import permuted_strides
from .target import num_threads
from .trace import Call, Program


def copied_inputs(p: Program, r) -> tuple[int, ...]:
    """Positions of the inputs run ``r``'s kernel copies into another layout on each call (their values
    not already stored so)."""
    out = []
    for pos, perm, pad, blocks in r.kernel.relayout:
        shape, dtype, strides = p.specs[r.inputs[pos]]
        if pad or blocks or strides != permuted_strides(shape, perm, np.dtype(dtype).itemsize):
            out.append(pos)
    return tuple(out)


def _order(strides: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(range(len(strides)), key=lambda a: -abs(strides[a])))


def reading_as_given(p: Program, call: Call, kernel, positions: tuple[int, ...]) -> Op | None:
    """``call``'s op with the default schedule for reading its inputs at ``positions`` as stored and
    writing its outputs as ``kernel`` (the copying one) does; None where the op has a schedule of its
    own or a tuned one, or index tensors, or a stored order is not dense."""
    op = call.op
    specs = [ArraySpec(*p.specs[v]) for v in call.inputs]
    params = dict(call.params)
    if not isinstance(op, Op) or op.schedule or op.lookup_checks or compiler.stored_schedule(op, specs, params):
        return None  # (a schedule of its own, or a tuned one, is kept)
    given = []
    for pos in positions:
        shape, dtype, strides = p.specs[call.inputs[pos]]
        order = _order(strides)
        if strides != permuted_strides(shape, order, np.dtype(dtype).itemsize):
            return None  # (a view with gaps: no layout names it)
        given.append(Layout(op.inputs[pos], order))
    names = frozenset(op.inputs[pos] for pos in positions)
    bound = compiler.plan(op, specs, op.check_call(tuple(specs), params), params, "cpu", "fold_elementwise").bound
    outputs = {r.tensor for r in given} | set(op.outputs)
    records = tuple(r for r in default_schedule(bound, op.inputs, specs, num_threads(), names)
                    if not (isinstance(r, Layout) and r.tensor in outputs))
    perms = kernel.out_perms or (None,) * len(op.outputs)
    written = tuple(Layout(name, perm if perm is not None else tuple(range(len(shape))))
                    for name, perm, (shape, _) in zip(op.outputs, perms, kernel.outputs))
    return op.with_schedule(records + tuple(given) + written)


def _writes(kernel) -> tuple:
    """The axis order of each output a kernel writes (C order spelled out)."""
    perms = kernel.out_perms or (None,) * len(kernel.outputs)
    return tuple(tuple(range(len(shape))) if perm is None else tuple(perm)
                 for perm, (shape, _) in zip(perms, kernel.outputs))


def _describe(p: Program, call: Call, positions: tuple[int, ...]) -> str:
    """A reader's choice in words that do not depend on value numbers."""
    return f"{call.op.source} {call.params!r} {[p.specs[v] for v in call.inputs]!r} reads {positions} as stored"


def choose_reader_layouts(p: Program, runs: tuple, resolve, key: str) -> tuple[Program, tuple]:
    """Each call whose kernel copies an input into another layout on every call, run instead by a
    kernel reading it as stored where that is no slower (see the module docstring); the program and
    its runs (``runs``: one per body item; ``resolve``: a program -> its runs)."""
    variants: dict[int, tuple[Op, str]] = {}
    for k, (r, release) in enumerate(runs):
        positions = copied_inputs(p, r) if release is None else ()
        op = reading_as_given(p, p.body[k], r.kernel, positions) if positions else None
        if op is not None:
            variants[k] = (op, _describe(p, p.body[k], positions))
    if not variants:
        return p, runs

    def with_readers(ks) -> Program:
        body = list(p.body)
        for k in ks:
            body[k] = replace(body[k], op=variants[k][0])
        return replace(p, body=tuple(body))
    stored = objects.read_manifest(key, "reader-layouts")
    if stored is not None and isinstance(stored.get("reads"), list):
        keep = [k for k, (_, words) in variants.items() if words in stored["reads"]]
    else:
        trials = {k: with_readers([k]) for k in variants}
        compile_kernels(*trials.values())  # (every variant's kernel, on all cores at once)
        keep = []
        for k, one in trials.items():
            one_runs = resolve(one)
            if not copied_inputs(one, one_runs[k][0]) and _writes(one_runs[k][0].kernel) == _writes(runs[k][0].kernel) \
                    and seconds(one, one_runs, [k]) <= seconds(p, runs, [k]):
                keep.append(k)
        if keep:  # (the kernels alone can mislead: the whole step decides)
            moved = with_readers(keep)
            if refuted(p, runs, moved, resolve(moved)):
                keep = []
        objects.write_manifest(key, {"reads": sorted(variants[k][1] for k in keep)}, "reader-layouts")
    if not keep:
        return p, runs
    moved = with_readers(keep)
    return moved, resolve(moved)
