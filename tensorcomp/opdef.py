"""``tc.op``: the public face of an op — its source and options, introspection, and calling.

An ``Op`` is parsed and checked when it is made; the first call with a new input signature hands it to
the compiler (``tensorcomp.compiler``: one list of named passes, from binding to a loaded kernel),
later calls with that signature only dispatch (``runtime.kernel.run``; ``runtime.launch`` on a GPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import textwrap
import time
from dataclasses import replace
from typing import Any, Iterator

import numpy as np

from . import compiler
from .autotune.canon import canonical_source
from .compiler import ArraySpec
from .domain import Bound, bind
from .errors import (
    ArgumentError, DtypeError, IndexRangeError, ParseError, RangeError, ScheduleError, ShapeError, TraceError,
    UnknownNameError, op_label,
)
from .lang import parse
from .runtime import jit
from .runtime import cuda
from .runtime import kernel as cpu_kernel
from .runtime import launch
from .schedule import LoopNest
from .schedule.blocking import check_blocks
from .schedule.records import Block, Fuse, Layout, Reorder, Rfactor, Split, Stage, Threads, to_json

_DTYPES = {np.dtype(t).num: t for t in ("float32", "float64", "int32", "int64", "bool")}
PRECISIONS = ("fp32", "tf32")  # float32 arithmetic; TF32 inputs on the GPU's tensor cores (codegen.cuda_mma)
# while ``profiling()`` is active: (op, input signature) -> [op, inputs, params, seconds, calls]
_PROFILE: dict[tuple, list] | None = None
# while a step is traced (``tensorcomp.trace``): called with (op, input arrays, params, output arrays)
_RECORDER: list = []
_DRY: list = []  # per recorder: whether CPU ops skip running (``record_calls``)
# while a step is traced: called with (host array, device array) when host data goes to the device
UPLOADS: list = []
# how an op runs on ``tc.Tensor`` arguments (set by ``tensorcomp.tensor``, which sits above this module):
# it returns Tensors and records the call on the gradient tape
TENSOR_APPLY: list = []


def recording() -> bool:
    """Is a step being traced (``tensorcomp.trace``)?"""
    return bool(_RECORDER)


@contextlib.contextmanager
def record_calls(record, dry: bool = False) -> Iterator[None]:
    """Call ``record(op, arrays, params, outputs)`` after every CPU op call inside the block. With
    ``dry``, CPU ops do not run, nor compile: their outputs are zero-filled arrays of the shapes and
    axis orders running would give (``compiler.written_layouts``; a dry trace, ``tensorcomp.trace``)."""
    _RECORDER.append(record)
    _DRY.append(dry)
    try:
        yield
    finally:
        _RECORDER.remove(record)
        _DRY.pop()


@contextlib.contextmanager
def profiling(prof: dict) -> Iterator[dict]:
    """Time every CPU op call inside the block into ``prof`` (with a copy of its inputs; see
    ``autotune.hot``)."""
    global _PROFILE
    previous, _PROFILE = _PROFILE, prof
    try:
        yield prof
    finally:
        _PROFILE = previous


def _same_strides_copy(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` with its strides (a view into a buffer of its own), so a profiled call is
    tuned for the signature it was made with (the database and kernel keys include strides)."""
    if a.flags.c_contiguous or any(s < 0 for s in a.strides) or a.size == 0:
        return a.copy()
    span = 1 + sum((n - 1) * s for n, s in zip(a.shape, a.strides))
    base = np.empty(-(-span // a.itemsize), a.dtype)
    out = np.lib.stride_tricks.as_strided(base, a.shape, a.strides)
    out[...] = a
    return out


def _param_kind(name: str, value: Any, label: str) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        if not -2 ** 63 <= int(value) < 2 ** 63:
            raise DtypeError(f"{label}: scalar parameter '{name}' is {value}, which does not fit in 64 bits; pass "
                             f"a float (e.g. {float(value):.6g}) if a float is meant")
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

    kept_outputs: tuple[str, ...] | None = None  # outputs= as given (None: the tensors nothing reads)

    def __init__(self, source: str, ranges: dict[str, Any] | None = None, pad: dict[str, Any] | None = None,
                 pad_value: dict[str, float] | None = None, schedule: tuple = (), use_tuned: bool = True,
                 outputs: tuple[str, ...] | None = None, precision: str = "fp32") -> None:
        if not isinstance(source, str):
            raise ArgumentError(f"tc.op expects the source text as a string, got {type(source).__name__}")
        self.source = textwrap.dedent(source).strip("\n")
        self.label = op_label(self.source)
        self.program = parse(self.source)
        self.inputs: tuple[str, ...] = self.program.inputs
        self.outputs: tuple[str, ...] = self.program.outputs
        self.params: tuple[str, ...] = self.program.params
        self.kept_outputs = self._keep_outputs(outputs)
        self.given_ranges = self._check_ranges(self._lookup_ranges(ranges or {}))  # index -> (lo, hi), as given
        self.pad_widths = self._check_pad(pad or {})  # input -> ((before, after), ...) per axis
        self.pad_values = self._check_pad_value(pad_value or {})  # input -> the value read in its padding
        if not isinstance(schedule, (tuple, list)):
            raise ScheduleError(f"{self.label}: schedule must be a tuple of schedule records, got "
                                f"{type(schedule).__name__}")
        self.schedule = self.check_schedule(tuple(schedule))
        self.use_tuned = bool(use_tuned)  # without a schedule of its own: look up tuned ones (database)?
        if precision not in PRECISIONS:
            raise ArgumentError(f"{self.label}: precision must be one of {', '.join(map(repr, PRECISIONS))} "
                                f"(tf32: contractions on the GPU's tensor cores, inputs rounded to 10 mantissa "
                                f"bits), got {precision!r}")
        self.precision = precision
        self.ident = (self.source, tuple(sorted(self.given_ranges.items())), tuple(sorted(self.pad_widths.items())),
                      tuple(sorted(self.pad_values.items())), to_json(self.schedule),
                      self.use_tuned and not self.schedule, self.kept_outputs) + (
                          (precision,) if precision != "fp32" else ())
        self._cache: dict[tuple, Any] = {}  # call signature -> kernel
        self._n_in = len(self.inputs)
        self.lookup_checks = lookup_checks(self.program.lookups, self.inputs, self.given_ranges)

    # -- options ------------------------------------------------------------------------------------
    def _keep_outputs(self, outputs: Any) -> tuple[str, ...] | None:
        """``outputs=``: the written tensors to return, in order, even those later statements read
        (by default an op returns the written tensors no statement reads)."""
        if outputs is None:
            return None
        written = (*self.program.outputs, *self.program.temporaries)
        if isinstance(outputs, str) or not isinstance(outputs, (tuple, list)) or not outputs or \
                len(set(outputs)) != len(outputs) or any(t not in written for t in outputs):
            raise ArgumentError(f"{self.label}: outputs must name written tensors, each once (written: "
                                f"{', '.join(written)}), got {outputs!r}")
        kept = tuple(outputs)
        self.program = replace(self.program, outputs=kept, temporaries=tuple(t for t in written if t not in kept))
        self.outputs = kept
        return kept

    def _lookup_ranges(self, ranges: Any) -> Any:
        """``ranges={T: n}`` for an index tensor T a tensor is written through: the range of the index
        that runs over that axis (see ``lang.lookups``)."""
        written = {lk.index: lk.index_name for lk in self.program.lookups if lk.written}
        if not written or not isinstance(ranges, dict):
            return ranges
        for index, name in written.items():
            if index not in ranges and name not in ranges:
                tensor = next(lk.tensor for lk in self.program.lookups if lk.index == index)
                raise RangeError(f"{self.label}: {tensor} is written through index tensor {index}, so its extent "
                                 f"on that axis is unknown; give it with ranges={{'{index}': n}} (the values of "
                                 f"{index} lie in [0, n))")
        return {written.get(k, k): v for k, v in ranges.items()}
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
            if name not in self.pad_widths:
                raise ArgumentError(f"{self.label}: pad_value names '{name}', which has no pad= entry")
            if not isinstance(v, (int, float, np.integer, np.floating)):
                raise ArgumentError(f"{self.label}: pad_value of {name} must be a number, got {v!r}")
        return {k: float(v) for k, v in values.items()}

    def check_schedule(self, schedule: tuple) -> tuple:
        """``schedule`` if every record is one this op can run (else a ScheduleError saying why)."""
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
            elif isinstance(r, Stage) and r.buffers not in (1, 2):
                raise ScheduleError(f"{self.label}: Stage buffers must be 1 (one shared tile per iteration) or 2 "
                                    f"(double-buffered), got {r.buffers!r}")
            if isinstance(r, (Block, Layout)):
                continue
            if not 0 <= r.stmt < len(self.program.statements):
                raise ScheduleError(f"{self.label}: {type(r).__name__} names statement {r.stmt}; the op has "
                                    f"{len(self.program.statements)} (numbered from 0)")
        return schedule

    def __getstate__(self) -> dict:
        """Pickled without its kernels (they are looked up again where it is unpickled)."""
        return {**self.__dict__, "_cache": {}}

    def recipe(self) -> list | None:
        """JSON-ready data from which ``from_recipe`` makes this op again, in another process (the
        tuner's compile workers); None when it cannot be."""
        if type(self) is not Op:
            return None
        return ["op", self.source, self.given_ranges, self.pad_widths, self.pad_values, to_json(self.schedule),
                self.use_tuned] + ([list(self.kept_outputs)] if self.kept_outputs else [])

    @property
    def digest(self) -> str:
        """A hex digest of the op's identity (source, options, schedule): equal ops have equal digests
        (the key under which wrappers such as ``tensorcomp.torch`` register an op once)."""
        return hashlib.sha256(repr(self.ident).encode()).hexdigest()

    def canonical(self) -> str:
        """The op's canonical source (names renamed in order of appearance): the tuning database key."""
        if self.__dict__.get("_canonical") is None:  # (the program never changes after __init__)
            kept = f"\n# outputs: {', '.join(self.kept_outputs)}" if self.kept_outputs else ""
            self._canonical = canonical_source(self.program) + kept
        return self._canonical

    def with_schedule(self, schedule, use_tuned: bool | None = None) -> "Op":
        """The same op run with another schedule (a tuple of records; see tensorcomp.schedule).
        ``with_schedule((), use_tuned=False)`` always runs the default schedule."""
        return Op(self.source, ranges=self.given_ranges or None, pad=self.pad_widths or None,
                  pad_value=self.pad_values or None, schedule=tuple(schedule),
                  use_tuned=self.use_tuned if use_tuned is None else use_tuned, outputs=self.kept_outputs,
                  precision=self.precision)

    def forget_kernels(self, *arrays: Any, **params: Any) -> None:
        """Drop the kernels compiled for these inputs' signature (all of them when none are given), so
        the next call picks up a new schedule (after tuning)."""
        if not arrays:
            self._cache.clear()
            compiler.forget(self)
            return
        arrs = [a if type(a) is np.ndarray else np.asarray(a) for a in arrays]
        key = tuple([(a.shape, a.strides, a.dtype) for a in arrs])
        if params:
            key += tuple([(k, type(v)) for k, v in params.items()])
        self._cache.pop(key, None)
        compiler.forget(self, key)

    # -- binding ------------------------------------------------------------------------------------
    def check_call(self, arrays: tuple, params: dict[str, Any]) -> dict[str, str]:
        """Check the number of inputs and the scalar parameters of a call; returns each parameter's
        kind ("int" or "float")."""
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
        kinds = self.check_call(arrays, params)
        return self.bind_specs([ArraySpec.of(a) for a in arrays], kinds)

    def bind_specs(self, specs: list[ArraySpec], kinds: dict[str, str]) -> Bound:
        """The compiler's first pass for this op: shapes, dtypes and isl domains for inputs of these specs."""
        inputs = {}
        for name, spec in zip(self.inputs, specs):
            if not spec.dtype.isnative:
                raise DtypeError(f"{self.label}: tensor {name} has non-native byte order ({spec.dtype.str}); "
                                 f"convert it with .astype({spec.dtype.newbyteorder('=').name})")
            inputs[name] = (spec.shape, _DTYPES.get(spec.dtype.num, str(spec.dtype)))
        return bind(self.program, self.source, inputs, kinds, self.given_ranges, self.pad_widths, self.pad_values)

    def _unit(self, arrays: tuple, params: dict[str, Any], target: str = "cpu", upto: str = "mark_tiles"):
        kinds = self.check_call(arrays, params)
        return compiler.plan(self, [ArraySpec.of(a) for a in arrays], kinds, params, target, upto)

    # -- the GPU ------------------------------------------------------------------------------------
    def cuda_source(self, specs: list[ArraySpec], params: dict[str, Any]) -> str:
        """The CUDA C the op compiles for inputs of these specs."""
        return compiler.generate_cuda(self._unit(tuple(specs), params, "cuda")).code.source

    def call_cuda(self, arrays: tuple, params: dict[str, Any]):
        """Run on the GPU: device arrays stay there (GPUArrays out); host arrays go there and back."""
        host = not any(cuda.is_device_array(a) for a in arrays)
        if self.lookup_checks:
            self.check_lookups(list(arrays))
        devs = [cuda.as_device(a) for a in arrays]
        key = launch.signature(devs)
        if params:
            key += tuple([(k, type(v)) for k, v in params.items()])
        kernel = self._cache.get(key)
        if kernel is None:
            kinds = self.check_call(arrays, params)
            specs = [ArraySpec(tuple(d.shape), d.dtype, tuple(d.strides)) for d in devs]
            kernel = self._cache[key] = compiler.cuda_kernel(self, specs, kinds, params, key, aligned=key[1])
        scalars = [cast(params[p][()] if isinstance(params[p], np.ndarray) else params[p])
                   for p, cast in zip(self.params, kernel.param_casts)] if params else []
        if UPLOADS:  # a traced step: host inputs go up on each replay
            for a, d in zip(arrays, devs):
                if not cuda.is_device_array(a):
                    UPLOADS[-1](a, d)
        given = tuple(devs)  # (``run`` replaces relaid-out inputs in ``devs`` itself)
        outs = launch.run(kernel, devs, scalars, device_relayout)
        if _RECORDER:  # a traced step (tensorcomp.step): the call as the device ran it
            if host:
                raise TraceError(f"tc.compile: {self.label} was called on host arrays with target='cuda' inside a "
                                 f"traced step; keep the step's tensors on one device (tc.Tensor(x, device='cuda'))")
            _RECORDER[-1](self, given, params, outs)
        if host:
            outs = [cuda.to_host(o) for o in outs]
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
                return self.call_cuda(arrays, params)
            if target != "cpu":
                raise ArgumentError(f"{self.label}: unknown target '{target}'; available targets: cpu, cuda")
        for a in arrays:  # (a plain loop: this is the per-call hot path)
            if type(a) is not np.ndarray:
                if isinstance(a, np.ma.MaskedArray):
                    raise ArgumentError(f"{self.label}: a numpy masked array was passed, and ops do not apply "
                                        f"masks: pass a.filled(value) or a.data explicitly")
                if getattr(a, "records_gradients", False):
                    return TENSOR_APPLY[0](self, *arrays, **params)
                if hasattr(a, "__cuda_array_interface__"):
                    return self.call_cuda(arrays, params)
        arrs = [a if type(a) is np.ndarray else np.asarray(a) for a in arrays]
        if self.lookup_checks:
            if len(arrs) != self._n_in:  # (the checks read the arrays by position: say what is missing first)
                self.check_call(tuple(arrs), params)
            self.check_lookups(arrs)
        key = tuple([(a.shape, a.strides, a.dtype) for a in arrs])  # dtype objects know their byte order
        prof = _PROFILE
        if prof is not None:
            t0 = time.perf_counter()
            inputs = [_same_strides_copy(a) for a in arrs]  # the op's result may be used in place later
        if params:
            key += tuple([(k, type(v)) for k, v in params.items()])
        kernel = self._cache.get(key)
        recorder = _RECORDER[-1] if _RECORDER else None
        if recorder is not None and _DRY[-1]:  # (zeros where the kernel would write; nothing compiled)
            layouts = (kernel.outputs, kernel.out_perms) if kernel is not None else compiler.written_layouts(
                self, [ArraySpec(a.shape, a.dtype, a.strides) for a in arrs], self.check_call(arrays, params), params,
                key)
            outs = cpu_kernel.new_arrays(*layouts, np.zeros)
            recorder(self, tuple(arrs), params, outs)
            return outs[0] if len(outs) == 1 else tuple(outs)
        if kernel is None:
            self.check_call(arrays, params)
            kernel = self.kernel_for([ArraySpec(a.shape, a.dtype, a.strides) for a in arrs], params)
        scalars = [cast(params[p][()] if isinstance(params[p], np.ndarray) else params[p])
                   for p, cast in zip(self.params, kernel.param_casts)] if params else []
        if recorder is not None:
            given = tuple(arrs)  # (``run`` relays inputs out in ``arrs`` itself)
        outs = cpu_kernel.run(kernel, arrs, scalars)
        if recorder is not None:
            recorder(self, given, params, outs)
        if prof is not None:
            entry = prof.setdefault((id(self), key), [self, inputs, dict(params), 0.0, 0])
            entry[1] = inputs
            entry[3] += time.perf_counter() - t0
            entry[4] += 1
        return outs[0] if len(outs) == 1 else tuple(outs)

    def check_lookups(self, arrays: list) -> None:
        """Every value of every index tensor (``lang.lookups``) selects an element: an integer in
        [0, extent of the axis it indexes). Raises before the op runs."""
        for k, tensor_pos, axis, extent, lk in self.lookup_checks:
            idx = arrays[k]
            if not isinstance(idx, np.ndarray):
                idx = cuda.to_host(idx) if cuda.is_device_array(idx) else np.asarray(idx)
            if idx.dtype not in (np.int64, np.int32):
                raise DtypeError(f"{self.label}: index tensor {lk.index} must hold integers (int32 or int64), got "
                                 f"{idx.dtype}; convert it with .astype(np.int64)")
            if tensor_pos is not None and len(arrays[tensor_pos].shape) <= axis:
                raise ShapeError(f"{self.label}: {lk.tensor} has shape {tuple(arrays[tensor_pos].shape)}, but index "
                                 f"tensor {lk.index} selects along its axis {axis}; give {lk.tensor} the rank the "
                                 f"source indexes it with")
            n = extent if tensor_pos is None else arrays[tensor_pos].shape[axis]
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                where = np.argwhere((idx < 0) | (idx >= n))[0]
                value = int(idx[tuple(where)])
                what = f"axis {axis} of {lk.tensor}" if tensor_pos is not None else f"the axis of {lk.tensor} " \
                    f"it is written through (ranges={{'{lk.index}': {n}}})"
                raise IndexRangeError(f"{self.label}: index tensor {lk.index} holds {value} at position "
                                      f"{tuple(int(w) for w in where)}, outside {what}, of extent {n}; its values "
                                      f"must lie in [0, {n})")

    @staticmethod
    def _kernel_key(specs: list[ArraySpec], params: dict[str, Any]) -> tuple:
        key = tuple([(s.shape, s.strides, s.dtype) for s in specs])
        return key + tuple([(k, type(v)) for k, v in params.items()]) if params else key

    def built_kernel(self, specs: list[ArraySpec], params: dict[str, Any]):
        """The CPU kernel ``kernel_for`` would return, if this process has built it already; else None."""
        return self._cache.get(self._kernel_key(specs, params))

    def kernel_for(self, specs: list[ArraySpec], params: dict[str, Any]):
        """The CPU kernel for inputs of these specs and these scalars' kinds (built, or found in the
        caches), as ``__call__`` would use it."""
        key = self._kernel_key(specs, params)
        kernel = self._cache.get(key)
        if kernel is None:
            kinds = self.check_call(tuple(specs), params)
            try:
                kernel = self._cache[key] = compiler.kernel(self, specs, kinds, params, key)
            except RecursionError:
                raise ParseError(f"{self.label}: an expression nests too deeply to compile (Python's recursion "
                                 f"limit); split it into statements with temporaries", None) from None
        return kernel

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

    def schedule_for(self, *arrays: Any, target: str = "cpu", **params: Any) -> tuple:
        """The schedule records these inputs run under: the op's own, else the tuned ones stored for
        them, else those the default schedule pass chooses (``schedule.default``); then the default
        vector tile of each statement left without loop records (numbered as the kernel runs its
        statements: after elementwise folding and Rfactor)."""
        u = self._unit(arrays, params, target, upto="tile")
        return u.schedule + u.tiles

    def loopnest(self, *arrays: Any, **params: Any) -> LoopNest:
        """The loop nest the op runs for these inputs (print it for pseudo-code)."""
        return self._unit(arrays, params).nest

    def code(self, *arrays: Any, target: str = "cpu", optimized: bool = False, **params: Any) -> str:
        """The generated code for these inputs: LLVM IR for ``target='cpu'`` (after -O3 if ``optimized``),
        CUDA C for ``target='cuda'`` (on any machine; it needs a GPU only to run)."""
        if target not in ("cpu", "cuda"):
            raise ArgumentError(f"{self.label}: unknown target '{target}'; available targets: cpu, cuda")
        u = self._unit(arrays, params, target)
        if target == "cuda":
            return compiler.generate_cuda(u, name="kernel").code.source
        text = compiler.codegen.generate(u.nest, u.bound, compiler.buffers(self, u.bound), u.strides)
        return str(jit.optimize(text)) if optimized else text

    def __repr__(self) -> str:
        return f"tc.op({self.source!r})"


def lookup_checks(lookups: tuple, inputs: tuple[str, ...], ranges: dict[str, tuple[int, int]]) -> tuple:
    """Per lookup: (its index tensor's input position, the looked-up tensor's input position or None
    for a written lookup, axis, the written axis's extent or None, the lookup)."""
    out = []
    for lk in lookups:
        if lk.written:
            out.append((inputs.index(lk.index), None, lk.axis, ranges[lk.index_name][1], lk))
        else:
            out.append((inputs.index(lk.index), inputs.index(lk.tensor), lk.axis, None, lk))
    return tuple(out)


_COPIES: dict[tuple[int, tuple[int, ...]], "Op"] = {}


def device_relayout(arr, perm: tuple[int, ...]):
    """A copy of a device array stored with its axes in physical order ``perm`` (an op of its own)."""
    rank = len(perm)
    copy = _COPIES.get((rank, perm))
    if copy is None:
        ix = ", ".join(f"i{k}" for k in range(rank))
        copy = _COPIES[(rank, perm)] = Op(f"B[{ix}] = A[{ix}]", schedule=(Layout("B", perm),))
    return copy.call_cuda((arr,), {})


def op(source: str, ranges: dict[str, Any] | None = None, pad: dict[str, Any] | None = None,
       pad_value: dict[str, float] | None = None, schedule: tuple = (), use_tuned: bool = True,
       precision: str = "fp32") -> Op:
    """Parse ``source`` into an :class:`Op` (names and syntax are checked now; shapes at call time).

    ``ranges`` bounds indices explicitly: ``{"i": 4}`` means 0 <= i < 4 and
    ``{"j": (1, 5)}`` means 1 <= j < 5. ``pad`` opts into zero padding: the op
    sees the input as if ``numpy.pad(x, widths)`` had been applied, so reads
    outside the real array give 0 (or ``pad_value[name]``). ``schedule`` gives schedule records;
    without them, calls run the tuned schedule stored for their inputs (``use_tuned=False``: never)
    or the default one (``op.schedule_for(*arrays)`` prints which). ``precision="tf32"`` opts into
    the GPU's tensor cores for contractions whose register tiles fit them (inputs rounded to TF32,
    sums in float32; see ``codegen.cuda_mma``); the CPU computes in the tensors' own precision.
    """
    return Op(source, ranges=ranges, pad=pad, pad_value=pad_value, schedule=schedule, use_tuned=use_tuned,
              precision=precision)
