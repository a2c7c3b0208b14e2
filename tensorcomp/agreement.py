"""Remembered agreement: what the cache keeps of traced programs so a new process compiles sooner.

``tensorcomp.step`` compiles a program once two traces of it agree (the same calls, scalars and
constants on two calls: the step computes nothing in Python that a replay could not repeat). The
agreement is stored on disk under the program's :func:`trace_key`, and the function that made it under
its :func:`hint_key`. A new process calling that function with arguments of those specs traces its
first call dry (``tensorcomp.trace``: the calls are recorded, no kernel runs); when the dry program is
one that agreed before, it is compiled and replayed at once, so the first call already runs compiled
and no eager step is spent on tracing.
"""

from __future__ import annotations

import hashlib
from types import CodeType
from typing import Any, Callable

import numpy as np

from .runtime import cuda, jit, objects
from .trace import Call, Program, View, rename_result, spec_of


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
    return objects.hash_parts(("trace", p.name, p.device, result, *calls, *views, *constants, *sources, *writes,
                               *guards, objects.code_fingerprint(), jit.host_target()))


def hint_key(fn: Callable, name: str, signature: Any) -> str:
    """What a process knows of a step before tracing it: the function's name and code and the
    arguments' specs (``signature``). Stored once a program of it agreed, it has the next process trace
    that function dry; if the dry program is not one that agreed, the call is traced again eagerly
    (its Python runs twice on that call: effects outside tensors happen twice)."""
    code = getattr(fn, "__code__", None)
    return objects.hash_parts(("hint", name, "" if code is None else _code_text(code), repr(signature),
                               objects.code_fingerprint(), jit.host_target()))


def _code_text(code: CodeType) -> str:
    """A function's code in words another process repeats (nested code objects, a comprehension's, by
    their own text rather than their address)."""
    consts = [_code_text(c) if isinstance(c, CodeType) else repr(c) for c in code.co_consts]
    return code.co_code.hex() + repr(consts) + repr(code.co_names)


def agreed(p: Program) -> bool:
    """Whether program ``p`` agreed with its next trace before (in any process, with this code)."""
    return objects.read_manifest(trace_key(p), "agreed") is not None


def remember(p: Program, hint: str) -> None:
    """Store that program ``p`` agreed with its next trace, and that the function under ``hint`` has a
    program that did."""
    objects.write_manifest(trace_key(p), {"agreed": True}, "agreed")
    objects.write_manifest(hint, {"hint": True}, "hint")
