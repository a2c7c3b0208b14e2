"""A compiled step's program after the whole-program passes, stored on disk under the traced program, so
a new process that traces the same program replays it without running the passes again.

``tc.compile`` turns a traced program into the program it replays: the ``STEP`` passes rebuild ops
(forward values, epilogues, merged optimizer updates), ``settle_layouts`` plans every call to learn
where its kernel writes, and ``assign_layouts``/``choose_state_layouts`` read their measured choices
back from the cache. In a new process with a warm cache that is most of the time before the first
replay (capsnet-em: ~0.15-0.3 s of passes against a ~0.1 s step). The result depends only on the
traced program, the code and what the cache holds, so it is stored, pickled, under the traced
program's exact text (:func:`step_key`: value numbers and state order included, unlike
``agreement.trace_key``, because the stored program refers to values by number), without the
state tensors and constants, which the new trace supplies.

What the cache holds can change under a stored program: tuning may give an op a schedule that writes
its output in another axis order. So a stored program is used only when every kernel looked up for it
writes its outputs in the layouts the program expects (:func:`settled`); otherwise the passes run
again and store a new one. Pickles are read from the cache directory, which also holds the machine
code the kernels run: both are trusted alike, and a file whose checksum fails is removed
(``objects.read_object``).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace

import numpy as np

from .runtime import cuda, jit, objects
from .strides import contiguous, permuted_strides
from .trace import Call, Program, recipes

FORMAT = 1  # part of every key: bump when what a stored step holds changes


def step_key(p: Program) -> str:
    """A traced program exactly as this process numbered it: every call (op, scalars, values), view,
    source, write, guard (``_guards``), the result, the values' specs and the constants' bytes in order."""
    body = [f"{c.op.ident!r} {c.params!r} {c.inputs!r} {c.outputs!r}" if isinstance(c, Call) else repr(c)
            for c in p.body]
    constants = [hashlib.sha256(np.ascontiguousarray(cuda.to_host(a) if cuda.is_device_array(a) else a)
                                .tobytes()).hexdigest() + repr((a.shape, a.dtype.str)) for a in p.constants]
    return objects.hash_parts(("step", str(FORMAT), p.name, p.device, repr(p.specs), repr(p.sources), *body,
                               *constants, recipes(p), repr(p.writes), repr(p.result), repr(_guards(p)),
                               repr([f"{type(o).__name__}.{n}={v!r}" for o, n, v in p.flags]),
                               objects.code_fingerprint(), jit.host_target()))


def _guards(p: Program) -> tuple:
    """The program's guards as its replays check them: a gradient's spec only where the step reads it
    (the two traces that agree may differ there: a gradient set to None before backward exists at the
    second call only)."""
    return tuple((k, data, grad if read else None, read) for k, data, grad, read in p.guards)


def _path(key: str):
    directory = objects.objects_dir()
    return None if directory is None else (directory, directory / f"{key}.step")


def store(traced: Program, compiled: Program) -> bool:
    """Store ``compiled`` (what the passes made of ``traced``); whether it was stored (a CPU program
    whose state and constants are the traced ones, and whose ops pickle)."""
    where = _path(step_key(traced))
    if where is None or compiled.device != "cpu" or compiled.state != traced.state or \
            len(compiled.constants) != len(traced.constants) or \
            any(a is not b for a, b in zip(compiled.constants, traced.constants)):
        return False
    try:
        data = pickle.dumps(replace(compiled, state=(), constants=(), drawn=(), flags=()),
                            protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError):
        return False  # (an op holding something that does not pickle: the passes run in each process)
    objects.write_object(*where, data)
    return True


def load(traced: Program) -> Program | None:
    """The program stored for ``traced`` (its state and constants put back), or None."""
    where = _path(step_key(traced))
    data = None if where is None else objects.read_object(where[1])
    if data is None:
        return None
    try:
        program = pickle.loads(data)  # noqa: S301 - the cache's own file, checksummed (module docstring)
    except Exception:  # noqa: BLE001 - (written by other code: pass again)
        return None
    if not isinstance(program, Program) or program.name != traced.name or _guards(program) != _guards(traced):
        return None
    return replace(program, state=traced.state, constants=traced.constants, guards=traced.guards,
                   draws=traced.draws, drawn=traced.drawn, flags=traced.flags)


def settled(p: Program, runs: tuple) -> bool:
    """Whether every kernel in ``runs`` (one per body item, views with a ``release``) writes its outputs in
    the layouts program ``p`` gives them."""
    for r, release in runs:
        if release is not None:
            continue
        perms = r.kernel.out_perms or (None,) * len(r.kernel.outputs)
        for v, (shape, dtype), perm in zip(r.outputs, r.kernel.outputs, perms):
            size = np.dtype(dtype).itemsize
            strides = contiguous(shape, size) if perm is None else permuted_strides(shape, perm, size)
            if (tuple(shape), np.dtype(dtype), tuple(strides)) != \
                    (tuple(p.specs[v][0]), np.dtype(p.specs[v][1]), tuple(p.specs[v][2])):
                return False
    return True
