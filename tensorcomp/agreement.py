"""Remembered agreement: what the cache keeps of traced programs so a new process compiles sooner.

``tensorcomp.step`` compiles a program once two traces of it agree (the same calls, scalars and
constants on two calls: the step computes nothing in Python that a replay could not repeat). The
agreement is stored on disk under the program's :func:`trace_key`: a new process whose first (dry)
trace of a step is a program that agreed before compiles it at once, so its first call already runs
compiled.
"""

from __future__ import annotations

import hashlib
import numpy as np

from .runtime import cuda, jit, objects
from .trace import Call, Program, View, recipes, rename_result, spec_of


def trace_key(p: Program) -> str:
    """A traced program in words a new process repeats: each call's op, scalars and its values' specs
    in order; the views, sources, writes and guards as sorted specs (state tensors come in no fixed
    order, and value numbers follow them); the result's shape and the constants' bytes. A
    program stored under it agreed with the trace of the next call, in some process, with this code:
    a new process tracing it again compiles its own trace at once instead of tracing a second call,
    as ``check_agree`` would only find the same program (a Python value that changes between calls
    changes the first trace too: another key). Its guards still decide each replay."""
    spec = [repr(x) for x in p.specs]
    calls = [f"{c.op.ident!r} {c.params!r} {[spec[v] for v in c.inputs]} {[spec[v] for v in c.outputs]}"
             for c in p.body if isinstance(c, Call)]
    views = sorted(f"view {spec[c.source]} {c.offset} {spec[c.output]} {c.upload}" for c in p.body
                   if isinstance(c, View))  # (views of state are recorded where first seen: in state order)
    constants = sorted(hashlib.sha256(np.ascontiguousarray(cuda.to_host(a) if cuda.is_device_array(a) else a)
                                      .tobytes()).hexdigest() + repr(spec_of(a)) for a in p.constants)
    sources = sorted(f"{s.kind} {spec[v]}" for v, s in p.sources)
    writes = sorted(f"{attr} {None if v is None else spec[v]}" for _, attr, v in p.writes)
    guards = sorted(repr(g[1:]) for g in p.guards)
    result = repr(rename_result(p.result, {v: spec[v] for v in range(len(spec))}))
    return objects.hash_parts(("trace", p.name, p.device, result, *calls, *views, *constants, recipes(p), *sources,
                               *writes, *guards, objects.code_fingerprint(), jit.host_target()))


def agreed(p: Program) -> bool:
    """Whether program ``p`` agreed with its next trace before (in any process, with this code)."""
    return objects.read_manifest(trace_key(p), "agreed") is not None


def remember(p: Program) -> None:
    """Store that program ``p`` agreed with its next trace."""
    objects.write_manifest(trace_key(p), {"agreed": True}, "agreed")
