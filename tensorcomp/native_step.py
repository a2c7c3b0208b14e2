"""A compiled step's replay as one native call: every stage of every kernel, in order, from one function.

``step.py`` replays a program with a Python loop over its calls: per call, output arrays made, inputs
relaid, the kernel's stages run (``runtime.kernel.run``). Once every kernel has run (its parallel
stages decided, ``runtime.threads``), ``build`` turns the resolved program into one LLVM function,
``tc_step(slots)``:

- **memory planned once**: every value the step makes and does not hand on, every kernel's
  temporaries and every relaid input gets a fixed place in one arena, reused by liveness (first fit,
  64-byte aligned: a value's place is free again after its last reader, or after the last reader of
  any view of it); ``peak_bytes`` is the arena's size. Values handed on (written back to state,
  returned, or viewed by those) are new arrays per call: the caller may keep them.
- **stages called directly**: a serial stage is a call of its entry with constant buffer addresses
  (arena values) or ones loaded from ``slots`` (the step's inputs and handed-on values, filled per
  call); a parallel one is a job on the native worker pool (``runtime.pool``); a relaid input is a
  copy loop emitted into the same module; a view is its source's address plus an offset.

Python per call: fill the input slots, make the handed-on arrays, check index tensors the step reads
from its inputs, one ctypes call (which releases the interpreter's lock). What ``build`` cannot run
(blocked relayouts, index tensors the step computes itself, a kernel that is not native CPU code)
leaves the program on the Python replay; ``build`` then returns the reason.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import TraceError
from .runtime import jit, objects, pool
from .runtime import kernel as cpu_kernel
from .runtime.kernel import kept_buffer
from .strides import contiguous, padded_shape, permuted_strides
from .target import num_threads
from .trace import Program, View, view_of

ALIGN = 64


class _Arena:
    """First-fit placement of buffers in one block of memory (offsets, ``ALIGN``-byte aligned)."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
        self.end = 0

    def take(self, nbytes: int) -> int:
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        for k, (off, n) in enumerate(self.free):
            if n >= size:
                self.free[k:k + 1] = [(off + size, n - size)] if n > size else []
                return off
        if self.free and self.free[-1][0] + self.free[-1][1] == self.end:  # grow the last free block
            off = self.free.pop()[0]
            self.end = off + size
            return off
        off, self.end = self.end, self.end + size
        return off

    def give(self, off: int, nbytes: int) -> None:
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        blocks = sorted(self.free + [(off, size)])
        merged: list[tuple[int, int]] = []
        for o, n in blocks:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((o, n))
        self.free = merged


class _Shape:
    """Stands for an array whose shape is all ``Op.check_lookups`` reads of it."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


@dataclass
class NativeStep:
    """One program's replay as one native call (see the module docstring)."""

    fn: Any  # ctypes: void (int64 *slots)
    slots: np.ndarray  # per value: its address (filled per call for inputs and handed-on values)
    inputs: tuple[int, ...]  # values read from the environment each call
    fresh: tuple[tuple[int, tuple, np.dtype, tuple], ...]  # handed-on values: (value, shape, dtype, strides)
    views: tuple[View, ...]  # views the caller sees (of handed-on or input values), in program order
    checks: tuple  # (op, per input of the call: value to check, or a stand-in with its shape)
    arena: np.ndarray
    pool: Any
    stages: int  # stage calls per step
    jobs: int  # of which parallel jobs
    copies: int  # relayout copies per step
    clock: Any = None  # a profiling build's clock readings (see ``build``)

    @property
    def peak_bytes(self) -> int:
        return int(self.arena.nbytes)

    def __call__(self, env: list) -> None:
        """Run the step on ``env`` (every input value filled in); fills in the values handed on. One
        call at a time (its slots and arena are its own): the pool's lock is held throughout."""
        slots = self.slots
        with self.pool.lock:
            for v in self.inputs:
                slots[v] = env[v].__array_interface__["data"][0]
            for v, shape, dtype, strides in self.fresh:
                a = env[v] = _empty(shape, dtype, strides)
                slots[v] = a.__array_interface__["data"][0]
            for view in self.views:
                env[view.output] = view_of(env[view.source], view)
            for op, arrays in self.checks:
                op.check_lookups([env[a] if isinstance(a, int) else a for a in arrays])
            self.pool.poke()
            self.fn(slots.ctypes.data)


def _empty(shape: tuple, dtype: np.dtype, strides: tuple) -> np.ndarray:
    order = sorted(range(len(shape)), key=lambda a: -strides[a])
    phys = np.empty(tuple(shape[a] for a in order), dtype)
    return phys.transpose(np.argsort(order))


def _value_strides(p: Program, runs: tuple) -> dict[int, tuple]:
    """The byte strides every value has at run time: inputs as recorded, call outputs as their kernel
    writes them, views as recorded."""
    out = {v: tuple(p.specs[v][2]) for v, _ in p.sources}
    for r, release in runs:
        if release is not None:
            out[r.output] = tuple(r.strides)
            continue
        for v, (shape, dtype), perm in zip(r.outputs, r.kernel.outputs, r.kernel.out_perms or
                                           [None] * len(r.kernel.outputs)):
            out[v] = contiguous(shape, dtype.itemsize) if perm is None else \
                permuted_strides(shape, perm, dtype.itemsize)
    return out


def _c_order(shape: tuple, strides: tuple, itemsize: int) -> bool:
    """Whether byte ``strides`` lay ``shape`` out in C order without gaps (axes of one element aside)."""
    want = contiguous(shape, itemsize)
    return all(n == 1 or s == w for n, s, w in zip(shape, strides, want))


def _word(value: Any, ctype: type) -> str:
    """A scalar as an LLVM constant of the entry's parameter type (a double by its exact bits)."""
    if ctype is ctypes.c_double:
        return f"double 0x{np.float64(value).view(np.uint64):016X}"
    return f"i64 {int(value)}"


def _bits(value: Any, ctype: type) -> int:
    return int(np.float64(value).view(np.int64)) if ctype is ctypes.c_double else int(value)


def _copy_ir(name: str, shape: tuple, src: tuple, dst: tuple, itemsize: int) -> str:
    """A loop nest copying ``shape`` elements from byte strides ``src`` to byte strides ``dst``."""
    ty, depth = f"i{8 * itemsize}", len(shape)
    out = [f"define void @{name}(ptr %dst, ptr %src) {{", "entry:", "  br label %h0"]
    for d in range(depth):
        out += [f"h{d}:", f"  %i{d} = phi i64 [0, %{'entry' if d == 0 else f'h{d - 1}'}], [%n{d}, %t{d}]"]
        if d + 1 < depth:
            out.append(f"  br label %h{d + 1}")
    for d in range(depth):  # byte offsets, summed over the axes
        prev_s, prev_d = (f"%sa{d - 1}", f"%da{d - 1}") if d else ("0", "0")
        out += [f"  %so{d} = mul i64 %i{d}, {src[d]}", f"  %sa{d} = add i64 {prev_s}, %so{d}",
                f"  %do{d} = mul i64 %i{d}, {dst[d]}", f"  %da{d} = add i64 {prev_d}, %do{d}"]
    out += [f"  %sp = getelementptr i8, ptr %src, i64 %sa{depth - 1}",
            f"  %dp = getelementptr i8, ptr %dst, i64 %da{depth - 1}",
            f"  %x = load {ty}, ptr %sp", f"  store {ty} %x, ptr %dp", f"  br label %t{depth - 1}"]
    for d in reversed(range(depth)):
        after = f"t{d - 1}" if d else "done"
        out += [f"t{d}:", f"  %n{d} = add i64 %i{d}, 1", f"  %c{d} = icmp slt i64 %n{d}, {shape[d]}",
                f"  br i1 %c{d}, label %h{d}, label %{after}"]
    out += ["done:", "  ret void", "}"]
    return "\n".join(out)


_built = [0]


def _nbytes(shape: tuple, dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


@dataclass
class _Lives:
    """Where each value lives: ``root`` (a view -> the value it views, through views), ``sources``
    (the step's inputs), ``handed`` (made by the step and handed on: new arrays per call) and ``end``
    (a value -> the index of the last run reading it or a view of it)."""
    root: dict
    sources: set
    handed: set
    end: dict


def _lives(p: Program, runs: tuple) -> _Lives:
    root: dict[int, int] = {}
    end: dict[int, int] = {}
    for k, (r, release) in enumerate(runs):
        if release is not None:
            root[r.output] = root.get(r.source, r.source)
        for v in (r.inputs if release is None else (r.source,)):
            end[root.get(v, v)] = k
    sources = {v for v, _ in p.sources}
    return _Lives(root, sources, {root.get(v, v) for v in p.kept()} - sources, end)


def _plan_memory(p: Program, runs: tuple, strides: dict, lives: _Lives) -> tuple[dict, dict, int] | str:
    """Arena offsets: ``place`` (value -> offset), per call (its index) ``(kernel inputs, temporaries)``
    — an input relaid is ``(value, (offset, physical shape, source strides, strides, itemsize))`` —,
    and the arena's size; or why the program cannot be planned."""
    specs, arena = p.specs, _Arena()
    place: dict[int, int] = {}
    frees: dict[int, list[int]] = {}  # run index -> arena values whose place is free after it
    calls = {}
    for k, (r, release) in enumerate(runs):
        if release is None:
            kernel = r.kernel
            if not isinstance(kernel, cpu_kernel.Kernel):
                return f"{type(kernel).__name__} is not a CPU kernel"
            ins: list = [(v, None) for v in r.inputs]
            scratch = []
            for pos, perm, pad, blocks in kernel.relayout:
                if blocks:
                    return "a kernel reads an input in a blocked layout (copied by numpy)"
                v = r.inputs[pos]
                shape, dtype = tuple(specs[v][0]), np.dtype(specs[v][1])
                phys = tuple(shape[a] for a in perm)
                src = tuple(strides[v][a] for a in perm)
                if not pad and _c_order(phys, src, dtype.itemsize):
                    continue  # (already in the kernel's layout)
                full = padded_shape(phys, pad)
                scratch.append((arena.take(_nbytes(full, dtype)), _nbytes(full, dtype)))
                ins[pos] = (v, (scratch[-1][0], phys, src, contiguous(full, dtype.itemsize), dtype.itemsize))
            for v, (shape, dtype) in zip(r.outputs, kernel.outputs):
                if v not in lives.handed:
                    place[v] = arena.take(_nbytes(shape, dtype))
                    frees.setdefault(lives.end.get(v, k), []).append(v)
            temps = []
            for shape, dtype in kernel.temporaries:
                scratch.append((arena.take(_nbytes(shape, dtype)), _nbytes(shape, dtype)))
                temps.append(scratch[-1][0])
            for off, n in scratch:
                arena.give(off, n)
            calls[k] = (ins, temps)
        for v in frees.pop(k, ()):
            arena.give(place[v], _nbytes(specs[v][0], specs[v][1]))
    return place, calls, arena.end


def _checks(p: Program, runs: tuple, lives: _Lives) -> tuple | str:
    """(op, its inputs: a value to check, or a stand-in with its shape) per call with index tensors."""
    out = []
    for r, release in runs:
        if release is None and r.checks is not None:
            looked = {c[0] for c in r.checks.lookup_checks}
            if any(lives.root.get(r.inputs[i], r.inputs[i]) not in lives.sources for i in looked):
                return "an index tensor the step computes itself is checked per call"
            out.append((r.checks, tuple(v if i in looked else _Shape(tuple(p.specs[v][0]))
                                        for i, v in enumerate(r.inputs))))
    return tuple(out)


class _Emitter:
    """The step function's LLVM IR: one straight line of stage calls, jobs, copies and views."""

    def __init__(self, name: str, base: int, workers: Any) -> None:
        self.name, self.base, self.workers = name, base, workers
        self.entry: list[str] = []
        self.body: list[str] = []
        self.copies = 0
        self.ptr: dict[int, str] = {}
        self.stages = self.jobs = 0

    def at(self, off: int) -> str:
        return f"inttoptr (i64 {self.base + off} to ptr)"

    def slot(self, v: int) -> None:
        self.entry.append(f"  %sp{v} = getelementptr i64, ptr %slots, i64 {v}\n  %s{v} = load ptr, ptr %sp{v}")
        self.ptr[v] = f"%s{v}"

    def view(self, v: View) -> None:
        self.body.append(f"  %w{v.output} = getelementptr i8, ptr {self.ptr[v.source]}, i64 {v.offset}")
        self.ptr[v.output] = f"%w{v.output}"

    def copy(self, v: int, off: int, phys: tuple, src: tuple, dst: tuple, itemsize: int) -> str:
        """Value ``v`` copied to arena offset ``off`` by a copy loop (its own module, named after what it
        copies: cached on disk like a kernel); returns the copy's address."""
        name = "tc_copy_" + objects.hash_parts((repr((phys, src, dst, itemsize)),))[:24]
        address = jit.compile_module(_copy_ir(name, phys, src, dst, itemsize), (name,))[name]
        self.copies += 1
        self.body.append(f"  call void inttoptr (i64 {address} to ptr)(ptr {self.at(off)}, ptr {self.ptr[v]})")
        return self.at(off)

    def stage(self, label: str, fn: Any, args: list[str], lo: int, hi: int, scalars: tuple, count: int) -> bool:
        """A stage entry over [lo, hi): called, or (``count`` > 1 slices) a job for the workers."""
        found = pool.native(fn)
        if found is None:
            return False
        address, tramp = found
        types = type(fn)._argtypes_[len(args) + 2:]  # noqa: SLF001 - the entry's scalar types
        self.stages += 1
        if count <= 1:
            vals = [f"ptr {a}" for a in args] + [f"i64 {lo}", f"i64 {hi}"] + \
                [_word(s, t) for s, t in zip(scalars, types)]
            self.body.append(f"  call void inttoptr (i64 {address} to ptr)({', '.join(vals)})")
            return True
        self.jobs += 1
        b, s = f"%b{label}", f"%c{label}"
        self.entry.append(f"  {b} = alloca [{max(len(args), 1)} x ptr], align 8\n"
                          f"  {s} = alloca [{max(len(types), 1)} x i64], align 8")
        for i, a in enumerate(args):
            self.body.append(f"  {b}p{i} = getelementptr ptr, ptr {b}, i64 {i}\n  store ptr {a}, ptr {b}p{i}")
        for i, (value, t) in enumerate(zip(scalars, types)):
            self.body.append(f"  {s}p{i} = getelementptr i64, ptr {s}, i64 {i}\n"
                             f"  store i64 {_bits(value, t)}, ptr {s}p{i}")
        self.body.append(f"  call void inttoptr (i64 {self.workers.run_address} to ptr)(ptr inttoptr (i64 "
                         f"{self.workers.address} to ptr), ptr inttoptr (i64 {tramp} to ptr), ptr inttoptr (i64 "
                         f"{address} to ptr), ptr {b}, i64 {lo}, i64 {hi}, ptr {s}, i64 {count})")
        return True

    def clock(self, address: int) -> None:
        """Store the monotonic clock (ns) at ``address`` here (a profiling build)."""
        n = len(self.body)
        self.body.append(f"  %clk{n} = call i64 inttoptr (i64 {pool.clock_address()} to ptr)()\n"
                         f"  store i64 %clk{n}, ptr inttoptr (i64 {address} to ptr)")

    def text(self) -> str:
        return "\n".join([f"define void @{self.name}(ptr %slots) {{", *self.entry, *self.body, "  ret void", "}"]) + "\n"


def build(p: Program, runs: tuple, clock: np.ndarray | None = None) -> NativeStep | str:
    """The program's replay as one native call, or why it stays on the Python replay. ``clock`` (int64,
    one more element than ``runs``): a profiling build, which stores the clock before the first run
    and after each run there."""
    if p.device == "cuda":
        return "a step on the GPU launches its kernels from Python"
    strides = _value_strides(p, runs)
    lives = _lives(p, runs)
    planned = _plan_memory(p, runs, strides, lives)
    checks = _checks(p, runs, lives)
    for failed in (planned, checks):
        if isinstance(failed, str):
            return failed
    place, calls, size = planned
    raw = kept_buffer((max(size, ALIGN) + ALIGN,), np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGN
    memory = raw[start:start + max(size, ALIGN)]
    workers = pool.get(max(num_threads() - 1, 1))
    code = _Emitter(f"tc_step_{_built[0]}", memory.__array_interface__["data"][0], workers)
    _built[0] += 1
    for v in sorted(lives.sources | lives.handed):
        code.slot(v)
    for v, off in place.items():
        code.ptr[v] = code.at(off)
    shown = []  # views the caller sees (of inputs or of values handed on)
    if clock is not None:
        code.clock(clock.ctypes.data)
    for k, (r, release) in enumerate(runs):
        if release is not None:
            code.view(r)
            if lives.root.get(r.output, r.output) in lives.sources | lives.handed:
                shown.append(r)
            if clock is not None:
                code.clock(clock.ctypes.data + 8 * (k + 1))
            continue
        ins, temps = calls[k]
        kernel = r.kernel
        args = [code.ptr[v] if copy is None else code.copy(v, *copy) for v, copy in ins]
        args += [code.ptr[v] for v in r.outputs] + [code.at(off) for off in temps]
        for j, (fn, take, lo, hi, slices) in enumerate(kernel.stages):
            n = min(kernel.threads, hi - lo) if slices else 1
            parallel = n > 1 and len(kernel.plan) > j and kernel.plan[j] is True  # (decided by earlier runs)
            if not code.stage(f"{k}_{j}", fn, [args[t] for t in take], lo, hi, r.scalars,
                              min(hi - lo, n * slices) if parallel else 1):
                return "a stage entry is not native code"
        if clock is not None:
            code.clock(clock.ctypes.data + 8 * (k + 1))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(jit.compile_module(code.text(), (code.name,), cached=False,
                                                                       optimized=False)[code.name])
    fresh = tuple((v, tuple(p.specs[v][0]), np.dtype(p.specs[v][1]), strides[v]) for v in sorted(lives.handed))
    return NativeStep(fn, np.zeros(len(p.specs), np.int64), tuple(sorted(lives.sources)), fresh, tuple(shown),
                      checks, memory, workers, code.stages, code.jobs, code.copies, clock)


def profile(p: Program, runs: tuple, run: Callable[[NativeStep], None], rounds: int) -> np.ndarray:
    """Median milliseconds of each run of the program over ``rounds`` calls of a profiling build
    (``run(native)`` makes one call: fills the inputs, runs it, writes the state back)."""
    clock = np.zeros(len(runs) + 1, np.int64)
    native = build(p, runs, clock)
    if isinstance(native, str):
        raise TraceError(f"this program runs as the Python replay ({native}): no native call to profile")
    times = []
    for _ in range(rounds):
        run(native)
        times.append(np.diff(clock) / 1e6)
    return np.median(times, axis=0)
