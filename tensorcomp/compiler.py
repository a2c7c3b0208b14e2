"""The compiler: an op and one input signature in, a loaded kernel out, as one list of named passes.

Each pass takes a ``Unit`` (the op, the input specs, and what the passes before it made) and
returns a new one; ``PLAN`` ends at the loop nest, ``CPU`` and ``CUDA`` go on to a loaded kernel.

    bind              shapes, dtypes and isl domains of every statement; ranges inferred   domain.bind
    fold_elementwise  temporaries computed elementwise and read once, folded into readers  schedule.inline
    choose_schedule   the op's own records, else the tuned ones stored for this signature
                      (autotune.database), else the default pass's records               schedule.default
                      (on the GPU: the first default candidate whose code fits)          schedule.gpu
    factor            Rfactor records: a reduction cut into pieces on the threads          schedule.rfactor
    block             blocked layouts: a packed axis becomes two loops (v_o, v_i)          schedule.blocking
    lay_out           every buffer's byte strides: as passed, or as a Layout record says   strides
    tile              the default vector tile of each statement without loop records      schedule.default
    lower             isl builds the loop nest under the records (default order for
                      statements without loop records); parallel loops marked                   schedule.lower
    mark_tiles        register tiles in the nest, each with how it stays in registers      schedule.tiles
    generate_llvm     LLVM IR for the nest (one entry per stage, plus whole-kernel entries) codegen.llvm
    compile_llvm      LLVM -O3 for the host CPU, or the object code from the disk cache    runtime.jit
    (CUDA) generate_cuda, build_cuda: CUDA C, nvcc, one prepared function per stage    codegen.cuda, runtime.cuda

``kernel`` adds the kernel caches around the CPU passes: kernels already built in this process, then
a manifest on disk (a new process runs a kernel it has run before without any pass but loading).
``PASS_SECONDS`` accumulates each pass's time in this process (compile-time profiles).
"""

from __future__ import annotations

import contextlib
import ctypes
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from . import codegen
from .autotune import database
from .codegen.cuda import cuda_program
from .domain import Bound
from .errors import ScheduleError, ShapeError
from .runtime import jit
from .runtime import cuda
from .runtime import kernel as cpu_kernel
from .runtime import launch, objects
from .schedule.blocking import apply_blocks
from .schedule import gpu as gpu_schedule
from .schedule.default import default_schedule, default_tiles
from .schedule.inline import inline_elementwise
from .schedule.lower import lower
from .schedule.records import Layout, to_json
from .schedule.rfactor import apply_rfactor
from .schedule.tiles import mark_tiles as find_tiles
from .strides import ITEMSIZE, BufferStrides, contiguous, permuted_strides
from .target import CUDA_SMS, PARALLEL_MIN_POINTS, memory_bytes, num_threads


@dataclass(frozen=True)
class ArraySpec:
    """Shape, dtype and (byte) strides of an array, without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    strides: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @staticmethod
    def of(x: Any) -> "ArraySpec":
        """The spec of an array, an ArraySpec, or a shape tuple (float32, C order)."""
        if isinstance(x, ArraySpec):
            return x
        if isinstance(x, tuple) and all(isinstance(n, (int, np.integer)) for n in x):
            dt = np.dtype("float32")
            return ArraySpec(tuple(int(n) for n in x), dt, contiguous(tuple(x), dt.itemsize))
        a = x if isinstance(x, np.ndarray) else np.asarray(x)
        return ArraySpec(a.shape, a.dtype, a.strides)


@dataclass(frozen=True)
class Unit:
    """One op on one input signature, as it goes through the passes (each returns a new Unit)."""

    op: Any  # the Op: program, options, own schedule, bind_specs(), use_tuned
    specs: tuple[ArraySpec, ...]
    kinds: dict[str, str]  # scalar parameter -> "int" / "float"
    params: dict[str, Any]
    target: str = "cpu"
    bound: Bound | None = None
    schedule: tuple = ()  # the records chosen for the op (own, tuned or default)
    records: tuple = ()  # ... once Rfactor and blocked layouts are applied, and tiles (what lower reads)
    tiles: tuple = ()  # the default tile records the ``tile`` pass added
    strides: dict[str, BufferStrides] = field(default_factory=dict)
    nest: Any = None  # schedule.LoopNest
    code: Any = None  # LLVM IR text, or a codegen.cuda.CudaProgram
    compiled: Any = None  # runtime.jit.Compiled, or a runtime.cuda.Module


def buffers(op, bound: Bound) -> list[str]:
    """The kernel's buffer arguments in order: inputs, outputs, temporaries."""
    return list(op.inputs) + list(op.outputs) + list(bound.program.temporaries)


# -- the passes ---------------------------------------------------------------------------------------
def bind(u: Unit) -> Unit:
    bound = u.op.bind_specs(list(u.specs), u.kinds)
    limit = memory_bytes()
    for info in bound.tensors.values():  # before any allocation: a clear error, not numpy's MemoryError
        if info.role in ("output", "temporary") and limit is not None:
            need = int(np.prod(info.shape, dtype=object)) * np.dtype(info.dtype).itemsize
            if need > limit:
                raise ShapeError(f"{u.op.label}: {info.role} {info.name} of shape {info.shape} ({info.dtype}) would "
                                 f"need {need:,} bytes, more than this machine's {limit:,}; check the shapes and "
                                 f"ranges")
    return replace(u, bound=bound)


def fold_elementwise(u: Unit) -> Unit:
    return replace(u, bound=inline_elementwise(u.bound))


def choose_schedule(u: Unit) -> Unit:
    op = u.op
    if op.schedule:
        schedule = op.schedule
    else:
        schedule = stored_schedule(op, u.specs, u.params, u.target)
        if schedule is None and u.target == "cpu":
            schedule = default_schedule(u.bound, op.inputs, list(u.specs), num_threads())
        elif schedule is None and u.target == "cuda":
            schedule = default_cuda_schedule(u)
    for r in schedule or ():
        if getattr(r, "stmt", None) is not None and r.stmt >= len(u.bound.statements):
            raise ScheduleError(f"{op.label}: {type(r).__name__} names statement {r.stmt}, but the kernel runs "
                                f"{len(u.bound.statements)} (numbered from 0) once temporaries computed "
                                "elementwise and read once are folded into their readers; op.loopnest(...) "
                                "shows them")
    if u.target == "cuda":
        for r in schedule or ():
            if isinstance(r, Layout) and (r.pad or r.blocks):
                raise ScheduleError(f"{op.label}: Layout {'pad' if r.pad else 'blocks'} is built for the CPU only; "
                                    "drop it for target='cuda'")
    return replace(u, schedule=tuple(schedule or ()))


def default_cuda_schedule(u: Unit) -> tuple:
    """The first of ``schedule.gpu``'s default candidates whose code can be generated (its shared
    tiles fit in a block's shared memory); none: the plain mapping, one thread per output element."""
    after = PLAN[[name for name, _ in PLAN].index("choose_schedule") + 1:]
    precision = getattr(u.op, "precision", "fp32")
    for cand, mma in gpu_schedule.default_candidates(u.op.inputs, u.bound, list(u.specs), CUDA_SMS, precision):
        try:
            trial = generate_cuda(run(after, replace(u, schedule=cand)))
            if mma and trial.code.source.count("tc_mma_tf32(") < 2:  # (the prelude defines it)
                continue  # meant for tensor cores, but its tile did not come out in their shape
            return cand
        except ScheduleError:
            continue
    return ()


def factor(u: Unit) -> Unit:
    with labelled(u.op.label):
        bound, records = apply_rfactor(u.bound, u.schedule)
    return replace(u, bound=bound, records=records)


def block(u: Unit) -> Unit:
    with labelled(u.op.label):
        bound, records = apply_blocks(u.bound, u.records)
    return replace(u, bound=bound, records=records)


def lay_out(u: Unit) -> Unit:
    """Byte strides of every buffer: as passed, or as a Layout record lays the tensor out."""
    layouts = {r.tensor: r for r in u.schedule if isinstance(r, Layout)}
    out = {}
    for name in buffers(u.op, u.bound):
        info = u.bound.tensors[name]
        size = ITEMSIZE[info.dtype]
        if name in layouts:
            out[name] = BufferStrides(permuted_strides(info.shape, layouts[name].perm, size, layouts[name].pad), size)
        elif name in u.op.inputs:
            out[name] = BufferStrides(tuple(u.specs[u.op.inputs.index(name)].strides), size)
        else:
            out[name] = BufferStrides(contiguous(info.shape, size), size)
    return replace(u, strides=out)


def tile(u: Unit) -> Unit:
    if u.target != "cpu":
        return u
    records = default_tiles(u.bound, u.records, {t: s.strides for t, s in u.strides.items()})
    return replace(u, records=records, tiles=records[len(u.records):])


def lower_loops(u: Unit) -> Unit:
    with labelled(u.op.label):
        nest = lower(u.bound, u.records, {t: s.strides for t, s in u.strides.items()}, u.target)
    return replace(u, nest=nest)


def mark_tiles(u: Unit) -> Unit:
    return replace(u, nest=find_tiles(u.nest, u.bound, {t: s.strides for t, s in u.strides.items()}, u.target,
                                      getattr(u.op, "precision", "fp32")))


def generate_llvm(u: Unit) -> Unit:
    name = "tc_kernel"  # renamed after a hash of the IR (see runtime.jit.compile_kernel)
    code = codegen.generate(u.nest, u.bound, buffers(u.op, u.bound), u.strides, name, jit.ARRAY_DATA_OFFSET)
    return replace(u, code=code)


def compile_llvm(u: Unit) -> Unit:
    names = buffers(u.op, u.bound)
    compiled = jit.compile_kernel(u.code, "tc_kernel", len(names), _param_types(u),
                                  tuple(len(t) for t in codegen.stage_buffers(u.nest, names)))
    return replace(u, compiled=compiled)


def generate_cuda(u: Unit, name: str = "tc_kernel", aligned: bool = True) -> Unit:
    with labelled(u.op.label):
        program = cuda_program(u.nest, u.bound, buffers(u.op, u.bound), u.strides, name, u.schedule, aligned,
                               getattr(u.op, "precision", "fp32"))
    return replace(u, code=program)


def build_cuda(u: Unit) -> Unit:
    fmt = "P" * len(buffers(u.op, u.bound)) + "".join("d" if u.kinds[p] == "float" else "q" for p in u.op.params)
    return replace(u, compiled=cuda.Module(u.code.source, [launch.name for launch in u.code.launches], fmt))


Pass = tuple[str, Callable[[Unit], Unit]]
PLAN: tuple[Pass, ...] = (
    ("bind", bind),  # shapes, dtypes, isl domains; range inference
    ("fold_elementwise", fold_elementwise),  # elementwise temporaries read once -> into their reader
    ("choose_schedule", choose_schedule),  # own records, else tuned (database), else the default pass
    ("factor", factor),  # Rfactor: reductions cut into pieces reduced on the threads, then combined
    ("block", block),  # blocked layouts: v -> (v_o, v_i) in every reader
    ("lay_out", lay_out),  # byte strides of every buffer under the Layout records
    ("tile", tile),  # the default vector tile of every statement without loop records, as records
    ("lower", lower_loops),  # isl: loop nest under the records; default order; parallel loops
    ("mark_tiles", mark_tiles),  # register tiles found in the nest, how each is kept in registers decided
)
CPU: tuple[Pass, ...] = PLAN + (
    ("generate_llvm", generate_llvm),  # LLVM IR: stage entries, whole-kernel and Python entries
    ("compile_llvm", compile_llvm),  # -O3 for the host CPU (or the object cache) and load
)
CUDA: tuple[Pass, ...] = PLAN + (
    ("generate_cuda", generate_cuda),  # CUDA C: one __global__ function per stage
    ("build_cuda", build_cuda),  # nvcc for the device, one prepared function per launch
)
PASS_SECONDS: dict[str, float] = {}  # pass name -> seconds spent in it by this process


def run(passes: tuple[Pass, ...], unit: Unit, upto: str | None = None) -> Unit:
    """Run ``passes`` on ``unit`` in order (through the one named ``upto``, when given)."""
    for name, fn in passes:
        t0 = time.perf_counter()
        unit = fn(unit)
        PASS_SECONDS[name] = PASS_SECONDS.get(name, 0.0) + time.perf_counter() - t0
        if name == upto:
            break
    return unit


def plan(op, specs, kinds: dict[str, str], params: dict[str, Any], target: str = "cpu", upto: str = "mark_tiles"
         ) -> Unit:
    """The passes up to the loop nest (or ``upto``) for inputs of these specs."""
    return run(PLAN, Unit(op, tuple(specs), kinds, params, target), upto)


@contextlib.contextmanager
def labelled(label: str):
    """Schedule errors found while lowering or generating code, prefixed with the op's label."""
    try:
        yield
    except ScheduleError as e:
        if str(e).startswith(label):
            raise
        raise ScheduleError(f"{label}: {e}") from None


# -- the tuning database ------------------------------------------------------------------------------
def stored_schedule(op, specs, params: dict[str, Any], target: str = "cpu") -> tuple | None:
    """The tuned schedule stored for these inputs, checked against the op (None: none, or unusable)."""
    if not op.use_tuned or op.schedule:
        return None
    try:
        found = database.stored_schedule(op, list(specs), params, target)
        return op.check_schedule(found) if found else None
    except (ScheduleError, ValueError, TypeError, KeyError, AttributeError) as exc:  # a damaged row
        _unusable(op, exc)
        return None


def _unusable(op, exc: Exception) -> None:
    warnings.warn(f"tensorcomp: {op.label}: the tuned schedule stored for these inputs cannot be used ({exc}); "
                  "running the default schedule (tensorcomp cache clear removes stored schedules)",
                  RuntimeWarning, stacklevel=4)


# -- loaded kernels -----------------------------------------------------------------------------------
_KERNELS: dict[tuple, Any] = {}  # shared by equal ops, so re-creating an op does not recompile


def _param_types(u: Unit) -> list:
    return [ctypes.c_double if u.kinds[p] == "float" else ctypes.c_int64 for p in u.op.params]


def _relayouts(op, schedule: tuple, specs: tuple = ()) -> tuple[tuple, tuple]:
    """(inputs copied into a scheduled layout per call -- those not already in it, ``specs`` given --,
    output axis orders) of a schedule."""
    layouts = {r.tensor: r for r in schedule if isinstance(r, Layout)}
    ins = tuple((k, layouts[n].perm, layouts[n].pad, layouts[n].blocks) for k, n in enumerate(op.inputs)
                if n in layouts and not (k < len(specs) and not layouts[n].pad and not layouts[n].blocks and
                                         tuple(specs[k].strides) == permuted_strides(
                                             specs[k].shape, layouts[n].perm, specs[k].dtype.itemsize)))
    outs = tuple(layouts[n].perm if n in layouts else None for n in op.outputs)
    if not ins and not any(p is not None for p in outs):
        return (), ()
    return ins, outs


def _shapes(op, bound: Bound, kinds: dict[str, str]) -> tuple:
    t = bound.tensors
    return (tuple((t[n].shape, np.dtype(t[n].dtype)) for n in op.outputs),
            tuple((t[n].shape, np.dtype(t[n].dtype)) for n in bound.program.temporaries),
            tuple(float if kinds[p] == "float" else int for p in op.params))


def load(u: Unit) -> cpu_kernel.Kernel:
    """The loaded CPU kernel of a unit that went through the ``CPU`` passes."""
    stages = cpu_kernel.stages_of(u.compiled, u.nest, codegen.stage_buffers(u.nest, buffers(u.op, u.bound)))
    points = sum(int(np.prod([hi - lo for _, lo, hi in bs.extents])) for bs in u.bound.statements)
    threads = num_threads() if points >= PARALLEL_MIN_POINTS and any(s for *_, s in stages) else 1
    return cpu_kernel.Kernel(u.bound, u.nest, u.compiled, stages, threads, *_shapes(u.op, u.bound, u.kinds),
                             *_relayouts(u.op, u.schedule, u.specs))


def manifest_key(op, specs, kinds: dict[str, str], params: dict[str, Any]) -> str | None:
    """Key of the kernel manifest for these inputs: the op, the call signature, the thread count and
    the tuned schedule stored for them, if any (None when the disk cache is off)."""
    stored = stored_schedule(op, specs, params)
    sig = [(s.shape, s.strides, s.dtype.str) for s in specs]
    return jit.manifest_key((repr(op.ident), repr(sig), repr(sorted(kinds.items())), str(num_threads()),
                             to_json(stored) if stored else ""))


def kernel(op, specs, kinds: dict[str, str], params: dict[str, Any], key: tuple) -> cpu_kernel.Kernel:
    """The CPU kernel for these inputs: already built in this process (by an equal op), else from a
    manifest on disk, else through the ``CPU`` passes (and a manifest written for the next process)."""
    shared = _KERNELS.get((op.ident, key))
    if shared is not None:
        return shared
    mkey = manifest_key(op, specs, kinds, params)
    found = cpu_kernel.from_manifest(objects.read_manifest(mkey), [kinds[p] for p in op.params]) if mkey else None
    if found is None:
        try:
            u = run(CPU, Unit(op, tuple(specs), kinds, params))
        except ScheduleError as exc:  # a stored schedule that passed the checks but does not lower
            if stored_schedule(op, specs, params) is None:
                raise
            _unusable(op, exc)
            u = run(CPU, Unit(op.with_schedule((), use_tuned=False), tuple(specs), kinds, params))
        found = load(u)
        if mkey:
            objects.write_manifest(mkey, cpu_kernel.to_manifest(found, len(buffers(op, u.bound))))
    if mkey and not found.plan:
        found.plan_key = mkey  # (its plan, once decided, is stored with it)
    _KERNELS[(op.ident, key)] = found
    return found


def has_manifest(op, specs, kinds: dict[str, str], params: dict[str, Any]) -> bool:
    """Whether a manifest for these inputs is on disk (a compile worker built the kernel)."""
    mkey = manifest_key(op, specs, kinds, params)
    return mkey is not None and objects.read_manifest(mkey) is not None


def written_layouts(op, specs, kinds: dict[str, str], params: dict[str, Any], key: tuple) -> tuple:
    """Like ``output_layouts``, for the CPU kernel ``kernel`` would return, without compiling it: from
    the kernel when this process built it, else from its manifest on disk, else planned."""
    built = _KERNELS.get((op.ident, key))
    if built is not None:
        return built.outputs, built.out_perms or (None,) * len(built.outputs)
    mkey = manifest_key(op, specs, kinds, params)
    m = objects.read_manifest(mkey) if mkey else None
    try:
        return (tuple((tuple(shape), np.dtype(dtype)) for shape, dtype in m["outputs"]),
                tuple(None if perm is None else tuple(perm) for perm in m["out_perms"]))
    except (KeyError, TypeError, ValueError):  # (no manifest, or one of another format)
        return output_layouts(op, specs, kinds, params)


def output_layouts(op, specs, kinds: dict[str, str], params: dict[str, Any], target: str = "cpu") -> tuple:
    """((shape, dtype) of each output, its axis order or None for C order) under the schedule the
    compiler picks for inputs of these specs."""
    u = plan(op, specs, kinds, params, target, upto="choose_schedule")
    shapes, _, _ = _shapes(op, u.bound, kinds)
    return shapes, _relayouts(op, u.schedule)[1] or (None,) * len(op.outputs)


def cuda_kernel(op, specs, kinds: dict[str, str], params: dict[str, Any], key: tuple, aligned: bool = True
                ) -> launch.CudaKernel:
    """The CUDA kernel for these inputs (built once per process by equal ops)."""
    shared = _KERNELS.get((op.ident, key))
    if shared is not None:
        return shared
    u = run(PLAN, Unit(op, tuple(specs), kinds, params, "cuda"))
    u = build_cuda(generate_cuda(u, aligned=aligned))
    found = launch.CudaKernel(u.bound, u.nest, u.compiled, u.code.launches, *_shapes(op, u.bound, kinds),
                              *_relayouts(op, u.schedule, u.specs))
    _KERNELS[(op.ident, key)] = found
    return found


@dataclass(frozen=True)
class _Functions:
    """Some of a module's prepared functions: what ``launch.run`` uses of a module."""
    functions: tuple


def cuda_step_kernels(calls: list[tuple]) -> list[launch.CudaKernel]:
    """The CUDA kernels of a whole step (``calls``: (op, specs, kinds, params, whether every input is
    16-byte aligned) per call), compiled as **one module** -- one nvcc run, one load: each call's
    kernel in a C++ namespace of its own, its launches named apart (``tc_s<k>_stage<j>``)."""
    units, parts, names, formats = [], [], [], []
    for k, (op, specs, kinds, params, aligned) in enumerate(calls):
        u = generate_cuda(run(PLAN, Unit(op, tuple(specs), kinds, params, "cuda")), name=f"tc_s{k}",
                          aligned=aligned)
        parts.append(f"namespace tc_s{k} {{\n{u.code.source}}}  // namespace tc_s{k}\n")
        fmt = "P" * len(buffers(op, u.bound)) + "".join("d" if kinds[p] == "float" else "q" for p in op.params)
        names += [launch_.name for launch_ in u.code.launches]
        formats += [fmt] * len(u.code.launches)
        units.append(u)
    module = cuda.Module("\n".join(parts), names, formats)
    kernels, first = [], 0
    for u in units:
        n = len(u.code.launches)
        kernels.append(launch.CudaKernel(u.bound, u.nest, _Functions(tuple(module.functions[first:first + n])),
                                         u.code.launches, *_shapes(u.op, u.bound, u.kinds),
                                         *_relayouts(u.op, u.schedule, u.specs)))
        first += n
    return kernels


def forget(op, key: tuple | None = None) -> None:
    """Drop this process's kernels of ops equal to ``op`` (for the call signature ``key`` only, when
    given), after tuning: the next call picks up the new schedule."""
    for k in [k for k in _KERNELS if k[0] == op.ident and (key is None or k[1] == key)]:
        del _KERNELS[k]
