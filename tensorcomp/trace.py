"""Tracing a step: the op calls one run of a Python function makes, recorded as one program.

A traced run records every op call — which values it read, which it wrote and its scalar parameters —
either running the ops (eager: its results are real) or not (dry: ``tensorcomp.step``'s default). Values
are numbered in order of first appearance; each input value says where it comes from on the next call —
an argument, the data or gradient of a state tensor (``tensor.keep_state``: parameters, running
statistics, optimizer state), a constant, or random numbers (``tensor.drawn``) — and each numpy view of
a value (reshape, transpose, ``p.data.reshape(-1)``) is recorded as a view, so it can be remade from the
new value. At the end, the state tensors whose data or gradient the run replaced give the program's
writes, and the function's result its outputs.

``Program`` is frozen; ``tensorcomp.step`` checks two traces against each other, runs the whole-
program passes over it and replays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import opdef
from .autotune.canon import renamed_source
from .errors import TraceError
from .runtime import cuda
from .opdef import Op
from .tensor import Tensor, _DATA_HOOKS, _DRAW_HOOKS, _FLAG_HOOKS, _VALUE_GUARDS, state_tensors


@dataclass(frozen=True)
class Call:
    """An op run on values ``inputs`` (in the op's input order), writing values ``outputs``."""
    op: Op
    params: tuple[tuple[str, Any], ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class View:
    """Value ``output`` is a view of value ``source``: ``offset`` bytes from its first element, with
    this shape and these byte strides; with ``upload``, a copy of host value ``source`` on the device
    (a step on the GPU given numpy data: labels, a batch)."""
    source: int
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: np.dtype
    output: int
    upload: bool = False


@dataclass(frozen=True)
class Source:
    """Where an input value comes from on each call: ``kind`` "argument" (``index``: the position among
    the array arguments), "data" or "grad" (of state tensor ``index``), "constant" (``index`` into
    ``Program.constants``) or "drawn" (random numbers made anew each call: ``Program.draws[index]``)."""
    kind: str
    index: int


Spec = tuple  # (shape, dtype, byte strides) of an array


def spec_of(a: Any) -> Spec:
    if isinstance(a, np.ndarray):
        return (a.shape, a.dtype, a.strides)
    return (tuple(a.shape), np.dtype(a.dtype), tuple(a.strides))  # a device array


def is_array(a: Any) -> bool:
    """A numpy array or a device array (``__cuda_array_interface__``): what a step's values are."""
    return isinstance(a, np.ndarray) or cuda.is_device_array(a)


def blank(spec: Spec) -> np.ndarray:
    """An array of the spec's shape and dtype that takes no memory (for binding, which reads only those)."""
    return np.broadcast_to(np.zeros((), spec[1]), spec[0])


@dataclass(frozen=True)
class Program:
    """One traced run of a step. ``result`` mirrors the function's return value with each array or
    tensor replaced by ``("array"|"tensor", value)``; ``writes`` are (state tensor, "data"|"grad",
    value or None); ``guards`` (state tensor, data spec, grad spec or None, whether the step reads that
    gradient) must hold for a replay (the gradient's only where it is read)."""
    name: str
    specs: tuple[Spec, ...]  # every value's array spec
    sources: tuple[tuple[int, Source], ...]
    constants: tuple[np.ndarray, ...]
    state: tuple[Tensor, ...]
    body: tuple[Call | View, ...]
    writes: tuple[tuple[int, str, int | None], ...]
    result: Any
    guards: tuple[tuple[int, Spec, Spec | None, bool], ...]
    device: str = "cpu"  # "cuda": some values are device arrays (``on_device``)
    on_device: frozenset = frozenset()  # the values that were device arrays in the traced run
    draws: tuple = ()  # (make, args) per "drawn" source: ``tensor.drawn``'s recipe, called each replay
    drawn: tuple = ()  # the arrays the traced run drew (what the traced call itself reads)
    flags: tuple = ()  # (owner, name, value) per module setting the step read (``tensor.read_flag``): guards too

    def kept(self) -> set[int]:
        """The values the step hands on: written back to state or returned."""
        return {v for _, _, v in self.writes if v is not None} | set(result_values(self.result))


def result_values(r: Any):
    """The values in a ``Program.result``."""
    kind, x = r
    if kind in ("tensor", "array"):
        yield x
    elif kind in ("tuple", "list"):
        for y in x:
            yield from result_values(y)
    elif kind == "dict":
        for _, y in x:
            yield from result_values(y)


def rename_result(r: Any, alias: dict[int, int]) -> Any:
    """A ``Program.result`` with each value ``v`` replaced by ``alias.get(v, v)``."""
    kind, x = r
    if kind in ("tensor", "array"):
        return (kind, alias.get(x, x))
    if kind in ("tuple", "list"):
        return (kind, tuple(rename_result(y, alias) for y in x))
    if kind == "dict":
        return (kind, tuple((k, rename_result(y, alias)) for k, y in x))
    return r


def _bounds(a: Any) -> tuple[int, int]:
    """The first byte ``a`` covers and the one past its last."""
    lo = hi = _pointer(a)
    for n, stride in zip(a.shape, a.strides):
        if n == 0:
            return lo, lo
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return lo, hi + np.dtype(a.dtype).itemsize


def owner(a: Any) -> Any:
    """The array whose memory ``a`` views (``a`` itself when it owns it or views a non-array)."""
    while is_array(getattr(a, "base", None)):
        a = a.base
    return a


def _pointer(a: Any) -> int:
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0]
    return a.__cuda_array_interface__["data"][0]


class _Recorder:
    """Records op calls (installed with ``opdef.record_calls``) while the traced function runs."""

    def __init__(self, name: str, arrays: list[np.ndarray]) -> None:
        self.name = name
        self.arrays: list[np.ndarray] = []  # value -> its array in this run (kept alive: ids stay unique)
        self.by_id: dict[int, int] = {}
        self.by_owner: dict[int, list[int]] = {}  # id of the memory's owner -> values in that memory
        self.sources: list[tuple[int, Source]] = []
        self.constants: list[np.ndarray] = []
        self.constant_values: set[int] = set()
        self.recipes: dict[int, tuple] = {}  # id(array) -> (array, make, args): ``tensor.drawn``'s arrays
        # tensors that are not state whose data the run replaced: id -> (tensor, data before; None for
        # one the run made)
        self.loose: dict[int, tuple[Tensor, Any]] = {}
        self.flags: dict[tuple[int, str], tuple] = {}  # (id(owner), name) -> (owner, name, value first read)
        self.draws: list[tuple] = []
        self.drawn: list[np.ndarray] = []
        self.body: list[Call | View] = []
        self.state: list[Tensor] = []
        self.state_index: dict[int, int] = {}
        self.pending: dict[int, tuple[Tensor, str]] = {}  # id(array) -> state tensor, "data"|"grad"
        self.pending_owner: dict[int, list[tuple[Tensor, str]]] = {}
        self.start: dict[int, tuple[Any, Any]] = {}  # id(state tensor) -> its data and grad at the start
        for t in state_tensors():
            self.start[id(t)] = (t, t.data, t.grad)
            for attr, a in (("data", t.data), ("grad", t.grad)):
                if is_array(a):
                    self.pending[id(a)] = (t, attr)
                    self.pending_owner.setdefault(id(owner(a)), []).append((t, attr))
        for k, a in enumerate(arrays):
            if id(a) not in self.by_id:
                self._new(a, Source("argument", k))

    # -- values -------------------------------------------------------------------------------------
    def _new(self, a: np.ndarray, source: Source | None = None) -> int:
        v = len(self.arrays)
        self.arrays.append(a)
        self.by_id[id(a)] = v
        self.by_owner.setdefault(id(owner(a)), []).append(v)
        if source is not None:
            self.sources.append((v, source))
        return v

    def _state_value(self, t: Tensor, attr: str) -> int:
        k = self.state_index.get(id(t))
        if k is None:
            k = self.state_index[id(t)] = len(self.state)
            self.state.append(t)
        _, data, grad = self.start[id(t)]
        return self._new(data if attr == "data" else grad, Source(attr, k))

    def value(self, a: Any) -> int:
        """The value number of array ``a`` (registering it as a view, state or constant if new)."""
        v = self.by_id.get(id(a))
        if v is not None:
            return v
        if id(a) in self.pending:
            return self._state_value(*self.pending.pop(id(a)))
        if not is_array(a):
            a = np.asarray(a)
        mem = owner(a)
        if mem is not a:
            for t, attr in self.pending_owner.pop(id(mem), ()):  # views of state: the state first
                start = self.start[id(t)][1 if attr == "data" else 2]
                if id(start) in self.pending:
                    self._state_value(*self.pending.pop(id(start)))
            lo, hi = _bounds(a)
            for source in self.by_owner.get(id(mem), ()):
                s_lo, s_hi = _bounds(self.arrays[source])
                if s_lo <= lo and hi <= s_hi:
                    v = self._new(a)
                    self.body.append(View(source, _pointer(a) - _pointer(self.arrays[source]), a.shape,
                                          a.strides, a.dtype, v))
                    return v
        if id(a) in self.recipes:  # random numbers: drawn anew by each replay
            _, make, args = self.recipes.pop(id(a))
            self.draws.append((make, args))
            self.drawn.append(a)
            v = self._new(a, Source("drawn", len(self.draws) - 1))
            self.constant_values.add(v)  # (Python may read them: they are not computed by the step)
            return v
        self.constants.append(a)
        v = self._new(a, Source("constant", len(self.constants) - 1))
        self.constant_values.add(v)
        return v

    # -- the hooks ----------------------------------------------------------------------------------
    def assign(self, t: Tensor) -> None:
        """Tensor ``t``'s data is about to be replaced (a state tensor's replacement is a write)."""
        if id(t) not in self.start and id(t) not in self.loose:
            self.loose[id(t)] = (t, t.__dict__.get("data"))

    def flag(self, owner: Any, name: str, value: Any) -> None:
        """Python read setting ``name`` of ``owner`` (a module's training mode): the program is for that value."""
        self.flags.setdefault((id(owner), name), (owner, name, value))

    def draw(self, a: np.ndarray, make: Callable, args: tuple) -> None:
        """``tensor.drawn`` made ``a`` with ``make(*args)``: a "drawn" source if an op reads it."""
        self.recipes[id(a)] = (a, make, args)

    def upload(self, host: np.ndarray, dev: Any) -> None:
        """Host array ``host`` went to the device as ``dev``: a copy each replay."""
        source = self.value(host)
        self.body.append(View(source, 0, tuple(dev.shape), tuple(dev.strides), np.dtype(dev.dtype), self._new(dev),
                              upload=True))

    def record(self, op: Op, arrays: tuple, params: dict, outs: list) -> None:
        inputs = tuple(self.value(a) for a in arrays)
        plain = tuple((k, v.item() if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0)
                       else v) for k, v in params.items())
        self.body.append(Call(op, plain, inputs, tuple(self._new(o) for o in outs)))

    def guard(self, t: Tensor, what: str) -> None:
        """Python is about to read tensor ``t``'s value: refuse when the trace computes it."""
        v = self.by_id.get(id(t.data))
        if (v is not None and v not in self.constant_values) or id(t.data) in self.pending:
            raise TraceError(
                f"tc.compile({self.name}): {what} reads the value of a tensor the step computes; a compiled "
                f"step runs without Python, so it cannot depend on values. Return the tensor from the "
                f"function and read it after the call (loss = step(x, y); loss.item())")

    # -- the end ------------------------------------------------------------------------------------
    def finish(self, result: Any) -> Program:
        for t, before in self.loose.values():
            now = t.__dict__.get("data")
            if before is not None and now is not before and self._computed(now):
                raise TraceError(f"tc.compile({self.name}): the step assigns the data of a tensor of shape "
                                 f"{tuple(before.shape)} that is not state a value ops computed; a compiled step "
                                 f"writes back only state. Make it state: an nn.Parameter, a tensor an optimizer "
                                 f"updates, or tc.tensor.keep_state(tensor) before compiling")
        writes = []
        for t in state_tensors():
            start = self.start.get(id(t))
            if start is None:
                continue
            for attr, before, now in (("data", start[1], t.data), ("grad", start[2], t.grad)):
                if now is before:
                    continue
                if now is not None and id(now) not in self.by_id and not self._is_view(now):
                    raise TraceError(f"tc.compile({self.name}): the step assigns {attr} of a state tensor of shape "
                                     f"{t.shape} an array no op computed; a compiled step can only write values "
                                     f"that ops compute (use ops, or assign outside the step)")
                k = self.state_index.get(id(t))
                if k is None:
                    k = self.state_index[id(t)] = len(self.state)
                    self.state.append(t)
                writes.append((k, attr, None if now is None else self.value(now)))
        guards = []
        read = {src.index for _, src in self.sources if src.kind == "grad"}
        for k, t in enumerate(self.state):
            _, data, grad = self.start[id(t)]
            guards.append((k, spec_of(data), None if grad is None else spec_of(grad), k in read))
        returned = self._result(result)  # (first: a view returned is a value of its own)
        for t in self.state:  # (a parameter frozen later, requires_grad=False: its step computes no gradient)
            self.flag(t, "requires_grad", t.requires_grad)
        on_device = frozenset(v for v, a in enumerate(self.arrays) if cuda.is_device_array(a))
        return Program(self.name, tuple(spec_of(a) for a in self.arrays), tuple(self.sources),
                       tuple(self.constants), tuple(self.state), tuple(self.body), tuple(writes),
                       returned, tuple(guards), "cuda" if on_device else "cpu", on_device,
                       tuple(self.draws), tuple(self.drawn), tuple(self.flags.values()))

    def _computed(self, a: Any) -> bool:
        """Whether array ``a`` is (a view of) a value an op call of the run wrote."""
        if not is_array(a):
            return False
        given = {v for v, _ in self.sources}
        v = self.by_id.get(id(a))
        if v is not None:
            return v not in given
        return any(v not in given for v in self.by_owner.get(id(owner(a)), ()))

    def _is_view(self, a: Any) -> bool:
        return is_array(a) and id(owner(a)) in self.by_owner

    def _result(self, r: Any) -> Any:
        if isinstance(r, Tensor):
            return ("tensor", self.value(r.data))
        if is_array(r):
            return ("array", self.value(r))
        if isinstance(r, (tuple, list)):
            return (type(r).__name__, tuple(self._result(x) for x in r))
        if isinstance(r, dict):
            return ("dict", tuple((k, self._result(x)) for k, x in r.items()))
        if r is None or isinstance(r, (bool, int, float, str)):
            return ("python", r)
        raise TraceError(f"tc.compile({self.name}): the function returned a {type(r).__name__}; a compiled "
                         f"step returns tensors, arrays, numbers, strings, None and tuples, lists and dicts "
                         f"of them")


def trace(fn: Callable, name: str, args: tuple, arrays: list[np.ndarray], dry: bool = False) -> tuple[Any, Program]:
    """Run ``fn(*args)`` eagerly, recording it; ``arrays`` are the array arguments (the data of the
    tensor arguments). Returns fn's result and the program.

    A ``dry`` trace records the same calls without running the CPU kernels (their outputs are zeros:
    Python cannot read values the step computes, so they never steer it) and leaves every state
    tensor's data and gradient as it found them; its result is not the function's. The program
    then has to be run for the call to take effect (``tensorcomp.step`` replays it)."""
    rec = _Recorder(name, arrays)
    _VALUE_GUARDS.append(rec.guard)
    _DRAW_HOOKS.append(rec.draw)
    _DATA_HOOKS.append(rec.assign)
    _FLAG_HOOKS.append(rec.flag)
    opdef.UPLOADS.append(rec.upload)
    try:
        with opdef.record_calls(rec.record, dry):
            result = fn(*args)
        program = rec.finish(result)
    finally:
        _VALUE_GUARDS.remove(rec.guard)
        _DRAW_HOOKS.remove(rec.draw)
        _DATA_HOOKS.remove(rec.assign)
        _FLAG_HOOKS.remove(rec.flag)
        opdef.UPLOADS.remove(rec.upload)
        if dry:
            for t, data, grad in rec.start.values():
                t.data, t.grad = data, grad
            for t, before in rec.loose.values():
                if before is not None:
                    t.data = before
    return result, program


# -- printing and counting -------------------------------------------------------------------------------

def header(c: Call) -> str:
    """A call in one line: outputs <- op (inputs, scalars)."""
    ins = ", ".join(f"{n}=v{v}" for n, v in zip(c.op.inputs, c.inputs))
    outs = ", ".join(f"{n}=v{v}" for n, v in zip(c.op.outputs, c.outputs))
    scalars = "".join(f", {n}={x!r}" for n, x in c.params)
    return f"{outs} <- {c.op.label} ({ins}{scalars})"


def program_source(p: Program) -> str:
    """The program as index expressions: each call's statements with its tensors renamed to values
    (temporaries of a call are ``v<out>_<name>``), views as comments."""
    lines = []
    for item in p.body:
        if isinstance(item, View):
            lines.append(f"# v{item.output} = view of v{item.source} (shape {item.shape}, byte offset "
                         f"{item.offset}, strides {item.strides})")
            continue
        names = {n: f"v{v}" for n, v in zip(item.op.inputs, item.inputs)}
        names.update({n: f"v{v}" for n, v in zip(item.op.outputs, item.outputs)})
        tag = f"v{item.outputs[0]}" if item.outputs else "t"
        names.update({n: f"{tag}_{n}" for n in item.op.program.temporaries})
        lines.append(f"# {header(item)}")
        lines.append(renamed_source(item.op.program, names))
    return "\n".join(lines)


def recipes(p: Program) -> str:
    """How the program's random numbers are drawn (``tensor.drawn``), in words another process repeats."""
    return repr([(f"{make.__module__}.{make.__qualname__}", args) for make, args in p.draws])


def statements(p: Program) -> int:
    """The statements of all the program's calls."""
    return sum(len(c.op.program.statements) for c in p.body if isinstance(c, Call))


def peak_bytes(p: Program) -> int:
    """The most bytes the step's own arrays (call outputs; not inputs, state or constants) hold at
    once when each is released after its last reader."""
    last: dict[int, int] = {}
    for k, item in enumerate(p.body):
        for v in (item.inputs if isinstance(item, Call) else (item.source,)):
            last[v] = k
    keep = p.kept()
    n = len(p.body)
    live, peak = 0, 0
    frees: dict[int, int] = {}
    for k, item in enumerate(p.body):
        if isinstance(item, Call):
            for v in item.outputs:
                shape, dtype, _ = p.specs[v]
                size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                live += size
                end = n if v in keep else last.get(v, k)
                frees[end] = frees.get(end, 0) + size
        peak = max(peak, live)
        live -= frees.pop(k, 0)
    return peak


def view_of(base: np.ndarray, v: View) -> np.ndarray:
    """View ``v`` of array ``base`` (keeping ``base`` alive)."""
    interface = {"data": (base.__array_interface__["data"][0] + v.offset, False), "shape": v.shape,
                 "strides": v.strides, "typestr": v.dtype.str, "version": 3}
    holder = _Holder(interface, base)
    return np.asarray(holder)


class _Holder:
    """Keeps a view's base alive and presents the view's memory to numpy."""

    def __init__(self, interface: dict, base: np.ndarray) -> None:
        self.__array_interface__ = interface
        self.base = base


def rebuild_result(r: Any, env: list) -> Any:
    """A ``Program.result`` with each value taken from ``env``."""
    kind, x = r
    if kind == "tensor":
        return Tensor(env[x])
    if kind == "array":
        return env[x]
    if kind == "tuple":
        return tuple(rebuild_result(y, env) for y in x)
    if kind == "list":
        return [rebuild_result(y, env) for y in x]
    if kind == "dict":
        return {k: rebuild_result(y, env) for k, y in x}
    return x
