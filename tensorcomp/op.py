"""``tc.op``: an index-expression op, compiled per input signature and cached."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import codegen
from .codegen.llvm import ITEMSIZE, BufferLayout
from .domain import Bound, bind
from .errors import ArgumentError, DtypeError, ScheduleError, UnknownNameError, op_label
from .lang import parse
from .runtime import Compiled, compile_kernel, jit
from .runtime.jit import ARRAY_DATA_OFFSET
from .runtime.threads import PARALLEL_MIN_POINTS, num_threads, run_stages, slices_per_thread
from .schedule import For, IConst, If, LoopNest, lower
from .schedule.inline import inline_elementwise
from .schedule.blocking import apply_blocks, blocked_shape, check_blocks
from .schedule.rfactor import apply_rfactor, default_rfactor
from .schedule.records import Block, Fuse, Layout, Reorder, Rfactor, Split, Stage, Threads, to_json

_DTYPES = {np.dtype(t).num: t for t in ("float32", "float64", "int32", "int64", "bool")}
_KERNELS: dict[tuple, "Kernel"] = {}  # shared by equal ops, so re-creating an op does not recompile
# while ``autotune.hot.profile()`` is active: (op, input signature) -> [op, inputs, params, seconds, calls]
_PROFILE: dict[tuple, list] | None = None


@dataclass
class Kernel:
    """Everything compiled for one input signature of an op."""

    bound: Bound | None  # None: loaded from a manifest (op.loopnest(...) plans it again)
    nest: LoopNest | None
    compiled: Compiled
    stages: tuple[tuple[Any, int, int, int], ...]  # (entry, lo, hi, slices per thread; 0: serial) per loop nest
    threads: int  # > 1: run through the stages, parallel ones on this many threads
    outputs: tuple[tuple[tuple[int, ...], np.dtype], ...]
    temporaries: tuple[tuple[tuple[int, ...], np.dtype], ...]
    param_casts: tuple[type, ...]
    # (input position, physical axis order, pad, blocks) per input copied into a scheduled layout
    relayout: tuple[tuple[int, tuple[int, ...], int, tuple], ...] = ()
    out_perms: tuple[tuple[int, ...] | None, ...] = ()  # per output: physical axis order, or None (C order)
    # Sets of temporaries (and of buffers for the relaid inputs) from earlier calls, reused: fresh
    # large arrays cost a page fault per 4 KB on first touch every call (matmul 1024² with both inputs
    # relaid: ~1,500 faults, 28 -> 23 ms). A call takes a set off its list and puts it back after.
    spare: list = field(default_factory=list)
    spare_relaid: list = field(default_factory=list)


@dataclass
class CudaKernel:
    """Everything compiled for one input signature of an op on the GPU."""

    bound: Bound
    nest: LoopNest
    module: Any  # runtime.cuda.Module: one prepared function per launch
    launches: tuple  # codegen.cuda.Launch per top-level loop nest
    outputs: tuple[tuple[tuple[int, ...], np.dtype], ...]
    temporaries: tuple[tuple[tuple[int, ...], np.dtype], ...]
    param_casts: tuple[type, ...]
    relayout: tuple[tuple[int, tuple[int, ...]], ...] = ()
    out_perms: tuple[tuple[int, ...] | None, ...] = ()


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
        if isinstance(x, ArraySpec):
            return x
        if isinstance(x, tuple) and all(isinstance(n, (int, np.integer)) for n in x):
            dt = np.dtype("float32")
            return ArraySpec(tuple(int(n) for n in x), dt, codegen.contiguous(tuple(x), dt.itemsize))
        a = x if isinstance(x, np.ndarray) else np.asarray(x)
        return ArraySpec(a.shape, a.dtype, a.strides)


def permuted_strides(shape: tuple[int, ...], perm: tuple[int, ...], itemsize: int, pad: int = 0) -> tuple[int, ...]:
    """Byte strides of a tensor of logical ``shape`` stored with its axes in physical order ``perm``
    (and ``pad`` unused elements after each run of the innermost physical axis)."""
    phys = codegen.contiguous(_padded(tuple(shape[a] for a in perm), pad), itemsize)
    out = [0] * len(shape)
    for position, axis in enumerate(perm):
        out[axis] = phys[position]
    return tuple(out)


def _instances(node) -> float:
    """Statement instances (or fills) a loop nest runs; loops with bounds known only at run time
    count as unbounded."""
    if isinstance(node, For):
        if not (isinstance(node.lo, IConst) and isinstance(node.hi, IConst)):
            return float("inf")
        trips = max(0, -(-(node.hi.value - node.lo.value) // node.step))
        return trips * sum(_instances(child) for child in node.body)
    if isinstance(node, If):
        return max(sum(_instances(c) for c in node.then), sum(_instances(c) for c in node.orelse))
    return 1


def _slices(node: For) -> int:
    """Slices per thread for a parallel loop nest; 0 (run whole on the calling thread) when it is too
    small to repay handing slices to the pool."""
    instances = _instances(node)
    return slices_per_thread(instances) if instances >= PARALLEL_MIN_POINTS else 0


def _manifest(kernel: "Kernel", buffers: int) -> dict:
    """What ``Op._from_manifest`` needs to rebuild ``kernel`` in a new process (JSON-ready)."""
    return {"object": kernel.compiled.name[len("tc_"):], "buffers": buffers,
            "stages": [[lo, hi, s] for _, lo, hi, s in kernel.stages], "threads": kernel.threads,
            "outputs": [[list(sh), dt.str] for sh, dt in kernel.outputs],
            "temporaries": [[list(sh), dt.str] for sh, dt in kernel.temporaries],
            "relayout": [[pos, list(perm), pad, [list(b) for b in blocks]]
                         for pos, perm, pad, blocks in kernel.relayout],
            "out_perms": [None if p is None else list(p) for p in kernel.out_perms]}


def _padded(shape: tuple[int, ...], pad: int) -> tuple[int, ...]:
    return shape[:-1] + (shape[-1] + pad,) if pad and shape else shape


HUGE_PAGE = 2 << 20
HUGE_MIN_BYTES = 4 << 20  # buffers this large are backed by huge pages where the system allows


def kept_buffer(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array for a buffer the kernel keeps across calls (relaid inputs, temporaries).
    A large one is a mapping of its own, aligned to 2 MB and advised to use transparent huge pages:
    a tile walking a column panel down rows 4 KB apart takes a TLB miss per row on 4 KB pages (matmul
    1024², both inputs relaid: 23.6-27.3 -> 17.9-19.7 ms). Elsewhere, or when that fails, np.empty."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < HUGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(shape, dtype)
    try:
        m = mmap.mmap(-1, nbytes + HUGE_PAGE)
        m.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return np.empty(shape, dtype)
    raw = np.frombuffer(m, np.uint8)
    start = -raw.__array_interface__["data"][0] % HUGE_PAGE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _relaid(arr: np.ndarray, perm: tuple[int, ...], pad: int, blocks: tuple, bufs: list, k: int) -> np.ndarray:
    """``arr`` copied into physical axis order ``perm`` with ``pad`` elements after each innermost run
    (the same logical array: a strided view of the buffer), its axes first cut as ``blocks`` says
    (then the blocked array, see ``schedule.blocking``). The buffer is ``bufs[k]``, made (C order,
    padded) when that is None and stored there for the next call."""
    if blocks:
        arr = _blocked(arr, blocks)
    phys = arr.transpose(perm)
    if not pad and phys.flags.c_contiguous:
        return arr
    buf = bufs[k]
    if buf is None:
        buf = bufs[k] = kept_buffer(_padded(phys.shape, pad), arr.dtype)
    view = buf[..., :phys.shape[-1]] if pad else buf
    np.copyto(view, phys)
    return view.transpose(np.argsort(perm))


def _blocked(arr: np.ndarray, blocks: tuple) -> np.ndarray:
    """``arr`` with each (axis, size) of ``blocks`` cut into (blocks, size) axes (a reshaped view where
    numpy can make one; a copy, zero-filled past the end, where the size does not divide the axis)."""
    sizes = dict(blocks)
    if any(arr.shape[a] % b for a, b in blocks):
        full = np.zeros(tuple(-(-n // sizes[a]) * sizes[a] if a in sizes else n for a, n in enumerate(arr.shape)),
                        arr.dtype)
        full[tuple(slice(0, n) for n in arr.shape)] = arr
        arr = full
    return arr.reshape(blocked_shape(arr.shape, blocks))


def _param_kind(name: str, value: Any, label: str) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    raise DtypeError(f"{label}: scalar parameter '{name}' must be a real number, got {type(value).__name__} "
                     f"({value!r})")


class Op:
    """An op written as index expressions; call it with arrays to run it.

    >>> matmul = Op("C[i, j] += A[i, k] * B[k, j]")
    >>> matmul.inputs, matmul.outputs
    (('A', 'B'), ('C',))

    Shapes bind at call time: the first call with a new signature (shapes,
    dtypes, strides, parameter kinds) infers ranges, builds the loop nest and
    JIT-compiles it; later calls with that signature only dispatch.
    """

    def __init__(self, source: str, ranges: dict[str, Any] | None = None, pad: dict[str, Any] | None = None,
                 pad_value: dict[str, float] | None = None, schedule: tuple = ()) -> None:
        if not isinstance(source, str):
            raise ArgumentError(f"tc.op expects the source text as a string, got {type(source).__name__}")
        self.source = textwrap.dedent(source).strip("\n")
        self.label = op_label(self.source)
        self.program = parse(self.source)
        self.inputs: tuple[str, ...] = self.program.inputs
        self.outputs: tuple[str, ...] = self.program.outputs
        self.params: tuple[str, ...] = self.program.params
        self._ranges = self._check_ranges(ranges or {})
        self._pad = self._check_pad(pad or {})
        self._pad_value = self._check_pad_value(pad_value or {})
        self.schedule = self._check_schedule(tuple(schedule))
        self._ident = (self.source, tuple(sorted(self._ranges.items())), tuple(sorted(self._pad.items())),
                       tuple(sorted(self._pad_value.items())), to_json(self.schedule))
        self._cache: dict[tuple, Kernel] = {}
        self._n_in = len(self.inputs)

    # -- options ------------------------------------------------------------------------------------
    def _indices(self) -> list[str]:
        return list(dict.fromkeys(n for st in self.program.statements for n in st.index_names()))

    def _check_ranges(self, ranges: dict[str, Any]) -> dict[str, tuple[int, int]]:
        if not isinstance(ranges, dict):
            raise ArgumentError(f"{self.label}: ranges must be a dict such as {{'i': 4, 'j': (1, 5)}}, "
                                f"got {type(ranges).__name__}")
        known = self._indices()
        out = {}
        for name, r in ranges.items():
            if name not in known:
                raise UnknownNameError(f"{self.label}: ranges names '{name}', which is not an index of the op; "
                                       f"its indices are: {', '.join(known)}")
            if isinstance(r, (int, np.integer)) and not isinstance(r, bool):
                lo, hi = 0, int(r)
            elif isinstance(r, (tuple, list)) and len(r) == 2 and all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in r):
                lo, hi = int(r[0]), int(r[1])
            else:
                raise ArgumentError(f"{self.label}: range of index '{name}' must be an int n (0 <= {name} < n) or "
                                    f"a pair (lo, hi) (lo <= {name} < hi), got {r!r}")
            if hi <= lo:
                raise ArgumentError(f"{self.label}: range of index '{name}' is empty: ({lo}, {hi})")
            out[name] = (lo, hi)
        return out

    def _check_pad(self, pad: dict[str, Any]) -> dict[str, tuple[tuple[int, int], ...]]:
        if not isinstance(pad, dict):
            raise ArgumentError(f"{self.label}: pad must be a dict such as {{'I': (0, 1, 1, 0)}}")
        out = {}
        for name, widths in pad.items():
            if name not in self.inputs:
                raise UnknownNameError(f"{self.label}: pad names '{name}', which is not an input of the op; "
                                       f"its inputs are: {', '.join(self.inputs)}")
            rank = self.program.rank(name)
            try:  # numpy.pad's pad_width forms: n, (before, after), or one pair per axis
                arr = np.asarray(widths)
                if arr.dtype.kind not in "iu":
                    raise TypeError
                axes = [(int(lo), int(hi)) for lo, hi in np.broadcast_to(arr, (rank, 2))]
            except (TypeError, ValueError):
                raise ArgumentError(f"{self.label}: pad of {name} must be given as numpy.pad's pad_width: an int, "
                                    f"a (before, after) pair, or {rank} such pairs (one per axis), got "
                                    f"{widths!r}") from None
            if any(lo < 0 or hi < 0 for lo, hi in axes):
                raise ArgumentError(f"{self.label}: pad of {name} must not be negative, got {widths!r}")
            out[name] = tuple(axes)
        return out

    def _check_pad_value(self, values: dict[str, float]) -> dict[str, float]:
        for name, v in values.items():
            if name not in self._pad:
                raise ArgumentError(f"{self.label}: pad_value names '{name}', which has no pad= entry")
            if not isinstance(v, (int, float, np.integer, np.floating)):
                raise ArgumentError(f"{self.label}: pad_value of {name} must be a number, got {v!r}")
        return {k: float(v) for k, v in values.items()}

    def _check_schedule(self, schedule: tuple) -> tuple:
        for r in schedule:
            if not isinstance(r, (Split, Reorder, Fuse, Layout, Rfactor, Block, Threads, Stage)):
                raise ScheduleError(f"{self.label}: {r!r} is not a schedule record (Split, Reorder, Fuse, Layout, "
                                    f"Rfactor, Block, Threads, Stage)")
            if isinstance(r, Block):
                if not isinstance(r.threads, int) or r.threads % 32 or not 32 <= r.threads <= 1024:
                    raise ScheduleError(f"{self.label}: Block threads must be a multiple of 32 between 32 and 1024, "
                                        f"got {r.threads!r}")
            elif isinstance(r, Layout):
                names = [t for t, _ in self.program.ranks]
                if r.tensor not in names:
                    raise ScheduleError(f"{self.label}: Layout names tensor '{r.tensor}', which the op does not "
                                        f"use; its tensors are: {', '.join(names)}")
                rank = self.program.rank(r.tensor)
                if r.blocks:
                    check_blocks(self.label, r.tensor, rank, r.blocks)
                    if r.tensor not in self.inputs:
                        raise ScheduleError(f"{self.label}: Layout blocks {r.tensor}, which is not an input; only "
                                            "inputs (copied into the blocked layout per call) can be blocked")
                    rank += len(r.blocks)
                if sorted(r.perm) != list(range(rank)):
                    blocked = f" (its axes once blocked by {r.blocks})" if r.blocks else ""
                    raise ScheduleError(f"{self.label}: Layout of {r.tensor} must be a permutation of "
                                        f"{tuple(range(rank))}{blocked}, got {r.perm}")
                if not isinstance(r.pad, int) or r.pad < 0 or (r.pad and r.tensor not in self.inputs):
                    raise ScheduleError(f"{self.label}: Layout pad of {r.tensor} must be a count of elements >= 0, "
                                        f"and only inputs (copied per call) are padded; got {r.pad!r}")
            elif isinstance(r, Threads) and (not r.shape or any(not isinstance(t, int) or t < 1 for t in r.shape)
                                             or int(np.prod(r.shape)) > 1024):
                raise ScheduleError(f"{self.label}: Threads shape must be positive thread counts with a product of "
                                    f"at most 1024, got {r.shape!r}")
            elif isinstance(r, Rfactor) and (not isinstance(r.parts, int) or r.parts < 2):
                raise ScheduleError(f"{self.label}: Rfactor parts must be an integer >= 2 (the pieces the "
                                    f"reduction over '{r.index}' is cut into), got {r.parts!r}")
            elif isinstance(r, Stage) and r.tensor not in [t for t, _ in self.program.ranks]:
                raise ScheduleError(f"{self.label}: Stage names tensor '{r.tensor}', which the op does not use; "
                                    f"its tensors are: {', '.join(t for t, _ in self.program.ranks)}")
            if isinstance(r, (Block, Layout)):
                continue
            if not 0 <= r.stmt < len(self.program.statements):
                raise ScheduleError(f"{self.label}: {type(r).__name__} names statement {r.stmt}; the op has "
                                    f"{len(self.program.statements)} (numbered from 0)")
        return schedule

    def recipe(self) -> list | None:
        """JSON-ready data from which ``from_recipe`` makes this op again, in another process (the
        tuner's compile workers); None when it cannot be."""
        if type(self) is not Op:
            return None
        return ["op", self.source, self._ranges, self._pad, self._pad_value, to_json(self.schedule)]

    def canonical(self) -> str:
        """The op's canonical source (names renamed in order of appearance): the tuning database key."""
        from .autotune.canon import canonical_source
        return canonical_source(self.program)

    def with_schedule(self, schedule) -> "Op":
        """The same op run with another schedule (a tuple of records; see tensorcomp.schedule)."""
        return Op(self.source, ranges=self._ranges or None, pad=self._pad or None,
                  pad_value=self._pad_value or None, schedule=tuple(schedule))

    def _layout_perms(self, schedule: tuple) -> dict[str, tuple[int, ...]]:
        return {r.tensor: r.perm for r in schedule if isinstance(r, Layout)}

    def _layout_pads(self, schedule: tuple) -> dict[str, int]:
        return {r.tensor: r.pad for r in schedule if isinstance(r, Layout) and r.pad}

    def _effective_schedule(self, specs: list[ArraySpec], params: dict[str, Any], target: str = "cpu",
                            bound: Bound | None = None) -> tuple:
        """The op's own schedule, else the tuned one stored for these inputs, else the default (on the
        CPU, layouts that give the heavy statements vector tiles or long contiguous reductions; see
        ``autotune.default_layouts``). ``bound``: the kernel bound of these specs, when already made."""
        if self.schedule:
            return self.schedule
        if not getattr(self, "_no_database", False):
            from .autotune import stored_schedule
            found = stored_schedule(self, list(specs), params, target)
            if found:
                try:
                    return self._check_schedule(found)
                except ScheduleError:
                    pass
        if target != "cpu":
            return ()
        from .autotune.search import default_layouts
        if bound is None:
            bound = self._kernel_bound(list(specs), self._check_call(tuple(specs), params))
        return default_rfactor(bound, num_threads(), default_layouts(self, bound, list(specs)))

    def _forget_kernels(self) -> None:
        """Drop compiled kernels (after tuning, so the next call picks up the new schedule)."""
        self._cache.clear()
        for key in [k for k in _KERNELS if k[0] == self._ident]:
            del _KERNELS[key]

    # -- binding and compiling ----------------------------------------------------------------------
    def _check_call(self, arrays: tuple, params: dict[str, Any]) -> dict[str, str]:
        if len(arrays) != self._n_in:
            names = ", ".join(self.inputs)
            missing = self.inputs[len(arrays):]
            extra = f"; missing: {', '.join(missing)}" if missing else ""
            raise ArgumentError(f"{self.label}: takes {self._n_in} input tensor{'s' if self._n_in != 1 else ''} "
                                f"({names}) but {len(arrays)} {'were' if len(arrays) != 1 else 'was'} given{extra}")
        for name in params:
            if name not in self.params:
                known = ", ".join(self.params) if self.params else "none"
                raise UnknownNameError(f"{self.label}: unexpected keyword argument '{name}'; the op's scalar "
                                       f"parameters are: {known}")
        kinds = {}
        for name in self.params:
            if name not in params:
                raise ArgumentError(f"{self.label}: scalar parameter '{name}' was not given; pass it as a keyword, "
                                    f"op(..., {name}=value)")
            kinds[name] = _param_kind(name, params[name], self.label)
        return kinds

    def bind(self, *arrays: Any, **params: Any) -> Bound:
        """Shapes, dtypes and isl domains for these inputs (arrays, ArraySpecs or shape tuples)."""
        kinds = self._check_call(arrays, params)
        specs = [ArraySpec.of(a) for a in arrays]
        return self._bind(specs, kinds)

    def _bind(self, specs: list[ArraySpec], kinds: dict[str, str]) -> Bound:
        inputs = {}
        for name, spec in zip(self.inputs, specs):
            if not spec.dtype.isnative:
                raise DtypeError(f"{self.label}: tensor {name} has non-native byte order ({spec.dtype.str}); "
                                 f"convert it with .astype({spec.dtype.newbyteorder('=').name})")
            inputs[name] = (spec.shape, _DTYPES.get(spec.dtype.num, str(spec.dtype)))
        return bind(self.program, self.source, inputs, kinds, self._ranges, self._pad, self._pad_value)

    def _kernel_bound(self, specs: list[ArraySpec], kinds: dict[str, str]) -> Bound:
        """The bound op the kernels run: elementwise temporaries read once are folded into their
        reader (see ``schedule.inline``); schedules number these statements."""
        return inline_elementwise(self._bind(specs, kinds))

    def _relayouts(self, schedule: tuple) -> tuple[tuple, tuple]:
        perms, pads = self._layout_perms(schedule), self._layout_pads(schedule)
        blocks = {r.tensor: r.blocks for r in schedule if isinstance(r, Layout) and r.blocks}
        ins = tuple((k, perms[n], pads.get(n, 0), blocks.get(n, ())) for k, n in enumerate(self.inputs) if n in perms)
        outs = tuple(perms.get(n) for n in self.outputs)
        if not ins and not any(p is not None for p in outs):
            return (), ()
        return ins, outs

    def _buffers(self, bound: Bound) -> list[str]:
        return list(self.inputs) + list(self.outputs) + list(bound.program.temporaries)

    def _layouts(self, bound: Bound, specs: list[ArraySpec], schedule: tuple = ()) -> dict[str, BufferLayout]:
        """Byte strides of every buffer: as passed, or as a Layout record lays the tensor out."""
        perms, pads = self._layout_perms(schedule), self._layout_pads(schedule)
        layouts = {}
        for name in self._buffers(bound):
            info = bound.tensors[name]
            size = ITEMSIZE[info.dtype]
            if name in perms:
                layouts[name] = BufferLayout(permuted_strides(info.shape, perms[name], size, pads.get(name, 0)), size)
            elif name in self.inputs:
                layouts[name] = BufferLayout(tuple(specs[self.inputs.index(name)].strides), size)
            else:
                layouts[name] = BufferLayout(codegen.contiguous(info.shape, size), size)
        return layouts

    def _plan(self, specs: list[ArraySpec], kinds: dict[str, str], params: dict[str, Any],
              target: str = "cpu") -> tuple[Bound, tuple, dict[str, BufferLayout], LoopNest]:
        """Bind, pick the schedule (own, tuned or default), lay the tensors out, and lower."""
        bound = self._kernel_bound(specs, kinds)
        schedule = self._effective_schedule(specs, params, target, bound)
        for r in schedule:
            if getattr(r, "stmt", None) is not None and r.stmt >= len(bound.statements):
                raise ScheduleError(f"{self.label}: {type(r).__name__} names statement {r.stmt}, but the kernel runs "
                                    f"{len(bound.statements)} (numbered from 0) once temporaries computed "
                                    "elementwise and read once are folded into their readers; op.loopnest(...) "
                                    "shows them")
        with self._labelled():
            bound, records = apply_blocks(*apply_rfactor(bound, schedule))
            layouts = self._layouts(bound, specs, schedule)
            nest = lower(bound, records, {t: lay.strides for t, lay in layouts.items()}, target)
        return bound, schedule, layouts, nest

    @contextlib.contextmanager
    def _labelled(self):
        """Schedule errors found while lowering or generating code, prefixed with the op's label."""
        try:
            yield
        except ScheduleError as e:
            if str(e).startswith(self.label):
                raise
            raise ScheduleError(f"{self.label}: {e}") from None

    def _cuda_program(self, specs: list[ArraySpec], kinds: dict[str, str], params: dict[str, Any],
                      aligned: bool = True, name: str = "tc_kernel"):
        """Bound, schedule and the CUDA C program for inputs of these specs."""
        from .codegen.cuda import cuda_program
        bound, schedule, layouts, nest = self._plan(specs, kinds, params, "cuda")
        with self._labelled():
            program = cuda_program(nest, bound, self._buffers(bound), layouts, name, schedule, aligned)
        return bound, schedule, nest, program

    def _compile(self, specs: list[ArraySpec], kinds: dict[str, str], key: tuple, params: dict[str, Any]) -> Kernel:
        shared = _KERNELS.get((self._ident, key))
        if shared is not None:
            return shared
        mkey = self._manifest_key(specs, kinds, params)
        kernel = self._from_manifest(mkey, kinds) if mkey else None
        if kernel is None:
            kernel = self._build(specs, kinds, params)
            if mkey:
                jit.write_manifest(mkey, _manifest(kernel, len(self._buffers(kernel.bound))))
        _KERNELS[(self._ident, key)] = kernel
        return kernel

    def _manifest_key(self, specs: list[ArraySpec], kinds: dict[str, str], params: dict[str, Any]) -> str | None:
        """Key of the kernel manifest for these inputs (see ``runtime.jit.read_manifest``): the op, the
        call signature, the thread count and the tuned schedule stored for them, if any."""
        stored = ""
        if not self.schedule and not getattr(self, "_no_database", False):
            from .autotune import stored_schedule
            found = stored_schedule(self, list(specs), params, "cpu")
            stored = to_json(found) if found else ""
        sig = [(s.shape, s.strides, s.dtype.str) for s in specs]
        return jit.manifest_key((repr(self._ident), repr(sig), repr(sorted(kinds.items())), str(num_threads()),
                                 stored))

    def _from_manifest(self, mkey: str, kinds: dict[str, str]) -> Kernel | None:
        """The kernel a manifest describes, with its object code from the cache (None when either is
        missing or unreadable): a new process runs a kernel it has run before at once."""
        m = jit.read_manifest(mkey)
        try:
            param_types = [ctypes.c_double if kinds[p] == "float" else ctypes.c_int64 for p in self.params]
            compiled = jit.load_compiled(m["object"], m["buffers"], param_types, len(m["stages"])) if m else None
            if compiled is None:
                return None
            return Kernel(None, None, compiled, tuple((fn, lo, hi, s) for fn, (lo, hi, s) in
                                                      zip(compiled.stages, m["stages"])), m["threads"],
                          tuple((tuple(sh), np.dtype(dt)) for sh, dt in m["outputs"]),
                          tuple((tuple(sh), np.dtype(dt)) for sh, dt in m["temporaries"]),
                          tuple(float if kinds[p] == "float" else int for p in self.params),
                          tuple((pos, tuple(perm), pad, tuple(tuple(b) for b in blocks))
                                for pos, perm, pad, blocks in m["relayout"]),
                          tuple(None if p is None else tuple(p) for p in m["out_perms"]))
        except (KeyError, TypeError, ValueError):
            return None

    def _build(self, specs: list[ArraySpec], kinds: dict[str, str], params: dict[str, Any]) -> Kernel:
        """Bind, schedule, lower, generate IR and compile it (the object code may come from the cache)."""
        bound, schedule, layouts, nest = self._plan(specs, kinds, params)
        name = "tc_kernel"  # renamed after a hash of the IR (see runtime.jit.compile_kernel)
        ir_text = codegen.generate(nest, bound, self._buffers(bound), layouts, name, ARRAY_DATA_OFFSET)
        param_types = [ctypes.c_double if kinds[p] == "float" else ctypes.c_int64 for p in self.params]
        compiled = compile_kernel(ir_text, name, len(self._buffers(bound)), param_types, len(nest.body))
        # a parallel stage too small to repay handing slices to the pool runs whole on the caller's thread
        stages = tuple((fn, node.lo.value, node.hi.value, _slices(node))
                       if isinstance(node, For) and node.kind == "parallel" else (fn, 0, 1, 0)
                       for fn, node in zip(compiled.stages, nest.body))
        points = sum(int(np.prod([hi - lo for _, lo, hi in bs.extents])) for bs in bound.statements)
        threads = num_threads() if points >= PARALLEL_MIN_POINTS and any(p for *_, p in stages) else 1
        t = bound.tensors
        return Kernel(bound, nest, compiled, stages, threads,
                      tuple((t[n].shape, np.dtype(t[n].dtype)) for n in self.outputs),
                      tuple((t[n].shape, np.dtype(t[n].dtype)) for n in bound.program.temporaries),
                      tuple(float if kinds[p] == "float" else int for p in self.params),
                      *self._relayouts(schedule))

    def _compile_cuda(self, specs: list[ArraySpec], kinds: dict[str, str], key: tuple,
                      params: dict[str, Any], aligned: bool = True) -> CudaKernel:
        shared = _KERNELS.get((self._ident, key))
        if shared is not None:
            return shared
        from .runtime import cuda as rc
        bound, schedule, nest, program = self._cuda_program(specs, kinds, params, aligned)
        fmt = "P" * len(self._buffers(bound)) + "".join("d" if kinds[p] == "float" else "q" for p in self.params)
        module = rc.Module(program.source, [launch.name for launch in program.launches], fmt)
        t = bound.tensors
        kernel = CudaKernel(bound, nest, module, program.launches,
                            tuple((t[n].shape, np.dtype(t[n].dtype)) for n in self.outputs),
                            tuple((t[n].shape, np.dtype(t[n].dtype)) for n in bound.program.temporaries),
                            tuple(float if kinds[p] == "float" else int for p in self.params),
                            *self._relayouts(schedule))
        _KERNELS[(self._ident, key)] = kernel
        return kernel

    def cuda_source(self, specs: list[ArraySpec], params: dict[str, Any]) -> str:
        """The CUDA C the op compiles for inputs of these specs (what ``_compile_cuda`` builds)."""
        kinds = self._check_call(tuple(specs), params)
        return self._cuda_program(specs, kinds, params)[3].source

    def _call_cuda(self, arrays: tuple, params: dict[str, Any]):
        """Run on the GPU: device arrays stay there (GPUArrays out); host arrays go there and back."""
        from .runtime import cuda as rc
        host = not any(rc.is_device_array(a) for a in arrays)
        devs = [rc.as_device(a) for a in arrays]
        inputs = [int(d.gpudata) if d.gpudata is not None else 0 for d in devs]
        aligned = not any(p % 16 for p in inputs)  # our own allocations always are
        key = ("cuda", aligned) + tuple([(tuple(d.shape), tuple(d.strides), d.dtype) for d in devs])
        if params:
            key += tuple([(k, type(v)) for k, v in params.items()])
        kernel = self._cache.get(key)
        if kernel is None:
            kinds = self._check_call(arrays, params)
            specs = [ArraySpec(tuple(d.shape), d.dtype, tuple(d.strides)) for d in devs]
            kernel = self._compile_cuda(specs, kinds, key, params, aligned)
            self._cache[key] = kernel
        for pos, perm, pad, blocks in kernel.relayout:
            if pad or blocks:
                raise ScheduleError(f"{self.label}: Layout {'pad' if pad else 'blocks'} is built for the CPU only; "
                                    "drop it for target='cuda'")
            devs[pos] = _device_relayout(devs[pos], perm)
            inputs[pos] = int(devs[pos].gpudata)
        outs = [rc.empty(shape, dtype, None if perm is None else permuted_strides(shape, perm, dtype.itemsize))
                for (shape, dtype), perm in zip(kernel.outputs, kernel.out_perms or [None] * len(kernel.outputs))]
        temps = [rc.empty(shape, dtype) for shape, dtype in kernel.temporaries]
        scalars = [cast(params[p][()] if isinstance(params[p], np.ndarray) else params[p])
                   for p, cast in zip(self.params, kernel.param_casts)] if params else []
        ptrs = inputs + [int(d.gpudata) if d.gpudata is not None else 0 for d in (*outs, *temps)]
        for launch, fn in zip(kernel.launches, kernel.module.functions):
            fn.prepared_call((launch.grid, 1, 1), (launch.block, 1, 1), *ptrs, *scalars)
        if host:
            outs = [rc.to_host(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    # -- calling ------------------------------------------------------------------------------------
    def __call__(self, *arrays: Any, **params: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the op: arrays in ``self.inputs`` order, scalar parameters by keyword.

        ``target="cuda"`` runs it on the GPU (numpy in, numpy out); device arrays (pycuda
        GPUArrays, CUDA torch tensors, anything with ``__cuda_array_interface__``) run there
        without it and give GPUArrays back.
        """
        if params and "target" in params and "target" not in self.params:
            params = dict(params)
            target = params.pop("target")
            if target == "cuda":
                return self._call_cuda(arrays, params)
            if target != "cpu":
                raise ArgumentError(f"{self.label}: unknown target '{target}'; available targets: cpu, cuda")
        for a in arrays:  # (a plain loop: this is the per-call hot path)
            if type(a) is not np.ndarray and hasattr(a, "__cuda_array_interface__"):
                return self._call_cuda(arrays, params)
        arrs = [a if type(a) is np.ndarray else np.asarray(a) for a in arrays]
        key = tuple([(a.shape, a.strides, a.dtype) for a in arrs])  # dtype objects know their byte order
        prof = _PROFILE
        if prof is not None:
            t0 = time.perf_counter()
            inputs = [a.copy() for a in arrs]  # the op's result may be used in place later
        if params:
            key += tuple([(k, type(v)) for k, v in params.items()])
        kernel = self._cache.get(key)
        if kernel is None:
            kinds = self._check_call(arrays, params)
            kernel = self._compile([ArraySpec(a.shape, a.dtype, a.strides) for a in arrs], kinds, key, params)
            self._cache[key] = kernel
        relaid = None
        if kernel.relayout or kernel.out_perms:
            if kernel.relayout:
                relaid = kernel.spare_relaid.pop() if kernel.spare_relaid else [None] * len(kernel.relayout)
            for k, (pos, perm, pad, blocks) in enumerate(kernel.relayout):  # copied into the scheduled layout
                arrs[pos] = _relaid(arrs[pos], perm, pad, blocks, relaid, k)
            outs = [np.empty(shape, dtype) if perm is None else
                    np.empty(tuple(shape[a] for a in perm), dtype).transpose(np.argsort(perm))
                    for (shape, dtype), perm in zip(kernel.outputs, kernel.out_perms)]
        else:
            outs = [np.empty(shape, dtype) for shape, dtype in kernel.outputs]
        if kernel.temporaries:
            spare = kernel.spare
            temps = spare.pop() if spare else [kept_buffer(shape, dtype) for shape, dtype in kernel.temporaries]
        else:
            temps = None
        scalars = [cast(params[p][()] if isinstance(params[p], np.ndarray) else params[p])
                   for p, cast in zip(self.params, kernel.param_casts)] if params else []
        pyfn = kernel.compiled.pyfn
        if kernel.threads > 1:
            ptrs = [a.__array_interface__["data"][0] for a in (*arrs, *outs, *(temps or ()))]
            run_stages(kernel.stages, ptrs, scalars, kernel.threads)
        elif pyfn is not None:
            pyfn(*arrs, *outs, *(temps or ()), *scalars)
        else:
            ptrs = [a.__array_interface__["data"][0] for a in (*arrs, *outs, *(temps or ()))]
            kernel.compiled.fn(*ptrs, *scalars)
        if temps:
            kernel.spare.append(temps)
        if relaid is not None:
            kernel.spare_relaid.append(relaid)
        if prof is not None:
            entry = prof.setdefault((id(self), key), [self, inputs, dict(params), 0.0, 0])
            entry[1] = inputs
            entry[3] += time.perf_counter() - t0
            entry[4] += 1
        return outs[0] if len(outs) == 1 else tuple(outs)

    # -- introspection ------------------------------------------------------------------------------
    def ranges(self, *arrays: Any, **params: Any) -> list[dict[str, tuple[int, int]]]:
        """Per statement, each index's inferred range ``(lo, hi)`` (lo <= index < hi)."""
        bound = self.bind(*arrays, **params)
        return [{n: (lo, hi) for n, lo, hi in bs.extents} for bs in bound.statements]

    def domains(self, *arrays: Any, **params: Any) -> list[str]:
        """Per statement, its iteration domain as an isl set (named by its indices)."""
        bound = self.bind(*arrays, **params)
        out = []
        for bs in bound.statements:
            text = str(bs.domain)
            for k in reversed(range(len(bs.names))):
                text = text.replace(f"d{k}", bs.names[k])
            out.append(text)
        return out

    def shapes(self, *arrays: Any, **params: Any) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor (inputs, temporaries, outputs) for these inputs."""
        bound = self.bind(*arrays, **params)
        return {name: info.shape for name, info in bound.tensors.items()}

    def loopnest(self, *arrays: Any, **params: Any) -> LoopNest:
        """The loop nest the op runs for these inputs (print it for pseudo-code)."""
        kinds = self._check_call(arrays, params)
        return self._plan([ArraySpec.of(a) for a in arrays], kinds, params)[3]

    def code(self, *arrays: Any, target: str = "cpu", optimized: bool = False, **params: Any) -> str:
        """The generated code for these inputs: LLVM IR for ``target='cpu'`` (after -O3 if ``optimized``),
        CUDA C for ``target='cuda'`` (on any machine; it needs a GPU only to run)."""
        if target not in ("cpu", "cuda"):
            raise ArgumentError(f"{self.label}: unknown target '{target}'; available targets: cpu, cuda")
        kinds = self._check_call(arrays, params)
        if target == "cuda":
            return self._cuda_program([ArraySpec.of(a) for a in arrays], kinds, params, name="kernel")[3].source
        bound, schedule, layouts, nest = self._plan([ArraySpec.of(a) for a in arrays], kinds, params, target)
        text = codegen.generate(nest, bound, self._buffers(bound), layouts)
        if optimized:
            from .runtime.jit import optimize
            text = str(optimize(text))
        return text

    def __repr__(self) -> str:
        return f"tc.op({self.source!r})"


def from_recipe(recipe: list) -> "Op":
    """The op an ``Op.recipe()`` describes."""
    if recipe[0] == "grad":
        from .autodiff import grad
        return grad(from_recipe(recipe[1]), recipe[2])
    from .schedule.records import from_json
    _, source, ranges, pad, pad_value, schedule = recipe
    return Op(source, ranges=ranges or None, pad=pad or None, pad_value=pad_value or None,
              schedule=from_json(schedule))


_COPIES: dict[tuple[int, tuple[int, ...]], "Op"] = {}


def _device_relayout(arr, perm: tuple[int, ...]):
    """A copy of a device array stored with its axes in physical order ``perm`` (an op of its own)."""
    rank = len(perm)
    copy = _COPIES.get((rank, perm))
    if copy is None:
        ix = ", ".join(f"i{k}" for k in range(rank))
        copy = _COPIES[(rank, perm)] = Op(f"B[{ix}] = A[{ix}]", schedule=(Layout("B", perm),))
    return copy._call_cuda((arr,), {})


def op(source: str, ranges: dict[str, Any] | None = None, pad: dict[str, Any] | None = None,
       pad_value: dict[str, float] | None = None, schedule: tuple = ()) -> Op:
    """Parse ``source`` into an :class:`Op` (names and syntax are checked now; shapes at call time).

    ``ranges`` bounds indices explicitly: ``{"i": 4}`` means 0 <= i < 4 and
    ``{"j": (1, 5)}`` means 1 <= j < 5. ``pad`` opts into zero padding: the op
    sees the input as if ``numpy.pad(x, widths)`` had been applied, so reads
    outside the real array give 0 (or ``pad_value[name]``).
    """
    return Op(source, ranges=ranges, pad=pad, pad_value=pad_value, schedule=schedule)
