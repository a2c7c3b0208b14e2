"""Remembered agreement: what the cache keeps of traced programs so a new process compiles sooner.

``tensorcomp.step`` compiles a program once two traces of it agree (``check_agree``: the same calls,
scalars and constants on two calls: the step computes nothing in Python that a replay could not
repeat). The
agreement is stored on disk under the program's :func:`trace_key`: a new process whose first (dry)
trace of a step is a program that agreed before compiles it at once, so its first call already runs
compiled. Two traces are compared only when they ran under the same guards (``same_guards``); where
one ran with a gradient None and the other with it set, and neither read it, the step is known to
ignore it (``ignored_grads``, stored with the agreement): otherwise a program that did not read a
gradient because it was None replays only while it is None (a step accumulating gradients reads it).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .errors import TraceError
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
    guards = sorted(repr(g[1:]) for g in p.guards) + sorted(f"{type(o).__name__}.{n}={v!r}" for o, n, v in p.flags)
    result = repr(rename_result(p.result, {v: spec[v] for v in range(len(spec))}))
    return objects.hash_parts(("trace", p.name, p.device, result, *calls, *views, *constants, recipes(p), *sources,
                               *writes, *guards, objects.code_fingerprint(), jit.host_target()))


def agreed(p: Program) -> frozenset | None:
    """None unless program ``p`` agreed with its next trace before (in any process, with this code);
    then the state tensors whose gradients the step was seen to ignore, present or not (indices into
    ``p.state``: see ``remember``)."""
    stored = objects.read_manifest(trace_key(p), "agreed")
    if stored is None:
        return None
    ignored = stored.get("ignores_grads", [])
    return frozenset(k for k in ignored if isinstance(k, int)) if isinstance(ignored, list) else frozenset()


def remember(p: Program, ignored: frozenset = frozenset()) -> None:
    """Store that program ``p`` agreed with its next trace, and the state tensors whose gradients the
    two traces showed the step ignores (unread both when None and when set: a step that calls
    ``zero_grad()`` before ``backward()``)."""
    objects.write_manifest(trace_key(p), {"agreed": True, "ignores_grads": sorted(ignored)}, "agreed")


def same_guards(a: Program, b: Program, exact: bool = False) -> bool:
    """Whether two traces ran under the same guards (gradients neither reads not compared, unless
    ``exact``: a step that sets them to None before backward runs alike with and without them)."""
    def key(p: Program) -> list:
        return [(p.state[k], d, g if read or exact else None, read) for k, d, g, read in p.guards]
    return key(a) == key(b) and [(id(o), n, v) for o, n, v in a.flags] == [(id(o), n, v) for o, n, v in b.flags]


def ignored_grads(a: Program | None, b: Program) -> frozenset:
    """The state indices whose gradient neither trace read though it was None in one and set in the other."""
    if a is None:
        return frozenset()
    return frozenset(k for (k, _, ga, ra), (_, _, gb, rb) in zip(a.guards, b.guards)
                     if not ra and not rb and (ga is None) != (gb is None))


def _same_array(a: Any, b: Any) -> bool:
    if spec_of(a) != spec_of(b):
        return False
    a, b = (cuda.to_host(x) if cuda.is_device_array(x) else x for x in (a, b))
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def check_agree(a: Program, b: Program) -> None:
    """Raise a TraceError naming the first difference between two traces of one signature."""
    head = f"tc.compile({a.name}): two calls with the same argument shapes ran differently"
    if len(a.body) != len(b.body):
        raise TraceError(f"{head}: {_count(a.body)} then {_count(b.body)}; a compiled step must run the same "
                         f"ops each call (Python control flow that depends on values or on a counter?)")
    for x, y in zip(a.body, b.body):
        if isinstance(x, Call) and isinstance(y, Call) and x.op.ident == y.op.ident:  # (equal ops: one made per call)
            if x.inputs != y.inputs or x.outputs != y.outputs:
                raise TraceError(f"{head}: {x.op.label} read other values the second time")
            for (n, u), (_, w) in zip(x.params, y.params):
                if u != w and not (u != u and w != w):
                    raise TraceError(f"{head}: scalar parameter '{n}' of {x.op.label} was {u!r} then {w!r}; it is "
                                     f"computed in Python from something the trace cannot see. Keep such a "
                                     f"value in a tensor (tc.tensor.keep_state) and compute it with an op")
        elif x != y:
            what = x.op.label if isinstance(x, Call) else "a view"
            raise TraceError(f"{head}: {what} became "
                             f"{y.op.label if isinstance(y, Call) else 'a view'}; a compiled step must run the "
                             f"same ops each call")
    if a.draws != b.draws:
        raise TraceError(f"{head}: they drew other random numbers (tensor.drawn: another recipe, shape or "
                         f"order)")
    if [s for _, s in a.sources] != [s for _, s in b.sources] or a.state != b.state or a.writes != b.writes:
        raise TraceError(f"{head}: they read or wrote other tensors (arguments, parameters or optimizer state)")
    for k, (x, y) in enumerate(zip(a.constants, b.constants)):
        if not _same_array(x, y):
            user = next((c.op.label for c in a.body if isinstance(c, Call) and
                         any(v == _constant_value(a, k) for v in c.inputs)), "an op")
            raise TraceError(f"{head}: an array of shape {x.shape} that {user} reads was not computed by an op "
                             f"and changed between the calls (numpy on a tensor's data, random numbers, a "
                             f"copy?); compute it with ops, pass it as an argument, or make random numbers with "
                             f"tc.tensor.drawn (drawn anew each call)")
    if a.result != b.result:
        raise TraceError(f"{head}: the function returned something else the second time")


def _constant_value(p: Program, k: int) -> int:
    return next(v for v, s in p.sources if s.kind == "constant" and s.index == k)


def _count(body) -> str:
    calls = sum(isinstance(x, Call) for x in body)
    return f"{calls} op call{'s' if calls != 1 else ''}"
