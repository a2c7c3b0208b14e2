"""``tc.tune``: search schedules generated from the op itself, keep the fastest verified one.

The space, for the statement doing the most work (no per-op templates):

* layouts: every ordered group of one to three of its indices is a candidate innermost run;
  each tensor that the group indexes on plain axes gets a ``Layout`` that puts those axes
  last, in group order, and the default schedule orders that group innermost and fuses it
  into one contiguous, vectorizable loop. A cheap cost model ranks them (contiguous run
  length, how many tensors it covers, bytes of input relaid out per call);
* vector tiles (``schedule.microkernel``): under the default layouts and the best few layout
  candidates, rows x columns of written elements kept in SIMD registers across the whole
  reduction, ranked by multiply-adds per load;
* window orders: a convolution's window reductions moved outside its spatial loops, so the
  weights are reused from cache;
* a local search: from the best schedule measured so far, neighbours one step away (two
  adjacent outer loops swapped, a reduction split with its outer part moved outward) until
  none is faster or the budget is spent.

The cost model's first picks are measured first, then the local search, then the rest of the
layout candidates while budget remains. Candidates compile a batch at a time in worker processes
(``precompile``), one per core, before they are timed. Every candidate's output is compared with the
default schedule's before its time counts; candidates that fail to compile or verify are
skipped with the reason recorded.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ArgumentError, TensorcompError
from ..op import ArraySpec, Op
from ..runtime import host_target
from ..runtime.threads import num_threads
from ..schedule.microkernel import L1_BYTES, neighbours
from ..schedule.records import Layout, Record, from_json, to_json
from ..schedule.rfactor import default_rfactor, rfactor_variants

from . import canon, database
from .precompile import Precompiler

WINDOW_VARIANTS = 4  # layout candidates (best first) that are also tried with the window loop order
TILE_LAYOUTS = 4  # layout candidates (best first) under which vector tiles are generated
EXTRA_BLOCKS = (L1_BYTES // 2, 2 * L1_BYTES, 4 * L1_BYTES)  # ... and these, when budget is left at the end
TILES_PER_LAYOUT = 3  # best-scoring vector tiles tried under each
FIRST_TRIALS = 24  # candidates measured before the local search around the best one
FINALISTS = 3  # the fastest candidates timed again (with the default) in the last part of the budget
FINAL_SHARE = 0.1  # ... that part; on a shared machine one round of timings can land in a busy moment
FINAL_ROUNDS = 3
RUNNERS_UP = 4  # with budget left after every candidate: the schedules whose neighbours are tried next


@dataclass
class TuneResult:
    """What ``tc.tune`` found: the best schedule, its time, and every trial."""

    schedule: tuple[Record, ...]
    best_s: float
    default_s: float
    flops: float
    tuning_s: float
    trials: list[dict] = field(default_factory=list)
    stopped: str = ""  # why the search ended before the budget did, if it did

    @property
    def speedup(self) -> float:
        return self.default_s / self.best_s

    def summary(self) -> str:
        ok = [t for t in self.trials if "seconds" in t]
        lines = [f"tried {len(self.trials)} schedules in {self.tuning_s:.1f} s ({len(ok)} verified and timed, "
                 f"{len(self.trials) - len(ok)} skipped)",
                 f"default {self.default_s * 1e3:.2f} ms -> best {self.best_s * 1e3:.2f} ms "
                 f"({self.speedup:.1f}x; {self.flops / self.best_s / 1e9:.1f} GFLOP/s)",
                 f"best schedule: {list(self.schedule) or 'the default'}"]
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        return "\n".join(lines)


# The search ends once its best reaches this fraction of the machine's gemm speed. Not lower: a
# best-of-N time on a shared machine runs ahead of later timings (the capsule kernel: 8.3 ms in the
# search, 9.3 ms after), and 0.95 of a 1024² gemm ended a 60 s capsule search after 3 candidates.
NEAR_CEILING = 1.0
GEMM_N = 2048  # the ceiling's matrix size (as bench/: OpenBLAS runs a smaller one slower)
_CEILINGS: dict[str, float] = {}


def gemm_ceiling(dtype: str, again: bool = False) -> float | None:
    """GFLOP/s of numpy's (BLAS) ``GEMM_N``² matrix product in ``dtype`` on this machine, best of 2,
    measured once per process (``again``: measured again, the best of both kept: a busy moment only
    ever lowers it); None for dtypes without one."""
    if dtype not in ("float32", "float64"):
        return None
    if dtype not in _CEILINGS or again:
        a = np.random.default_rng(0).standard_normal((GEMM_N, GEMM_N)).astype(dtype)
        best = _measure(lambda: a @ a, 2, float("inf"))
        _CEILINGS[dtype] = max(_CEILINGS.get(dtype, 0.0), 2 * GEMM_N ** 3 / best / 1e9)
    return _CEILINGS[dtype]


def signature(arrays: list[np.ndarray], params: dict[str, Any]) -> tuple:
    return (tuple((a.shape, a.strides, a.dtype.str) for a in arrays),
            tuple(sorted((k, type(v).__name__) for k, v in params.items())))


def target_key(target: str = "cpu") -> str:
    """What a tuned schedule is specific to: the CPU model and features, or the GPU and its driver."""
    if target == "cuda":
        from ..runtime import cuda
        return cuda.device_key()
    return "cpu " + host_target()


def db_key(op: Op, arrays: list, params: dict[str, Any], target: str = "cpu") -> str:
    return database.make_key(op.canonical(), signature(arrays, params), target_key(target))


def stored_schedule(op: Op, arrays: list, params: dict[str, Any], target: str = "cpu") -> tuple[Record, ...] | None:
    """The tuned schedule for these inputs from the database, in the op's own names."""
    if target == "cuda":
        from ..runtime import cuda
        if not cuda.available():  # op.code(target="cuda") without a GPU: the default schedule
            return None
    hit = database.lookup(db_key(op, arrays, params, target))
    if hit is None:
        return None
    back = {v: k for k, v in canon.names_map(op.program).items()}
    return canon.rename_records(from_json(hit[0]), back)


def _work(bs) -> int:
    return int(np.prod([hi - lo for _, lo, hi in bs.extents]))


def candidates(op: Op, bound, arrays: list[np.ndarray], k: int | None = None) -> list[tuple[float, tuple[Record, ...]]]:
    """Layout candidates for statement ``k`` (the heaviest by default), best cost-model score first:
    a group of up to three indices made the innermost axes of every tensor they index, scored by
    the contiguous run (up to 64) times the accesses that walk it (reads count double), less the
    bytes of inputs copied per unit of work."""
    k = _heaviest(bound) if k is None else k
    bs = bound.statements[k]
    st = bs.stmt
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    names = [n for n in bs.names if extent[n] > 1]
    uses = [(st.target, st.index, 1)] + [(a.tensor, a.index, 2) for a in dict.fromkeys(st.accesses())]
    sizes = {name: a.nbytes for name, a in zip(op.inputs, arrays)}
    work = _work(bs)
    scored: dict[str, tuple[float, tuple[Record, ...]]] = {}
    groups = [(a,) for a in names] + list(itertools.permutations(names, 2)) + list(itertools.permutations(names, 3))
    for group in groups:
        run = int(np.prod([extent[g] for g in group]))
        if len(group) > 1 and run > 512:
            continue
        layouts: dict[str, tuple[int, ...]] = {}
        covered = 0
        moved = 0
        for tensor, index, weight in uses:
            axes = [next((ax for ax, lin in enumerate(index) if lin.plain_var == g), None) for g in group]
            if None in axes:
                continue
            covered += weight
            perm = tuple([a for a in range(len(index)) if a not in axes] + axes)
            if perm != tuple(range(len(index))):
                layouts[tensor] = perm
                moved += sizes.get(tensor, 0)
        if not covered:
            continue
        score = min(run, 64) * covered - 4.0 * moved / max(work, 1)
        schedule = tuple(Layout(t, p) for t, p in sorted(layouts.items()))
        key = to_json(schedule)
        if key not in scored or scored[key][0] < score:
            scored[key] = (score, schedule)
    return sorted(scored.values(), key=lambda s: -s[0])


def verify(outs, refs) -> None:
    """Raise ValueError unless a candidate's outputs match the default schedule's."""
    for got, want in zip(outs, refs):
        tol = 1e-3 if want.dtype == np.float32 else 1e-9
        scale = float(np.abs(want).max(initial=0.0)) or 1.0
        if not np.allclose(got, want, rtol=tol, atol=tol * scale):
            raise ValueError("output differs from the default schedule's")


def window_order(bs, strides: dict[str, tuple[int, ...]], itemsize: dict[str, int]) -> tuple | None:
    """The default loop order with the window reductions (``k`` in ``I[2*y + k]``) moved together just
    outside the first written index they slide with (never outermost), and the default's fused
    innermost group; None when the statement has no window. Tensors that do not depend on the window
    position (a convolution's weights) are then reused from cache across every position."""
    from ..schedule.plan import default_order
    order, group = default_order(bs, strides, itemsize)
    written = bs.stmt.write_names()
    outer = [n for n in order if n not in group]
    uses = [bs.stmt.index] + [a.index for a in bs.stmt.accesses()]
    windows, slots = [], []
    for r in [n for n in outer if n not in written]:
        partners = {w for index in uses for lin in index if r in set(lin.names())
                    for w in lin.names() if w in written and w != r and w in outer}
        if partners:
            windows.append(r)
            slots += [outer.index(w) for w in partners]
    if not windows or min(slots) == 0 or all(outer.index(r) < min(slots) for r in windows):
        return None
    first = outer[min(slots)]
    rest = [n for n in outer if n not in windows]
    at = rest.index(first)
    return tuple(rest[:at] + windows + rest[at:] + list(group)), len(group)


def _strides(op: Op, bound, arrays: list, base: tuple) -> dict[str, tuple[int, ...]]:
    """Every tensor's byte strides under the layouts in ``base`` (a blocked one, which has no strides
    per axis of the op's tensor, as the caller passes it)."""
    from ..codegen.llvm import ITEMSIZE
    from ..op import permuted_strides
    perms = {r.tensor: r.perm for r in base if isinstance(r, Layout) and not r.blocks}
    pads = {r.tensor: r.pad for r in base if isinstance(r, Layout) and not r.blocks}
    out = {}
    for name, info in bound.tensors.items():
        size = ITEMSIZE[info.dtype]
        if name in perms:
            out[name] = permuted_strides(info.shape, perms[name], size, pads[name])
        elif name in op.inputs:
            out[name] = tuple(arrays[op.inputs.index(name)].strides)
        else:
            out[name] = permuted_strides(info.shape, tuple(range(len(info.shape))), size)
    return out


def _heaviest(bound) -> int:
    return max(range(len(bound.statements)), key=lambda j: _work(bound.statements[j]))


def _itemsizes(bound) -> dict[str, int]:
    from ..codegen.llvm import ITEMSIZE
    return {t: ITEMSIZE[info.dtype] for t, info in bound.tensors.items()}


def _with_window_orders(op: Op, bound, arrays: list, cands: list) -> list:
    """After each of the first layout candidates (and the default), the same with the window order."""
    from ..schedule.records import Fuse, Reorder
    k = _heaviest(bound)
    bs = bound.statements[k]
    itemsize = _itemsizes(bound)
    out: list = []
    for base in [()] + cands[:WINDOW_VARIANTS]:
        found = window_order(bs, _strides(op, bound, arrays, base), itemsize)
        if base:
            out.append(base)
        if found is not None:
            order, fused = found
            out.append(tuple(base) + (Reorder(k, order),) + (Fuse(k, "", ""),) * max(0, fused - 1))
    return out + cands[WINDOW_VARIANTS:]


def tile_candidates(op: Op, bound, arrays: list, layouts: list, blocks: tuple = (None, L1_BYTES)
                    ) -> list[tuple[Record, ...]]:
    """Vector-tile schedules (see schedule.microkernel) under the default layouts and the first
    layout candidates, for each statement doing at least a quarter of the heaviest one's work: the
    best few of each, in layout-candidate order, each followed by the same tile with its reduction
    blocked to fit the L1 cache (the blocks' outer loops outside the tile loops, so the tiles that
    follow reuse each block of the operands from L1: capsule kernel 11.5-12.9 -> 8.2-8.7 ms). Then
    the same for tiles whose rows or columns leave peeled tails (matmul 1024²: 6 x 16, 4 x 24).
    Each tile is followed by its packed variants (``microkernel.packed_schedules``: capsule kernel
    tiles 10.2-14.1 -> 8.5-9.0 ms with the weights in panels).
    ``blocks``: the reduction blocks each tile is generated with (None: the default's rule)."""
    from ..schedule.microkernel import packed_schedules, tile_schedules
    heaviest = _work(bound.statements[_heaviest(bound)])
    itemsize = _itemsizes(bound)
    copyable = [_packable(op, bound, arrays, k) for k in range(len(bound.statements))]
    out: list = []
    for tails in (False, True):  # tiles leaving peeled tails after all the others
        for base in [()] + layouts[:TILE_LAYOUTS]:
            strides = _strides(op, bound, arrays, base)
            for k, bs in enumerate(bound.statements):  # every statement doing a good part of the work
                if _work(bs) * 4 < heaviest:
                    continue
                pairs = [sorted(tile_schedules(bs, k, strides, itemsize, tuple(base), block=block, tails=tails),
                                key=lambda sc: -sc[0])[:TILES_PER_LAYOUT] for block in blocks]
                for found in itertools.zip_longest(*pairs):
                    for sc in found:
                        if sc is not None:  # each tile, then the same with its operands packed
                            out += [sc[1]] + packed_schedules(bs, k, sc[1], copyable[k])
    return list(dict.fromkeys(out))


def _packable(op: Op, bound, arrays: list, k: int) -> set[str]:
    """The inputs statement ``k`` may pack (``microkernel.packed_schedules``): read by no other statement
    (blocking rewrites every reader), not read with ``pad=`` and copied per call at most one byte per
    ``RELAYOUT_FLOPS`` flops."""
    others = set().union(*(_tensors(b) for j, b in enumerate(bound.statements) if j != k))
    work = _work(bound.statements[k])
    return {name for name, a in zip(op.inputs, arrays)
            if name in _tensors(bound.statements[k]) and name not in others and not bound.tensors[name].pad
            and a.nbytes * RELAYOUT_FLOPS <= 2 * work}


RELAYOUT_FLOPS = 20  # a default may copy an input to a new layout when the op does this many flops per byte copied
LAYOUT_SHARE = 0.25  # ... for the statements doing at least this share of the op's work
MIN_REDUCTION_RUN = 32  # a contiguous innermost reduction this long vectorizes well without a tile


def default_layouts(op: Op, bound, arrays: list) -> tuple[Record, ...]:
    """The default CPU schedule's layout choice. The statements doing at least ``LAYOUT_SHARE`` of the
    op's work, heaviest first, each keep the layouts chosen so far when they give it a vector tile
    (``schedule.microkernel.default_tile``); otherwise it may fix the layouts of tensors not fixed
    yet, taken from its first layout candidates (``candidates``):

    * the best-scoring tile under them that passes the default tile's rules, or else
    * a reduction run: an innermost group of reduction loops of at least ``MIN_REDUCTION_RUN``
      elements that every read walks contiguously (LLVM vectorizes the reduction), when the
      caller's layouts give no long contiguous innermost loop (a convolution's weight gradient with
      the batch index innermost: LeNet's second layer, 8.1 -> 2.3 ms);

    and only when the inputs it relays out are small next to its work (a copy per call of at most
    one byte per ``RELAYOUT_FLOPS`` flops). Layouts only: under them each statement gets its
    default tile when lowered. The capsule kernel: 128 ms -> 16.6 ms."""
    from ..schedule.microkernel import MIN_REDUCTION, default_tile, reduction_steps
    itemsize = _itemsizes(bound)
    sizes = {name: a.nbytes for name, a in zip(op.inputs, arrays)}
    total = sum(_work(b) for b in bound.statements)
    chosen: tuple[Record, ...] = ()
    heavy = sorted((j for j, b in enumerate(bound.statements) if _work(b) >= LAYOUT_SHARE * total),
                   key=lambda j: -_work(bound.statements[j]))
    caller = _strides(op, bound, arrays, ())
    # statements that already tile under the caller's layouts keep their tensors as they are
    kept = {t for j in heavy if default_tile(bound.statements[j], j, caller, itemsize) is not None
            for t in _tensors(bound.statements[j])}
    for k in heavy:
        bs = bound.statements[k]
        strides = _strides(op, bound, arrays, chosen)
        if reduction_steps(bs) < MIN_REDUCTION or default_tile(bs, k, strides, itemsize) is not None:
            continue
        fixed = {r.tensor for r in chosen if isinstance(r, Layout)} | kept
        bases = [c for _, c in candidates(op, bound, arrays, k)
                 if c and not fixed & {r.tensor for r in c if isinstance(r, Layout)}][:TILE_LAYOUTS]
        bases = [b for b in bases
                 if sum(sizes.get(r.tensor, 0) for r in b if isinstance(r, Layout)) * RELAYOUT_FLOPS <= 2 * _work(bs)]
        pick = _tile_layouts(op, bound, arrays, k, chosen, bases, itemsize)
        if pick is None and _inner_run(bs, strides, itemsize, reduction=False) < MIN_REDUCTION_RUN:
            pick = _reduction_run_layouts(op, bound, arrays, k, chosen, bases, itemsize)
        chosen += pick or ()
    return _pack_tiles(op, bound, arrays, _pad_rows(op, bound, arrays, chosen, total), heavy)


def _pack_tiles(op: Op, bound, arrays: list, chosen: tuple, heavy: list[int]) -> tuple[Record, ...]:
    """``chosen`` with the inputs it permutes (copies per call anyway) packed for the default tiles of
    the ``heavy`` statements, where they read them down a reduction (``microkernel.packed_schedules``,
    the column operands): the tile's records are then spelled out, as the default would make them.
    The capsule kernel's weights in panels of 16 output channels, in the order its tile reads them:
    13.9-14.1 -> 8.5-9.4 ms. (A matrix product's column panel, copied only to pad its rows
    otherwise, measured no faster packed: 17.0 vs 17.3 ms, so inputs not permuted stay as they are.)"""
    from ..schedule.microkernel import default_tile, packed_schedules
    itemsize = _itemsizes(bound)
    out = tuple(chosen)
    for k in heavy:
        permuted = {r.tensor for r in out if isinstance(r, Layout) and not r.pad and not r.blocks
                    and r.perm != tuple(range(len(r.perm)))} & _packable(op, bound, arrays, k)
        if any(getattr(r, "stmt", None) == k for r in out) or not permuted:
            continue
        tile = default_tile(bound.statements[k], k, _strides(op, bound, arrays, out), itemsize)
        if tile is None:
            continue
        for packed in packed_schedules(bound.statements[k], k, out + tile, permuted)[:1]:
            out = packed
    return out


ALIASED_ROW = 1024  # rows this many bytes apart (or a multiple) fall into at most 4 of L1's 64 sets
MIN_PADDED_BYTES = 1 << 16  # smaller inputs stay in L1/L2 whatever their sets


def _pad_rows(op: Op, bound, arrays: list, chosen: tuple, total: float) -> tuple[Record, ...]:
    """``chosen`` with a cache line of padding after each row of every large input whose rows (the
    second-innermost physical axis) lie a multiple of ``ALIASED_ROW`` bytes apart: a tile reading a
    column panel down such rows (a 1024-wide float32 matrix: 4 KB apart) finds them all in one
    cache set and misses L1 on each. Matmul 1024²: 40-45 -> 26-28 ms. Only when the copy costs at
    most one byte per ``RELAYOUT_FLOPS`` flops."""
    from ..codegen.llvm import ITEMSIZE
    from ..op import permuted_strides
    strides = _strides(op, bound, arrays, chosen)
    given = {r.tensor: r for r in chosen if isinstance(r, Layout)}
    used = set().union(*(_tensors(bs) for bs in bound.statements))
    padded = {}
    for pos, name in enumerate(op.inputs):
        if name not in used or name in given and given[name].blocks:  # an unused input (a gradient op's):
            continue  # never copied; a blocked one: packed
        info, size = bound.tensors[name], ITEMSIZE[bound.tensors[name].dtype]
        perm = given[name].perm if name in given else tuple(range(len(info.shape)))
        dense = len(perm) >= 2 and strides[name] == permuted_strides(info.shape, perm, size)
        row = strides[name][perm[-2]] if dense else 0
        nbytes = arrays[pos].nbytes
        if row and row % ALIASED_ROW == 0 and nbytes >= MIN_PADDED_BYTES and nbytes * RELAYOUT_FLOPS <= 2 * total:
            padded[name] = Layout(name, perm, 64 // size)
    out = [padded.pop(r.tensor) if isinstance(r, Layout) and r.tensor in padded else r for r in chosen]
    return tuple(out) + tuple(padded.values())


def _tensors(bs) -> set[str]:
    return {bs.stmt.target} | {a.tensor for a in bs.stmt.accesses()}


def _tile_layouts(op: Op, bound, arrays, k: int, chosen: tuple, bases: list, itemsize) -> tuple | None:
    """The one of ``bases`` under which (with ``chosen``) statement ``k`` gets the best tile passing
    the default tile's rules; None if none does."""
    from ..schedule.microkernel import CACHE_BYTES, MIN_DEFAULT_SCORE, columns_contiguous, tile_schedules
    bs = bound.statements[k]
    best: tuple[float, tuple[Record, ...] | None] = (-float("inf"), None)
    for base in bases:
        strides = _strides(op, bound, arrays, chosen + base)
        for score, records in tile_schedules(bs, k, strides, itemsize, chosen + base, max_footprint=CACHE_BYTES,
                                             min_reuse=MIN_DEFAULT_SCORE):
            if score > best[0] and columns_contiguous(bs, records, strides, itemsize):
                best = (score, base)
    return best[1]


def _reduction_run_layouts(op: Op, bound, arrays, k: int, chosen: tuple, bases: list, itemsize) -> tuple | None:
    """The first of ``bases`` under which (with ``chosen``) statement ``k``'s default innermost group is
    a reduction run of at least ``MIN_REDUCTION_RUN`` elements; None if none is."""
    bs = bound.statements[k]
    for base in bases:
        if _inner_run(bs, _strides(op, bound, arrays, chosen + base), itemsize, reduction=True) >= MIN_REDUCTION_RUN:
            return base
    return None


def _inner_run(bs, strides: dict[str, tuple[int, ...]], itemsize: dict[str, int], reduction: bool) -> int:
    """Elements in the default order's innermost group when every access using it walks it with unit
    stride (the write too, unless ``reduction``: then the group must be reduction loops); else 0."""
    from ..lang.ir import Access
    from ..schedule.plan import default_order
    order, group = default_order(bs, strides, itemsize)
    group = list(group) or [order[-1]]
    written = set(bs.stmt.write_names())
    if reduction and any(n in written for n in group):
        return 0
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    inner = group[-1]
    for a in [*bs.stmt.accesses(), Access(bs.stmt.target, bs.stmt.index)]:
        axes = [ax for ax, lin in enumerate(a.index) if inner in lin.names()]
        if axes:
            axis = min(axes, key=lambda ax: abs(strides[a.tensor][ax]))  # where the loop moves least
            if abs(strides[a.tensor][axis]) != itemsize[a.tensor] or a.index[axis].plain_var != inner:
                return 0
    return int(np.prod([extent[n] for n in group]))


def _measure(fn, repeats: int, give_up_after: float) -> float:
    fn()  # warm-up (and the first-call compile)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if best > give_up_after:  # far slower than the best so far: stop timing it
            break
    return best


def _flops(bound) -> float:
    return float(sum(_work(bs) for bs in bound.statements)) * 2


def tune(op: Op, *inputs: Any, budget_s: float | None = None, trials: int | None = None,
         progress: bool = True, target: str = "cpu", **params: Any) -> TuneResult:
    """Search schedules for ``op`` on these inputs; store the best in the tuning database.

    ``budget_s`` bounds the wall-clock time (default 60 s), ``trials`` the number of
    candidates measured. Afterwards ``op(*inputs)`` — in this process or a new one —
    runs the best schedule found. ``target="cuda"`` tunes the GPU kernel (register
    tiles, block size, layouts) and stores it under the GPU's own key.
    """
    if not isinstance(op, Op):
        raise ArgumentError(f"tc.tune expects an op made by tc.op or tc.grad, got {type(op).__name__}")
    if op.schedule:
        raise ArgumentError(f"{op.label}: tc.tune searches schedules itself; pass the op without schedule=")
    if target not in ("cpu", "cuda"):
        raise ArgumentError(f"{op.label}: unknown target '{target}'; available targets: cpu, cuda")
    budget = 60.0 if budget_s is None else float(budget_s)
    if target == "cuda":
        from .gpu import tune_cuda
        return tune_cuda(op, inputs, budget, trials, progress, params)
    t_start = time.perf_counter()
    arrays = [a if isinstance(a, np.ndarray) else np.asarray(a) for a in inputs]
    kinds = op._check_call(tuple(arrays), params)
    bound = op._kernel_bound([ArraySpec(a.shape, a.dtype, a.strides) for a in arrays], kinds)
    flops = _flops(bound)

    default = op.with_schedule(())
    default._no_database = True
    layouts = [c for _, c in candidates(op, bound, arrays) if c]
    cands = tile_candidates(op, bound, arrays, layouts) + _with_window_orders(op, bound, arrays, layouts)
    # other pieces for the reductions writing few elements (a dot product, a sum): first, few and cheap
    cands = rfactor_variants(bound, num_threads(), default_layouts(op, bound, arrays)) + cands

    def padded(cand: tuple) -> tuple:  # every candidate pads rows and factors reductions as the default does
        return default_rfactor(bound, num_threads(), _pad_rows(op, bound, arrays, cand, flops / 2))
    cands = list(dict.fromkeys(padded(c) for c in cands))
    first, later = cands[:FIRST_TRIALS], cands[FIRST_TRIALS:]
    deadline = t_start + budget * (1 - FINAL_SHARE)
    pre = Precompiler(op, arrays, params)
    pre.submit(first)  # the workers compile the first batch while this process compiles the default
    ref = default(*arrays, **params)
    refs = ref if isinstance(ref, tuple) else (ref,)
    pre.wait(deadline)
    default_s = _measure(lambda: default(*arrays, **params), 3, float("inf"))
    best_s, best = default_s, ()
    log: list[dict] = [{"schedule": "[]", "seconds": default_s}]
    limit = float("inf") if trials is None else trials  # no trial limit: the budget decides
    bar = _progress(len(cands) if trials is None else trials, progress)
    tried: set[str] = {"[]"}
    k = _heaviest(bound)
    rng = random.Random(0)

    def attempt(cand: tuple, upcoming: list) -> float | None:
        """Compile (with the candidates after it, see ``Precompiler``), verify and time ``cand``."""
        pre.ready([cand] + [c for c in upcoming[:8] if to_json(c) not in tried], deadline)
        entry: dict[str, Any] = {"schedule": to_json(cand)}
        tried.add(entry["schedule"])
        seconds = None
        try:
            trial = default.with_schedule(cand)
            trial._no_database = True
            out = trial(*arrays, **params)
            verify(out if isinstance(out, tuple) else (out,), refs)
            seconds = _measure(lambda: trial(*arrays, **params), 3, 2 * best_s)
            entry["seconds"] = seconds
        except (TensorcompError, ValueError) as exc:
            entry["skipped"] = str(exc)
        log.append(entry)
        if bar is not None:
            bar.set_postfix_str(f"best {flops / min(best_s, seconds or best_s) / 1e9:.1f} GFLOP/s")
            bar.update(1)
        return seconds

    ceiling = gemm_ceiling(bound.statements[k].dtype)
    stopped = ""

    def left() -> bool:
        nonlocal stopped
        if ceiling is not None and not stopped and flops / best_s / 1e9 >= NEAR_CEILING * ceiling:
            again = gemm_ceiling(bound.statements[k].dtype, again=True)  # (not lowered by a busy moment)
            if flops / best_s / 1e9 >= NEAR_CEILING * again:
                stopped = (f"the best, {flops / best_s / 1e9:.1f} GFLOP/s, is {flops / best_s / 1e9 / again:.2f} of "
                           f"this machine's gemm ({again:.1f} GFLOP/s)")
        return not stopped and time.perf_counter() - t_start < budget * (1 - FINAL_SHARE) and len(log) - 1 < limit

    def measure_all(cands: list, until_better: bool = False) -> bool:
        """Measure those of ``cands`` not tried yet, in turn, while budget lasts; True when one beat the
        best so far (with ``until_better``, the search stops there)."""
        nonlocal best_s, best
        better = False
        for i, cand in enumerate(cands):
            if not left():
                break
            if to_json(cand) in tried:
                continue
            seconds = attempt(cand, cands[i + 1:])
            if seconds is not None and seconds < best_s:
                best_s, best, better = seconds, cand, True
                if until_better:
                    break
        return better

    # the cost model's first picks, then a local search around the best, then the rest
    measure_all(first)
    while left():
        steps = [c for c in map(padded, neighbours(best, bound.statements[k], k)) if to_json(c) not in tried]
        rng.shuffle(steps)
        if not measure_all(steps, until_better=True):
            break
    if left():  # last, while budget lasts: the tiles again with other reduction blocks (matmul 1024²
        # runs out of candidates in ~12 s of a 60 s budget)
        later += tile_candidates(op, bound, arrays, layouts, blocks=EXTRA_BLOCKS)
    measure_all(list(dict.fromkeys(map(padded, later))))
    # budget left after every candidate (matmul 1024²: all tried in ~19 s of 60): one step from each
    # of the runners-up too, the fastest first
    ranked = sorted((e["seconds"], e["schedule"]) for e in log if e.get("seconds") is not None)
    for _, sched in ranked[1:1 + RUNNERS_UP]:
        if not left():
            break
        measure_all([c for c in map(padded, neighbours(from_json(sched), bound.statements[k], k))])
    if bar is not None:
        bar.close()
    times = _final_round(default, arrays, params, log, best,
                         t_start + budget if not stopped else time.perf_counter() + FINAL_SHARE * budget)
    winner = min(times, key=times.__getitem__)
    best, best_s, default_s = from_json(winner), times[winner], times["[]"]
    m = canon.names_map(op.program)
    database.store(db_key(op, arrays, params), op.canonical(), signature(arrays, params),
                   "cpu " + host_target(), to_json(canon.rename_records(best, m)), best_s, log)
    op._forget_kernels()
    op(*arrays, **params)  # compiled under the stored schedule, with a manifest: a new process starts at once
    return TuneResult(best, best_s, default_s, flops, time.perf_counter() - t_start, log, stopped)


def _final_round(default: Op, arrays: list, params: dict, log: list[dict], best: tuple,
                 deadline: float) -> dict[str, float]:
    """Time the fastest few candidates and the default again, in turns, up to ``FINAL_ROUNDS`` times
    each while the budget lasts, and note each one's best time in its log entry as
    ``final_seconds``; returns {schedule JSON: best time of all its timings}. Times on a shared
    machine only ever come out too slow, so a candidate timed in a busy moment gets another chance."""
    timed = sorted((e["seconds"], e["schedule"]) for e in log if e.get("seconds") is not None)
    finalists = list(dict.fromkeys([to_json(best), "[]"] + [sched for _, sched in timed]))[:FINALISTS + 1]
    times = {sched: min(t for t, sc in timed if sc == sched) for sched in finalists}
    if len(finalists) < 2:
        return times
    ops = {sched: default.with_schedule(from_json(sched)) for sched in finalists}
    for trial in ops.values():
        trial._no_database = True
    turns = [(sched, trial) for _ in range(FINAL_ROUNDS) for sched, trial in ops.items()]
    for sched, trial in turns:  # a slow kernel's turns stop at the deadline (the rest keep their times)
        if time.perf_counter() >= deadline:
            break
        times[sched] = min(times[sched], _measure(lambda: trial(*arrays, **params), 2, float("inf")))
    for entry in log:
        if entry.get("schedule") in times:
            entry["final_seconds"] = times[entry["schedule"]]
    return times


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="tuning", unit="schedule", leave=False)
