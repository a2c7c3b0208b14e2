"""``tc.compile(fn)``: a training step traced once per input signature into one program and replayed.

The first call with a new signature traces ``fn`` dry (``tensorcomp.trace``: its op calls recorded,
no kernel run), compiles the recorded kernels on all cores at once and runs the program as traced;
the second traces it again, and the two programs must agree (the same op calls, scalars and
constants: anything else means ``fn`` computes something in Python that a compiled step could not
repeat — an error names it). The program then goes through the whole-program passes (``STEP``) and
runs compiled, on that call and later ones: no tape, no Tensor objects, and one native call for the whole step
(``native_step``) from the second replay — from the first when every kernel's thread plan is known,
stored with its manifest by an earlier process; otherwise the first loops over the kernels in Python;
parameters, gradients and optimizer state are read from their tensors at the start and their new
values written back at the end, so ``step(*args)`` has the effect of ``fn(*args)``.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from . import compiler, step_cache
from .autotune.canon import renamed_source
from .compiler import ArraySpec
from .opdef import Op, device_relayout
from .errors import ArgumentError, TraceError
from .runtime import jit, objects
from .runtime import kernel as cpu_kernel, launch
from .assign_layouts import choose_layouts
from .reader_layouts import choose_reader_layouts
from .epilogues import fuse_epilogues
from .updates import fuse_updates
from .forward_values import keep_forward_values
from .output_gradients import gradients_from_outputs
from .native_step import NativeStep, build as build_native, profile as profile_native
from .settle import compile_kernels, copy_calls, drop_same_layout_copies, on_device, settle_layouts
from .state_layouts import choose_state_layouts, effective_copies, moved_specs, relay_state
from .tensor import Tensor
from .runtime import cuda
from .trace import (Call, Program, View, header, is_array, peak_bytes, program_source, rebuild_result,
                    rename_result, spec_of, statements, trace, view_of)
from .agreement import agreed, check_agree, ignored_grads, remember, same_guards


# -- whole-program passes (each Program -> Program; run in this order) -----------------------------------

def eliminate_dead(p: Program) -> Program:
    """Drop calls and views none of whose outputs reaches a write, the result or a live call."""
    live = p.kept()
    body = []
    for item in reversed(p.body):
        outs = item.outputs if isinstance(item, Call) else (item.output,)
        if not any(v in live for v in outs):
            continue
        body.append(item)
        live.update(item.inputs if isinstance(item, Call) else (item.source,))
    return replace(p, body=tuple(reversed(body)))


def share_common(p: Program) -> Program:
    """Calls of one op with one set of inputs and scalars run once; so do equal views."""
    seen: dict[tuple, tuple[int, ...]] = {}
    alias: dict[int, int] = {}
    body = []
    for item in p.body:
        if isinstance(item, Call):
            item = replace(item, inputs=tuple(alias.get(v, v) for v in item.inputs))
            key = ("call", item.op.ident, item.params, item.inputs)
            outs = item.outputs
        else:
            item = replace(item, source=alias.get(item.source, item.source))
            key = ("view", item.source, item.offset, item.shape, item.strides, item.dtype, item.upload)
            outs = (item.output,)
        first = seen.get(key)
        if first is not None:
            alias.update(zip(outs, first))
            continue
        seen[key] = outs
        body.append(item)
    writes = tuple((k, a, alias.get(v, v) if v is not None else None) for k, a, v in p.writes)
    return replace(p, body=tuple(body), writes=writes, result=rename_result(p.result, alias))


_MERGED: dict[tuple, Op | None] = {}  # (op identity, calls) -> the op run as one of that many calls


def _merged_op(op: Op, n: int) -> Op | None:
    """``op``'s statements ``n`` times, tensors and scalars renamed apart (``X_k``): one op for ``n``
    independent calls, or None when ``op`` cannot be written so (options bound to names, lookups)."""
    key = (op.ident, n)
    if key not in _MERGED:
        merged = None
        if type(op) is Op and not (op.given_ranges or op.pad_widths or op.lookup_checks or op.schedule):
            names = [*op.inputs, *op.outputs, *op.program.temporaries, *op.params]
            texts = [renamed_source(op.program, {t: f"{t}_{k}" for t in names}) for k in range(n)]
            candidate = Op("\n".join(texts), precision=op.precision)
            want_in = tuple(f"{t}_{k}" for k in range(n) for t in op.inputs)
            want_out = tuple(f"{t}_{k}" for k in range(n) for t in op.outputs)
            if candidate.inputs == want_in and candidate.outputs == want_out:
                merged = candidate
        _MERGED[key] = merged
    return _MERGED[key]


def merge_calls(p: Program) -> Program:
    """A run of calls of one op that read none of each other's results (an optimizer's update of each
    parameter) runs as one call of one op, its statements renamed apart; the views between them that
    read none of those results are made first."""
    body, items, k = [], list(p.body), 0
    while k < len(items):
        first = items[k]
        if not isinstance(first, Call):
            body.append(first)
            k += 1
            continue
        group, views, after, made, j = [first], [], [], set(first.outputs), k + 1
        while j < len(items):
            item = items[j]
            if isinstance(item, View):  # views of the group's results wait for the merged call
                (after if item.source in made else views).append(item)
                if item.source in made:
                    made.add(item.output)
            elif isinstance(item, Call) and item.op.ident == first.op.ident and not (set(item.inputs) & made) and \
                    dict(item.params).keys() == dict(first.params).keys():
                group.append(item)
                made.update(item.outputs)
            else:
                break
            j += 1
        merged = _merged_op(first.op, len(group)) if len(group) > 1 else None
        if merged is None:
            body.append(first)
            k += 1
            continue
        params = tuple((f"{n}_{m}", v) for m, c in enumerate(group) for n, v in c.params)
        body.extend(views)
        body.append(Call(merged, params, tuple(v for c in group for v in c.inputs),
                         tuple(v for c in group for v in c.outputs)))
        body.extend(after)
        k = j
    return replace(p, body=tuple(body))


STEP = (
    eliminate_dead,  # calls whose results nothing reads
    share_common,  # one op on the same values twice
    gradients_from_outputs,  # an activation's gradient reads its output, not its input
    keep_forward_values,  # a gradient reads the forward values it would recompute
    fuse_epilogues,  # an elementwise call into the call making its input (an activation into its convolution)
    fuse_updates,  # a parameter's optimizer update into the call writing its gradient
    merge_calls,  # independent calls of one op as one call (each parameter's optimizer update: one kernel)
)


# -- the runner ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Run:
    """A call resolved: its kernel, its scalars cast, the values it reads and writes, and the values
    whose last reader it is (dropped after it, so their memory is reused)."""
    kernel: Any
    scalars: tuple
    checks: Any  # the op, when it has index tensors to check (``Op.check_lookups``) before each run
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    release: tuple[int, ...]


def _resolve(p: Program) -> tuple:
    """The body as runs (kernels looked up once; on the GPU, all of them compiled as one module),
    each value's last use marked."""
    last: dict[int, int] = {}
    for k, item in enumerate(p.body):
        for v in (item.inputs if isinstance(item, Call) else (item.source,)):
            last[v] = k
    keep = p.kept()
    runs = []
    device = on_device(p) if p.device == "cuda" else set()
    kernels = iter(_cuda_kernels(p, device))
    for k, item in enumerate(p.body):
        reads = item.inputs if isinstance(item, Call) else (item.source,)
        release = tuple(v for v in dict.fromkeys(reads) if last.get(v) == k and v not in keep)
        if isinstance(item, View):
            runs.append((item, release))
            continue
        op, params = item.op, dict(item.params)
        if any(v in device for v in item.inputs):
            kernel = next(kernels)
        else:
            kernel = op.kernel_for([ArraySpec(*p.specs[v]) for v in item.inputs], params)
        scalars = tuple(cast(params[n]) for n, cast in zip(op.params, kernel.param_casts))
        runs.append((_Run(kernel, scalars, op if op.lookup_checks else None, item.inputs, item.outputs, release),
                     None))
    return tuple(runs)


def _cuda_kernels(p: Program, device: set[int]) -> list:
    """The CUDA kernel of every call that runs on the GPU, in body order, built as one module
    (``compiler.cuda_step_kernels``). A value is 16-byte aligned (vector loads) unless it is a view
    at an offset that is not: call outputs come from the memory pool, and arguments and state are
    checked at each replay."""
    aligned: dict[int, bool] = {}
    calls = []
    for item in p.body:
        if isinstance(item, View):
            aligned[item.output] = item.upload or (aligned.get(item.source, True) and item.offset % 16 == 0)
            continue
        if not any(v in device for v in item.inputs):
            continue
        specs = [ArraySpec(*p.specs[v]) for v in item.inputs]
        params = dict(item.params)
        calls.append((item.op, specs, item.op.check_call(tuple(specs), params), params,
                      all(aligned.get(v, True) for v in item.inputs)))
    return compiler.cuda_step_kernels(calls) if calls else []


ASSIGN_LAYOUTS = True  # (False: every kernel copies its inputs into its own layouts, for A/B runs)
NATIVE = True  # (False: replays stay in Python, a loop over the calls; for A/B runs)


def _assign_layouts(p: Program, runs: tuple) -> tuple[Program, tuple]:
    """``assign_layouts.choose_layouts`` (CPU programs; ``ASSIGN_LAYOUTS``)."""
    if p.device == "cuda" or not ASSIGN_LAYOUTS:
        return p, runs
    # (its calls described without value numbers, sorted: state tensors come in no fixed order)
    calls = sorted(f"{c.op.ident!r} {c.params!r} {[p.specs[v] for v in (*c.inputs, *c.outputs)]!r}"
                   for c in p.body if isinstance(c, Call))
    key = objects.hash_parts(("layouts", *calls, objects.code_fingerprint(), jit.host_target()))
    p, runs = choose_layouts(p, runs, _resolve, key)
    p, runs = choose_state_layouts(p, runs, _resolve, key)
    return choose_reader_layouts(p, runs, _resolve, key)


@dataclass
class _Entry:
    program: Program  # after the STEP passes
    traced: Program  # as recorded
    runs: tuple
    pass_seconds: dict
    # the replay as one native call (``native_step``), built at the second replay (the first decides
    # which parallel stages go to the threads); a string: why it stays on the Python replay
    native: Any = None
    replays: int = 0
    moved: dict = field(default_factory=dict)  # state index -> its spec, where the program moved it
    # state indices whose gradient the step was seen to ignore both when None and when set
    ignored_grads: frozenset = frozenset()

    def __post_init__(self) -> None:
        self.moved = moved_specs(self.program)


def _as_traced(p: Program) -> _Entry | None:
    """An entry running a traced program as recorded, no pass applied, its kernels compiled first on all
    cores at once: how a dry-traced call takes effect before its program is compiled. None where a
    kernel writes an output elsewhere than the trace planned."""
    compile_kernels(p)
    runs = _resolve(p)
    if not step_cache.settled(p, runs):
        return None
    return _Entry(p, p, runs, {}, native="runs once, as traced")


class CompiledStep:
    """The callable ``tc.compile`` returns (see the module docstring)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        # signature -> first traces waiting for a second, one per set of guards (a step that accumulates
        # gradients over two calls alternates between two programs: each compiles at its second trace)
        self._first: dict[tuple, list[Program]] = {}
        self._entries: dict[tuple, list[_Entry]] = {}
        self.traces = 0  # how many calls were traced
        # how many ran the compiled program (a traced call whose program agreed counts in both)
        self.replays = 0
        functools.update_wrapper(self, fn, updated=())

    # -- calling --------------------------------------------------------------------------------------
    def _arrays(self, args: tuple) -> tuple[list[np.ndarray], tuple]:
        arrays, key = [], []
        for a in args:
            data = a.data if isinstance(a, Tensor) else a
            if is_array(data) and data.size:
                arrays.append(data)
                key.append((type(a).__name__, "cuda" if cuda.is_device_array(data) else "cpu", *spec_of(data)))
            elif isinstance(data, (bool, int, float, str, type(None))):
                key.append(("python", type(data).__name__, data))
            else:
                what = "an empty array" if isinstance(data, np.ndarray) else f"a {type(a).__name__}"
                raise TraceError(f"tc.compile({self.name}): argument {len(key)} is {what}; a compiled step takes "
                                 f"non-empty numpy or device arrays, tc.Tensors and Python scalars")
        return arrays, tuple(key)

    def _positional(self, args: tuple, kwargs: dict) -> tuple:
        """Keyword arguments bound to ``fn``'s parameters, as positional ones (a step is traced and
        keyed by its arguments in order)."""
        try:
            bound = inspect.signature(self.fn).bind(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise TraceError(f"tc.compile({self.name}): {e}") from None
        if bound.kwargs:
            raise TraceError(f"tc.compile({self.name}): keyword-only arguments {sorted(bound.kwargs)}; a compiled "
                             f"step takes arguments it can pass by position")
        return bound.args

    def forget_kernels(self) -> None:
        """Look every call's kernel up again on the next call (after tuning stored new schedules and
        ``Op.forget_kernels`` dropped the old kernels)."""
        for entries in self._entries.values():
            for entry in entries:
                entry.runs, entry.native, entry.replays = (), None, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            args = self._positional(args, kwargs)
        arrays, key = self._arrays(args)
        for entry in self._entries.get(key, ()):
            if _guards_hold(entry.program, entry.moved, entry.ignored_grads):
                if not entry.runs:  # (after tuning: new kernels may write their outputs in other orders)
                    entry.program = settle_layouts(entry.program)
                    compile_kernels(entry.program)
                    entry.runs = _resolve(entry.program)
                self.replays += 1
                return _replay(entry, arrays)
        program = self._dry_trace(args, arrays)
        if program is not None:
            self.traces += 1
            entry = self._agreed_entry(key, program)
            if entry is not None:
                self.replays += 1
                return _replay(entry, arrays, program.drawn)
            as_traced = _as_traced(program)
            if as_traced is not None:
                return _replay(as_traced, arrays, program.drawn)
            self.traces -= 1  # (a kernel writes elsewhere than planned: traced eagerly instead)
            self._first.pop(key, None)
        result, program = trace(self.fn, self.name, args, arrays)
        self.traces += 1
        self._agreed_entry(key, program)
        return result

    def _dry_trace(self, args: tuple, arrays: list) -> Program | None:
        """``fn`` traced dry (its calls recorded, no kernel run nor compiled), or None where that raised
        (the eager trace then raises it again, or runs) or the step reads device values (traced eagerly).
        A ``TraceError`` (what a compiled step cannot do) is raised at once."""
        try:
            _, program = trace(self.fn, self.name, args, arrays, dry=True)
        except TraceError:
            raise
        except Exception:  # noqa: BLE001 - (see above)
            return None
        return program if program.device == "cpu" else None

    def _agreed_entry(self, key: tuple, program: Program) -> _Entry | None:
        """The compiled entry for a traced ``program`` once two traces of ``key`` agree (or this program
        agreed with its next trace before, in any process: ``agreement``); else None, ``program`` kept
        as the first trace to compare the next one with."""
        waiting = self._first.setdefault(key, [])
        first = next((w for w in waiting if same_guards(w, program)), None)
        if first is not None:
            waiting.remove(first)
        known = agreed(program)
        if known is None:
            if first is None:
                waiting[:] = [*waiting[-3:], program]  # (a few variants wait; the oldest goes)
                return None
            try:
                check_agree(first, program)
            except TraceError:
                if same_guards(first, program, exact=True):
                    raise
                waiting.append(program)  # the unread gradients' presence made the difference after all
                return None
        ignored = (known or frozenset()) | ignored_grads(first, program)
        for p in {id(x): x for x in (first, program) if x is not None}.values():
            remember(p, ignored)  # (both: a first trace without gradients agrees with its next one with them)
        entry = self._compile(key, program)
        entry.ignored_grads = ignored
        return entry

    def _compile(self, key: tuple, program: Program) -> _Entry:
        """The whole-program passes over a traced program (or what they made of it before, stored on
        disk: ``step_cache``); the compiled entry replays calls with ``key``."""
        t0 = time.perf_counter()
        after = step_cache.load(program) if program.device == "cpu" else None
        if after is not None:
            runs = _resolve(after)
            if step_cache.settled(after, runs):
                entry = _Entry(after, program, runs, {"stored_step": time.perf_counter() - t0})
                self._entries.setdefault(key, []).append(entry)
                return entry
        seconds, after = {}, program
        for step_pass in STEP:
            t0 = time.perf_counter()
            after = step_pass(after)
            seconds[step_pass.__name__] = time.perf_counter() - t0
        t0 = time.perf_counter()
        after = settle_layouts(after)
        compile_kernels(after)
        runs = _resolve(after)
        seconds["resolve_kernels"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        after, runs = _assign_layouts(after, runs)
        if after.device == "cpu" and (dropped := drop_same_layout_copies(after)) is not after:
            after, runs = dropped, _resolve(dropped)
        seconds["assign_layouts"] = time.perf_counter() - t0
        if step_cache.settled(after, runs):
            step_cache.store(program, after)
        entry = _Entry(after, program, runs, seconds)
        self._entries.setdefault(key, []).append(entry)
        return entry

    # -- introspection --------------------------------------------------------------------------------
    def _entry(self, args: tuple) -> _Entry:
        if args:
            entries = self._entries.get(self._arrays(args)[1])
        else:
            entries = [e for es in self._entries.values() for e in es][-1:]
        if not entries:
            raise TraceError(f"tc.compile({self.name}): no compiled program for "
                             f"{'these arguments' if args else 'any arguments'} yet; a step is compiled on its "
                             f"second call with arguments of one shape (on its first when the cache saw its two "
                             f"calls agree before)")
        return entries[-1]

    @property
    def source(self) -> str:
        """The whole program (of the latest signature compiled) as index expressions, tensors renamed
        apart (``v<k>``: value k; each call's scalars listed in its header)."""
        return program_source(self._entry(()).program)

    def loopnest(self, *args: Any) -> str:
        """Every call's loop nest for these arguments, in program order."""
        entry = self._entry(args)
        out = []
        for item in entry.program.body:
            if isinstance(item, Call):
                specs = [ArraySpec(*entry.program.specs[v]) for v in item.inputs]
                params = dict(item.params)
                unit = compiler.plan(item.op, specs, item.op.check_call(tuple(specs), params), params,
                                     entry.program.device, "mark_tiles")
                out.append(f"# {header(item)}\n{unit.nest}")
        return "\n".join(out)

    def profile(self, *args: Any, rounds: int = 10) -> list[tuple[str, float]]:
        """(call, median milliseconds) for each call of the compiled program for these arguments, in
        program order, timed inside its native call over ``rounds`` calls of the step (which train, as
        calling the step does)."""
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ArgumentError(f"tc.compile({self.name}).profile: rounds must be a positive int (how many calls "
                                f"of the step to time), got {rounds!r}")
        entry, (arrays, _) = self._entry(args), self._arrays(args)

        def run(native: NativeStep) -> None:
            relay_state(entry.program, entry.moved)
            env = _environment(entry.program, arrays)
            native(env)
            _finish(entry.program, env)
        times = profile_native(entry.program, entry.runs, run, rounds)  # (runs: one per body item)
        return [(header(item), float(t)) for item, t in zip(entry.program.body, times) if isinstance(item, Call)]

    def stats(self, *args: Any) -> dict:
        """Counts for the compiled program of these arguments: op calls and statements before and
        after the passes, values, peak bytes of the step's own arrays, relayout copies per step, and
        the passes' seconds."""
        entry = self._entry(args)
        before, after = entry.traced, entry.program
        relayouts = effective_copies(entry.program, entry.runs) + copy_calls(entry.program)
        return {
            "calls_traced": sum(isinstance(x, Call) for x in before.body),
            "calls": sum(isinstance(x, Call) for x in after.body),
            "statements_traced": statements(before), "statements": statements(after),
            "values": len(after.specs), "peak_bytes": peak_bytes(after),
            "relayout_copies": relayouts, "pass_seconds": dict(entry.pass_seconds),
            "dispatch": "one native call" if isinstance(entry.native, NativeStep) else
            f"Python replay ({entry.native or 'not built yet'})",
            **({"native_peak_bytes": entry.native.peak_bytes, "native_stage_calls": entry.native.stages,
                "native_jobs": entry.native.jobs} if isinstance(entry.native, NativeStep) else {}),
        }


def _guards_hold(p: Program, moved: dict[int, tuple], ignored: frozenset = frozenset()) -> bool:
    """Whether the state tensors fit program ``p``: each one's data as traced or, where the program
    moved it (``moved``: ``state_layouts.moved_specs``), as moved; each gradient the step reads, and
    each it did not read because it was None still None (unless ``ignored``: seen ignored when set); each
    module setting the step read (training mode, Dropout's p: ``tensor.read_flag``) as it was."""
    if any(getattr(owner, name) != value for owner, name, value in p.flags):
        return False
    for k, data, grad, read in p.guards:
        t = p.state[k]
        if not is_array(t.data):
            return False
        spec = spec_of(t.data)
        if spec != data and spec != moved.get(k):
            return False
        if read and ((t.grad is None) != (grad is None) or (grad is not None and spec_of(t.grad) != grad)):
            return False
        if not read and grad is None and t.grad is not None and k not in ignored:
            return False  # (unread because it was None: a step that accumulates would read it now)
    return True


def _environment(p: Program, arrays: list, prepare: Callable[[Any], Any] | None = None,
                 drawn: tuple | None = None) -> list:
    """Every value's array slot, the program's inputs filled in (arguments, state, constants, random
    numbers drawn anew, or ``drawn``: those a trace of this call drew; each argument and state array
    passed through ``prepare``, when given)."""
    env: list[Any] = [None] * len(p.specs)
    for v, src in p.sources:
        kind = src.kind
        if kind == "constant":
            env[v] = p.constants[src.index]
            continue
        if kind == "drawn":
            make, args = p.draws[src.index]
            env[v] = make(*args) if drawn is None else drawn[src.index]
            continue
        a = arrays[src.index] if kind == "argument" else getattr(p.state[src.index], kind)
        env[v] = a if prepare is None else prepare(a)
    return env


def _replay(entry: _Entry, arrays: list[np.ndarray], drawn: tuple | None = None) -> Any:
    """Run ``entry``'s program on ``arrays`` (``drawn``: the random numbers of this call's trace, when
    it was traced)."""
    p = entry.program
    if p.device == "cuda":
        return _replay_cuda(entry, arrays, drawn)
    relay_state(p, entry.moved)
    env = _environment(p, arrays, drawn=drawn)
    entry.replays += 1
    if entry.native is None and NATIVE and (entry.replays > 1 or all(
            cpu_kernel.decided(r.kernel) for r, release in entry.runs if release is None)):
        entry.native = build_native(p, entry.runs)
    if isinstance(entry.native, NativeStep):
        entry.native(env)
        return _finish(p, env)
    run = cpu_kernel.run
    for r, release in entry.runs:
        if release is None:
            arrays = [env[v] for v in r.inputs]
            if r.checks is not None:
                r.checks.check_lookups(arrays)
            outs = run(r.kernel, arrays, r.scalars)
            for v, o in zip(r.outputs, outs):
                env[v] = o
            release = r.release
        else:
            env[r.output] = view_of(env[r.source], r)
        for v in release:
            env[v] = None
    return _finish(p, env)


def _finish(p: Program, env: list) -> Any:
    """Write the new state back and build the result."""
    for k, attr, v in p.writes:
        setattr(p.state[k], attr, None if v is None else env[v])
    return rebuild_result(p.result, env)


def _aligned(a: Any) -> Any:
    """A device array on a 16-byte boundary: ``a``, or a copy of it (the step's kernels assume it)."""
    if not cuda.is_device_array(a) or a.__cuda_array_interface__["data"][0] % 16 == 0:
        return a
    return cuda.as_device(cuda.to_host(cuda.as_device(a)))


def _replay_cuda(entry: _Entry, arrays: list, drawn: tuple | None = None) -> Any:
    """``_replay`` on the GPU: launches from one module, in order; host data is uploaded where the
    trace uploaded it."""
    p = entry.program
    env = _environment(p, arrays, _aligned, drawn)
    for r, release in entry.runs:
        if release is None:
            devs = [env[v] for v in r.inputs]
            if r.checks is not None:
                r.checks.check_lookups(devs)
            if isinstance(r.kernel, launch.CudaKernel):
                outs = launch.run(r.kernel, devs, list(r.scalars), device_relayout)
            else:
                outs = cpu_kernel.run(r.kernel, devs, r.scalars)
            for v, o in zip(r.outputs, outs):
                env[v] = o
            release = r.release
        elif r.upload:
            env[r.output] = cuda.as_device(env[r.source])
        else:
            env[r.output] = cuda.view(env[r.source], r.offset, r.shape, r.strides, r.dtype)
        for v in release:
            env[v] = None
    return _finish(p, env)


def compile(fn: Callable) -> CompiledStep:  # noqa: A001 - tc.compile, as torch.compile
    """Compile a step function: ``step = tc.compile(fn)``; ``step(*args)`` has the effect of
    ``fn(*args)``. See the module docstring."""
    if not callable(fn):
        raise TraceError(f"tc.compile expects a function, got {type(fn).__name__}")
    return CompiledStep(fn)
