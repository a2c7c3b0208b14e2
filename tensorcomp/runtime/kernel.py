"""A compiled kernel for one input signature of an op, how it runs, and its manifest on disk.

``Kernel`` is what the compiler's last pass loads (``compiler.load``): the object code's entries,
the stages (one per top-level loop nest, parallel ones cut into slices for the thread pool), the
shapes of the outputs and temporaries, and the inputs it copies into a scheduled layout per call.
``run`` is the per-call hot path. A *manifest* is the JSON a new process needs to rebuild a
``Kernel`` from the object cache without binding, scheduling or generating code again.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..schedule.blocking import blocked_shape
from ..schedule.loopnest import For, IConst, If, LoopNest, Tile
from ..strides import padded_shape
from ..target import HUGE_PAGE_BYTES, PARALLEL_MIN_POINTS, slices_per_thread
from . import jit, objects
from .threads import all_serial, new_plan, run_stages

HUGE_MIN_BYTES = 4 << 20  # buffers this large are backed by huge pages where the system allows


@dataclass
class Kernel:
    """Everything compiled for one input signature of an op on the CPU."""

    bound: Any  # domain.Bound, or None: loaded from a manifest (op.loopnest(...) plans it again)
    nest: LoopNest | None
    compiled: jit.Compiled
    # per loop nest: (entry, the buffers it takes, lo, hi, slices per thread; 0: serial)
    stages: tuple[tuple[Any, tuple[int, ...], int, int, int], ...]
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
    # Which parallel stages run on the threads, decided from their first serial runs (``run_stages``):
    # handing a stage to the pool costs tens of microseconds, more than a small stage saves.
    plan: list = field(default_factory=list)
    serial: bool = False  # every stage decided serial: the whole-kernel entry runs them in one call
    # the manifest to store the plan in once every stage is decided (``store_plan``), or None
    plan_key: str | None = None


def decided(kernel: Kernel) -> bool:
    """Whether each stage that could go to the threads is decided (by runs in this process, or stored
    with the kernel's manifest by an earlier one)."""
    if kernel.threads <= 1:
        return True
    return len(kernel.plan) == len(kernel.stages) and all(
        isinstance(p, bool) or not slices or min(kernel.threads, hi - lo) <= 1
        for p, (_, _, lo, hi, slices) in zip(kernel.plan, kernel.stages))


def store_plan(kernel: Kernel) -> None:
    """Add the kernel's decided plan to its manifest, once: a new process loading the kernel runs its
    stages as decided here from the first call (no serial timing run; a compiled step that holds it
    is one native call from its first replay)."""
    key, kernel.plan_key = kernel.plan_key, None
    m = objects.read_manifest(key) if key else None
    if m is not None and "plan" not in m:
        objects.write_manifest(key, {**m, "plan": [p if isinstance(p, bool) else None for p in kernel.plan]})


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
    if isinstance(node, Tile):
        return _instances(node.reduction[0])
    return 1


def stages_of(compiled: jit.Compiled, nest: LoopNest, takes: list[tuple[int, ...]]) -> tuple:
    """(entry, buffers it takes, lo, hi, slices per thread) per top-level loop nest: a parallel one runs
    in slices of its outer loop, unless it is too small to repay handing slices to the pool (then, and
    for a serial one, slices is 0: it runs whole on the caller's thread)."""
    out = []
    for fn, node, take in zip(compiled.stages, nest.body, takes):
        if isinstance(node, For) and node.kind == "parallel":
            instances = _instances(node)
            out.append((fn, tuple(take), node.lo.value, node.hi.value,
                        slices_per_thread(instances) if instances >= PARALLEL_MIN_POINTS else 0))
        else:
            out.append((fn, tuple(take), 0, 1, 0))
    return tuple(out)


def to_manifest(kernel: Kernel, buffers: int) -> dict:
    """What ``from_manifest`` needs to rebuild ``kernel`` in a new process (JSON-ready)."""
    return {"object": kernel.compiled.name[len("tc_"):], "buffers": buffers,
            "stages": [[list(take), lo, hi, s] for _, take, lo, hi, s in kernel.stages], "threads": kernel.threads,
            "outputs": [[list(sh), dt.str] for sh, dt in kernel.outputs],
            "temporaries": [[list(sh), dt.str] for sh, dt in kernel.temporaries],
            "relayout": [[pos, list(perm), pad, [list(b) for b in blocks]]
                         for pos, perm, pad, blocks in kernel.relayout],
            "out_perms": [None if p is None else list(p) for p in kernel.out_perms]}


def from_manifest(m: dict | None, param_kinds: list[str]) -> Kernel | None:
    """The kernel manifest ``m`` describes, with its object code from the cache (None when either is
    missing or unreadable). ``param_kinds``: "float" or "int" per scalar parameter of the op."""
    if m is None:
        return None
    try:
        param_types = [ctypes.c_double if k == "float" else ctypes.c_int64 for k in param_kinds]
        takes = [tuple(int(k) for k in take) for take, *_ in m["stages"]]
        if any(k < 0 or k >= m["buffers"] for take in takes for k in take):
            return None
        compiled = jit.load_compiled(m["object"], m["buffers"], param_types, tuple(len(t) for t in takes))
        if compiled is None:
            return None
        kernel = Kernel(None, None, compiled, tuple((fn, take, lo, hi, s) for fn, take, (_, lo, hi, s) in
                                                  zip(compiled.stages, takes, m["stages"])), m["threads"],
                      tuple((tuple(sh), np.dtype(dt)) for sh, dt in m["outputs"]),
                      tuple((tuple(sh), np.dtype(dt)) for sh, dt in m["temporaries"]),
                      tuple(float if k == "float" else int for k in param_kinds),
                      tuple((pos, tuple(perm), pad, tuple(tuple(b) for b in blocks))
                            for pos, perm, pad, blocks in m["relayout"]),
                      tuple(None if p is None else tuple(p) for p in m["out_perms"]))
        plan = m.get("plan")  # (None: a stage that never goes to the threads)
        if isinstance(plan, list) and len(plan) == len(kernel.stages) and all(p in (True, False, None) for p in plan):
            kernel.plan = [p if isinstance(p, bool) else fresh for p, fresh in zip(plan, new_plan(kernel.stages))]
            kernel.serial = all_serial(kernel.stages, kernel.plan, kernel.threads)
            if not decided(kernel):
                kernel.plan, kernel.serial = [], False
        return kernel
    except (KeyError, TypeError, ValueError):
        return None


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
        m = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES)
        m.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return np.empty(shape, dtype)
    raw = np.frombuffer(m, np.uint8)
    start = -raw.__array_interface__["data"][0] % HUGE_PAGE_BYTES
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def relaid(arr: np.ndarray, perm: tuple[int, ...], pad: int, blocks: tuple, bufs: list, k: int) -> np.ndarray:
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
        buf = bufs[k] = kept_buffer(padded_shape(phys.shape, pad), arr.dtype)
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


def _new_outputs(kernel: Kernel, make) -> list[np.ndarray]:
    """Arrays from ``make(shape, dtype)`` for the kernel's outputs, each in its physical axis order."""
    return new_arrays(kernel.outputs, kernel.out_perms, make)


def new_arrays(outputs: tuple, perms: tuple | None, make) -> list[np.ndarray]:
    """Arrays from ``make(shape, dtype)`` for each ``(shape, dtype)`` of ``outputs``, each in its axis
    order (``perms``: one per output, None for C order)."""
    return [make(shape, dtype) if perm is None else
            make(tuple(shape[a] for a in perm), dtype).transpose(np.argsort(perm))
            for (shape, dtype), perm in zip(outputs, perms or (None,) * len(outputs))]


def run(kernel: Kernel, arrs: list[np.ndarray], scalars: list) -> list[np.ndarray]:
    """Run ``kernel`` on the input arrays (in the op's input order; ``arrs`` is changed in place when
    inputs are relaid) and its scalar parameters (already cast); returns the outputs."""
    relaid_bufs = None
    if kernel.relayout or kernel.out_perms:
        if kernel.relayout:
            relaid_bufs = kernel.spare_relaid.pop() if kernel.spare_relaid else [None] * len(kernel.relayout)
        for k, (pos, perm, pad, blocks) in enumerate(kernel.relayout):  # copied into the scheduled layout
            arrs[pos] = relaid(arrs[pos], perm, pad, blocks, relaid_bufs, k)
        outs = _new_outputs(kernel, np.empty)
    else:
        outs = [np.empty(shape, dtype) for shape, dtype in kernel.outputs]
    if kernel.temporaries:
        spare = kernel.spare
        temps = spare.pop() if spare else [kept_buffer(shape, dtype) for shape, dtype in kernel.temporaries]
    else:
        temps = None
    pyfn = kernel.compiled.pyfn
    if kernel.threads > 1 and not kernel.serial:
        ptrs = [a.__array_interface__["data"][0] for a in (*arrs, *outs, *(temps or ()))]
        if not kernel.plan:
            kernel.plan = new_plan(kernel.stages)
        run_stages(kernel.stages, ptrs, scalars, kernel.threads, kernel.plan)
        kernel.serial = all_serial(kernel.stages, kernel.plan, kernel.threads)
        if kernel.plan_key is not None and decided(kernel):
            store_plan(kernel)
    elif pyfn is not None:
        pyfn(*arrs, *outs, *(temps or ()), *scalars)
    else:
        ptrs = [a.__array_interface__["data"][0] for a in (*arrs, *outs, *(temps or ()))]
        kernel.compiled.fn(*ptrs, *scalars)
    if temps:
        kernel.spare.append(temps)
    if relaid_bufs is not None:
        kernel.spare_relaid.append(relaid_bufs)
    return outs
