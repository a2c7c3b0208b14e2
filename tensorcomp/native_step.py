"""A compiled step's replay as one native call: every stage of every kernel, in order, from one function.

``step.py`` replays a program with a Python loop over its calls: per call, output arrays made, inputs
relaid, the kernel's stages run (``runtime.kernel.run``). Once every kernel has run (its parallel
stages decided, ``runtime.threads``), ``build`` turns the resolved program into one LLVM function,
``tc_step_<hash>(slots, table)``:

- **memory planned once**: every value the step makes and does not hand on, every kernel's
  temporaries and every relaid input gets a fixed place in one arena, reused by liveness (first fit,
  64-byte aligned: a value's place is free again after its last reader, or after the last reader of
  any view of it); ``peak_bytes`` is the arena's size. Values handed on (written back to state,
  returned, or viewed by those) are new arrays per call: the caller may keep them.
- **stages called directly**: a serial stage is a call of its entry on arena addresses or ones read
  from ``slots`` (the step's inputs and handed-on values, filled per call); a parallel one is a job
  on the native worker pool (``runtime.pool``) when its first runs decided so; a relaid input goes
  through a copy loop; a view is its source's address plus an offset.
- **no address in the code**: entries, the arena, the pool and the parallel decisions are read from
  a table passed with each call, so one program gives the same IR in every process, and its object
  code is cached on disk like a kernel's (a new process builds the call in milliseconds).

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

    fn: Any  # ctypes: void (int64 *slots, int64 *table)
    table: np.ndarray  # the addresses the step function calls and touches (see ``_Emitter``)
    slots: np.ndarray  # per value: its address (filled per call for inputs and handed-on values)
    inputs: tuple[int, ...]  # values read from the environment each call
    # handed-on values: (value, C-order shape of its array, dtype, axis order viewing it as the value or None)
    fresh: tuple[tuple[int, tuple, np.dtype, tuple | None], ...]
    # views the caller sees, in program order: (view, the handed-on value under it or None, byte offset in it)
    views: tuple[tuple[View, int | None, int], ...]
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
                slots[v] = _address(env[v])
            dense = {}
            for v, phys, dtype, back in self.fresh:  # (each its own array: the caller may keep any of them)
                a = dense[v] = np.empty(phys, dtype)
                env[v] = a if back is None else a.transpose(back)
                slots[v] = _address(a)
            for view, root, offset in self.views:
                env[view.output] = view_of(env[view.source], view) if root is None else \
                    np.ndarray(view.shape, view.dtype, dense[root], offset, view.strides)
            for op, arrays in self.checks:
                op.check_lookups([env[a] if isinstance(a, int) else a for a in arrays])
            self.pool.poke()
            self.fn(slots.ctypes.data, self.table.ctypes.data)


def _address(a: np.ndarray) -> int:
    """The data address of a numpy array: read from the array object where ``jit.ARRAY_DATA_OFFSET`` says
    it is (0.15 us against ~1 us for ``__array_interface__``, ~80 times per LeNet step)."""
    if jit.ARRAY_DATA_OFFSET is not None and type(a) is np.ndarray:
        return ctypes.c_void_p.from_address(id(a) + jit.ARRAY_DATA_OFFSET).value or 0
    return a.__array_interface__["data"][0]


def _dense(shape: tuple, strides: tuple) -> tuple[tuple, tuple | None]:
    """The C-order shape of a dense array of these strides, and the axis order that views it as the
    logical array (None: it is the logical array)."""
    order = sorted(range(len(shape)), key=lambda a: -strides[a])
    if order == list(range(len(shape))):
        return tuple(shape), None
    return tuple(shape[a] for a in order), tuple(int(a) for a in np.argsort(order))


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
    """The step function's LLVM IR: one straight line of stage calls, jobs, copies and views. It holds
    no address: everything it calls or touches (kernel entries, the arena, the pool) is read from the
    table passed with each call, so the same program gives the same IR in every process and its object
    code is cached on disk like a kernel's."""

    def __init__(self, arena: int, workers: Any) -> None:
        self.workers = workers
        self.table: list[int] = []
        self.index: dict[int, str] = {}
        self.entry: list[str] = []
        self.body: list[str] = []
        self.offsets: dict[int, str] = {}
        self.ptr: dict[int, str] = {}
        self.views: dict[int, View] = {}
        self.copies = self.stages = self.jobs = 0
        self.arena = self.address(arena)

    def address(self, address: int) -> str:
        """An SSA value holding ``address``: loaded once from the table."""
        if address not in self.index:
            k = len(self.table)
            self.table.append(address)
            self.entry.append(f"  %tp{k} = getelementptr i64, ptr %table, i64 {k}\n  %t{k} = load ptr, ptr %tp{k}")
            self.index[address] = f"%t{k}"
        return self.index[address]

    def at(self, off: int) -> str:
        if off not in self.offsets:
            self.entry.append(f"  %o{off} = getelementptr i8, ptr {self.arena}, i64 {off}")
            self.offsets[off] = f"%o{off}"
        return self.offsets[off]

    def slot(self, v: int) -> None:
        self.entry.append(f"  %sp{v} = getelementptr i64, ptr %slots, i64 {v}\n  %s{v} = load ptr, ptr %sp{v}")
        self.ptr[v] = f"%s{v}"

    def view(self, v: View) -> None:
        """View ``v``: its address, computed where a call first reads it (the views a program ends
        with, of the state it writes back, come in no fixed order: emitted unread, they would make
        the IR differ between processes)."""
        self.views[v.output] = v

    def value(self, v: int) -> str:
        """The address of value ``v``."""
        if v not in self.ptr:
            view = self.views[v]
            source = self.value(view.source)
            self.body.append(f"  %w{v} = getelementptr i8, ptr {source}, i64 {view.offset}")
            self.ptr[v] = f"%w{v}"
        return self.ptr[v]

    def copy(self, v: int, off: int, phys: tuple, src: tuple, dst: tuple, itemsize: int) -> str:
        """Value ``v`` copied to arena offset ``off`` by a copy loop (its own module, named after what it
        copies: cached on disk like a kernel); returns the copy's address."""
        name = "tc_copy_" + objects.hash_parts((repr((phys, src, dst, itemsize)),))[:24]
        fn = self.address(jit.compile_module(_copy_ir(name, phys, src, dst, itemsize), (name,))[name])
        self.copies += 1
        self.body.append(f"  call void {fn}(ptr {self.at(off)}, ptr {self.value(v)})")
        return self.at(off)

    def stage(self, label: str, fn: Any, args: list[str], lo: int, hi: int, scalars: tuple, count: int | None) -> bool:
        """A stage entry over [lo, hi): called; or, where ``count`` is not None (a stage that may run on
        the threads), a job of ``count`` slices for the workers when ``count`` > 1. The count is read
        from the table (it comes from timing, which differs between processes; the IR must not)."""
        found = pool.native(fn)
        if found is None:
            return False
        entry, tramp = (self.address(a) for a in found)
        types = type(fn)._argtypes_[len(args) + 2:]  # noqa: SLF001 - the entry's scalar types
        self.stages += 1
        vals = [f"ptr {a}" for a in args] + [f"i64 {lo}", f"i64 {hi}"] + [_word(s, t) for s, t in zip(scalars, types)]
        if count is None:
            self.body.append(f"  call void {entry}({', '.join(vals)})")
            return True
        self.jobs += count > 1
        k = len(self.table)
        self.table.append(count)
        b, s, n = f"%b{label}", f"%c{label}", f"%n{label}"
        self.entry.append(f"  {b} = alloca [{max(len(args), 1)} x ptr], align 8\n"
                          f"  {s} = alloca [{max(len(types), 1)} x i64], align 8\n"
                          f"  %np{label} = getelementptr i64, ptr %table, i64 {k}\n  {n} = load i64, ptr %np{label}")
        run, at = self.address(self.workers.run_address), self.address(self.workers.address)
        self.body.append(f"  %par{label} = icmp ugt i64 {n}, 1\n"
                         f"  br i1 %par{label}, label %job{label}, label %call{label}\ncall{label}:\n"
                         f"  call void {entry}({', '.join(vals)})\n  br label %next{label}\njob{label}:")
        for i, a in enumerate(args):
            self.body.append(f"  {b}p{i} = getelementptr ptr, ptr {b}, i64 {i}\n  store ptr {a}, ptr {b}p{i}")
        for i, bits in enumerate(pool.scalar_words(scalars[:len(types)])):
            self.body.append(f"  {s}p{i} = getelementptr i64, ptr {s}, i64 {i}\n  store i64 {bits}, ptr {s}p{i}")
        self.body.append(f"  call void {run}(ptr {at}, ptr {tramp}, ptr {entry}, ptr {b}, i64 {lo}, i64 {hi}, "
                         f"ptr {s}, i64 {n})\n  br label %next{label}\nnext{label}:")
        return True

    def clock(self, address: int) -> None:
        """Store the monotonic clock (ns) at ``address`` here (a profiling build)."""
        n = len(self.body)
        now, at = self.address(pool.clock_address()), self.address(address)
        self.body.append(f"  %clk{n} = call i64 {now}()\n  store i64 %clk{n}, ptr {at}")

    def compile(self) -> tuple[Any, np.ndarray]:
        """The step function (``void (int64 *slots, int64 *table)``) and its table."""
        body = "\n".join([*self.entry, *self.body, "  ret void", "}"]) + "\n"
        name = "tc_step_" + objects.hash_parts((body,))[:24]
        text = f"define void @{name}(ptr %slots, ptr %table) {{\n" + body
        address = jit.compile_module(text, (name,), optimized=False)[name]
        return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(address), np.array(self.table, np.int64)


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
    code = _Emitter(memory.__array_interface__["data"][0], workers)
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
        args = [code.value(v) if copy is None else code.copy(v, *copy) for v, copy in ins]
        args += [code.value(v) for v in r.outputs] + [code.at(off) for off in temps]
        for j, (fn, take, lo, hi, slices) in enumerate(kernel.stages):
            n = min(kernel.threads, hi - lo) if slices else 1
            parallel = n > 1 and len(kernel.plan) > j and kernel.plan[j] is True  # (decided by earlier runs)
            if not code.stage(f"{k}_{j}", fn, [args[t] for t in take], lo, hi, r.scalars,
                              None if n <= 1 else min(hi - lo, n * slices) if parallel else 1):
                return "a stage entry is not native code"
        if clock is not None:
            code.clock(clock.ctypes.data + 8 * (k + 1))
    fn, table = code.compile()
    for r, release in runs:  # the arena holds what the Python replay kept with each kernel: free those
        if release is None:  # (an eager call of the kernel makes them again if it needs them)
            r.kernel.spare.clear()
            r.kernel.spare_relaid.clear()
    fresh = tuple((v, *_dense(tuple(p.specs[v][0]), strides[v])[:1], np.dtype(p.specs[v][1]),
                   _dense(tuple(p.specs[v][0]), strides[v])[1]) for v in sorted(lives.handed))
    offsets: dict[int, int] = {}  # a view of a handed-on value -> its offset in that value's array
    views = []
    for view in shown:
        root = lives.root.get(view.output)
        if root in lives.handed:
            offsets[view.output] = offsets.get(view.source, 0) + view.offset
            views.append((view, root, offsets[view.output]))
        else:
            views.append((view, None, 0))
    return NativeStep(fn, table, np.zeros(len(p.specs), np.int64), tuple(sorted(lives.sources)), fresh, tuple(views),
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
