"""The default schedule: a pass that returns schedule records, printable and replayable.

``default_schedule(bound, inputs, specs, threads)`` is what an op runs when it has no schedule of
its own and none is stored in the tuning database; ``op.schedule_for(*arrays)`` prints it, and the
tuner (``autotune.space``) starts its search from it. It decides:

* layouts (``default_layouts``): for the statements doing most of the work, the input layouts that
  give them a vector tile or a long contiguous reduction, where the copy per call is cheap next to
  the work; inputs read down rows that alias in L1 get padded rows (``pad_rows``), inputs a tile
  permutes anyway are packed in its panels (``_pack_tiles``);
* factored reductions (``rfactor.default_rfactor``): heavy reductions with nothing else to run on
  the cores are cut into pieces, one per thread;
* vector tiles (``default_tiles``, a pass of its own once the layouts give every tensor its strides):
  for every statement without loop records of its own, the default tile, spelled out as records;
  consecutive tiled statements reading one large tensor along an index both write on get it as their
  outermost loop, so they run fused over it (``_share_outer_loops``).

The rest (the loop order of a statement with no tile) is the rule ``schedule.order`` applies.
The layout candidates (``layout_candidates``) are also the tuner's layout space.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..lang.ir import Access
from ..strides import ITEMSIZE, permuted_strides
from ..target import ALIASED_ROW_BYTES, TILE_CACHE_BYTES
from .microkernel import (MIN_DEFAULT_SCORE, MIN_REDUCTION, columns_contiguous, default_dot_tile, default_tile,
                          packed_schedules, reduction_steps, tile_schedules)
from .order import default_order
from .lower import gather_form
from .records import Fuse, Layout, Record, Reorder, Split, to_json
from .rfactor import default_rfactor

TILE_LAYOUTS = 4  # layout candidates (best first) under which a heavy statement's tiles are sought


def default_tiles(bound, records: tuple[Record, ...], strides: dict[str, tuple[int, ...]]) -> tuple[Record, ...]:
    """``records`` plus, for every statement of ``bound`` (after Rfactor and blocking) without loop
    records of its own (Split, Reorder, Fuse) and not run in gather form, the default vector tile
    under these byte ``strides`` (``microkernel.default_tile``), or else its dot tile
    (``microkernel.default_dot_tile``), spelled out as records."""
    sizes = itemsizes(bound)
    out = list(records)
    for k, bs in enumerate(bound.statements):
        if gather_form(bs, "cpu") or any(isinstance(r, (Split, Reorder, Fuse)) and r.stmt == k for r in records):
            continue
        out += default_tile(bs, k, strides, sizes) or default_dot_tile(bs, k, strides, sizes) or ()
    given = {r.stmt for r in records if isinstance(r, (Split, Reorder, Fuse))}  # (a schedule's own: kept as is)
    return _share_outer_loops(bound, tuple(out), sizes, given)


SHARED_READ_BYTES = 1 << 20  # a tensor two statements read, larger than this: read it once (see below)
MIN_SHARED_EXTENT = 16  # the shared loop goes to the threads: enough points for every core


def _share_outer_loops(bound, records: tuple[Record, ...], sizes: dict[str, int], given: set[int]
                       ) -> tuple[Record, ...]:
    """Consecutive tiled statements that read one large tensor (more than ``SHARED_READ_BYTES``) along
    an index both write on (a capsule-vote gradient: ``dX[n, i, k]`` and ``dW[i, j, d, k]`` both read
    ``dU[n, i, j, d]``) get that index as their outermost loop, so ``schedule.fusion`` runs them in
    one nest over it: each point's slice of the tensor is read from memory once and again from cache,
    instead of the whole tensor twice. Only loops outside the default tiles, over written indices, move
    (any order of those computes the same); statements with loop records of the op's own (``given``)
    keep them."""
    orders = {r.stmt: r for r in records if isinstance(r, Reorder) and r.stmt not in given}
    moved: dict[int, Reorder] = {}
    for k in range(len(bound.statements) - 1):
        a, b = orders.get(k), orders.get(k + 1)
        if a is None or b is None:
            continue
        x = _shared_index(bound, k, a.order, b.order, sizes)
        if x is not None:
            for r in (a, b):
                moved[r.stmt] = Reorder(r.stmt, (x,) + tuple(n for n in moved.get(r.stmt, r).order if n != x))
    return tuple(moved.get(r.stmt, r) if isinstance(r, Reorder) else r for r in records)


def _outer_written(bs, order: tuple[str, ...]) -> list[str]:
    """The leading loops of a statement's order over its written indices (or splits of them)."""
    written = set(bs.stmt.write_names())
    out = []
    for name in order:
        if name not in written and name.rsplit("_", 1)[0] not in written:
            break
        out.append(name)
    return out


def _shared_index(bound, k: int, order_a: tuple[str, ...], order_b: tuple[str, ...],
                  sizes: dict[str, int]) -> str | None:
    """The index statements ``k`` and ``k + 1`` should share as their outermost loop, or None."""
    a, b = bound.statements[k], bound.statements[k + 1]
    extent_a, extent_b = ({n: hi - lo for n, lo, hi in s.extents} for s in (a, b))
    common = [x for x in _outer_written(a, order_a) if x in _outer_written(b, order_b) and x in extent_a and
              extent_a[x] == extent_b.get(x) and extent_a[x] >= MIN_SHARED_EXTENT]
    reads_b = {(acc.tensor, acc.index) for acc in b.stmt.accesses()}
    for acc in a.stmt.accesses():
        if (acc.tensor, acc.index) not in reads_b or \
                int(np.prod(bound.tensors[acc.tensor].shape)) * sizes[acc.tensor] < SHARED_READ_BYTES:
            continue
        for x in common:
            if any(lin.plain_var == x for lin in acc.index):
                return x
    return None


def default_schedule(bound, inputs: tuple[str, ...], specs: list, threads: int, as_given: frozenset = frozenset()
                     ) -> tuple[Record, ...]:
    """The default CPU schedule's records for ``bound`` (the op bound to these input ``specs``, after
    elementwise folding), for ``threads`` cores; the inputs named in ``as_given`` are read as they are
    given (no layout of the schedule's own: no copy per call)."""
    return default_rfactor(bound, threads, default_layouts(inputs, bound, specs, as_given))


def work(bs) -> int:
    return int(np.prod([hi - lo for _, lo, hi in bs.extents]))


def layout_candidates(inputs: tuple[str, ...], bound, arrays: list[np.ndarray], k: int | None = None) -> list[tuple[float, tuple[Record, ...]]]:
    """Layout candidates for statement ``k`` (the heaviest by default), best cost-model score first:
    a group of up to three indices made the innermost axes of every tensor they index, scored by
    the contiguous run (up to 64) times the accesses that walk it (reads count double), less the
    bytes of inputs copied per unit of work."""
    k = heaviest(bound) if k is None else k
    bs = bound.statements[k]
    st = bs.stmt
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    names = [n for n in bs.names if extent[n] > 1]
    uses = [(st.target, st.index, 1)] + [(a.tensor, a.index, 2) for a in dict.fromkeys(st.accesses())]
    sizes = {name: a.nbytes for name, a in zip(inputs, arrays)}
    amount = work(bs)
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
        score = min(run, 64) * covered - 4.0 * moved / max(amount, 1)
        schedule = tuple(Layout(t, p) for t, p in sorted(layouts.items()))
        key = to_json(schedule)
        if key not in scored or scored[key][0] < score:
            scored[key] = (score, schedule)
    return sorted(scored.values(), key=lambda s: -s[0])


def strides_under(inputs: tuple[str, ...], bound, arrays: list, base: tuple) -> dict[str, tuple[int, ...]]:
    """Every tensor's byte strides under the layouts in ``base`` (a blocked one, which has no strides
    per axis of the op's tensor, as the caller passes it)."""
    perms = {r.tensor: r.perm for r in base if isinstance(r, Layout) and not r.blocks}
    pads = {r.tensor: r.pad for r in base if isinstance(r, Layout) and not r.blocks}
    out = {}
    for name, info in bound.tensors.items():
        size = ITEMSIZE[info.dtype]
        if name in perms:
            out[name] = permuted_strides(info.shape, perms[name], size, pads[name])
        elif name in inputs:
            out[name] = tuple(arrays[inputs.index(name)].strides)
        else:
            out[name] = permuted_strides(info.shape, tuple(range(len(info.shape))), size)
    return out


def heaviest(bound) -> int:
    return max(range(len(bound.statements)), key=lambda j: work(bound.statements[j]))


def itemsizes(bound) -> dict[str, int]:
    return {t: ITEMSIZE[info.dtype] for t, info in bound.tensors.items()}


def packable(inputs: tuple[str, ...], bound, arrays: list, k: int) -> set[str]:
    """The inputs statement ``k`` may pack (``microkernel.packed_schedules``): read by no other statement
    (blocking rewrites every reader), not read with ``pad=`` and copied per call at most one byte per
    ``RELAYOUT_FLOPS`` flops."""
    others = set().union(*(tensors_of(b) for j, b in enumerate(bound.statements) if j != k))
    amount = work(bound.statements[k])
    return {name for name, a in zip(inputs, arrays)
            if name in tensors_of(bound.statements[k]) and name not in others and not bound.tensors[name].pad
            and a.nbytes * RELAYOUT_FLOPS <= 2 * amount}


RELAYOUT_FLOPS = 20  # a default may copy an input to a new layout when the op does this many flops per byte copied
LAYOUT_SHARE = 0.25  # ... for the statements doing at least this share of the op's work
MIN_REDUCTION_RUN = 32  # a contiguous innermost reduction this long vectorizes well without a tile


def default_layouts(inputs: tuple[str, ...], bound, arrays: list, as_given: frozenset = frozenset()
                    ) -> tuple[Record, ...]:
    """The default CPU schedule's layout choice. The statements doing at least ``LAYOUT_SHARE`` of the
    op's work, heaviest first, each keep the layouts chosen so far when they give it a vector tile
    (``microkernel.default_tile``); otherwise it may fix the layouts of tensors not fixed
    yet, taken from its first layout candidates (``candidates``):

    * the best-scoring tile under them that passes the default tile's rules, or else
    * a reduction run: an innermost group of reduction loops of at least ``MIN_REDUCTION_RUN``
      elements that every read walks contiguously (LLVM vectorizes the reduction), when the
      caller's layouts give no long contiguous innermost loop (a convolution's weight gradient with
      the batch index innermost: LeNet's second layer, 8.1 -> 2.3 ms);

    and only when the inputs it relays out are small next to its work (a copy per call of at most
    one byte per ``RELAYOUT_FLOPS`` flops). Layouts only: under them each statement gets its
    default tile when lowered. The capsule kernel: 128 ms -> 16.6 ms. The inputs in ``as_given`` keep
    the caller's layouts (neither permuted nor padded)."""
    itemsize = itemsizes(bound)
    sizes = {name: a.nbytes for name, a in zip(inputs, arrays)}
    total = sum(work(b) for b in bound.statements)
    chosen: tuple[Record, ...] = ()
    heavy = sorted((j for j, b in enumerate(bound.statements) if work(b) >= LAYOUT_SHARE * total),
                   key=lambda j: -work(bound.statements[j]))
    caller = strides_under(inputs, bound, arrays, ())
    # statements that already tile under the caller's layouts keep their tensors as they are
    kept = {t for j in heavy if default_tile(bound.statements[j], j, caller, itemsize) is not None
            for t in tensors_of(bound.statements[j])} | set(as_given)
    for k in heavy:
        bs = bound.statements[k]
        strides = strides_under(inputs, bound, arrays, chosen)
        if reduction_steps(bs) < MIN_REDUCTION or default_tile(bs, k, strides, itemsize) is not None:
            continue
        fixed = {r.tensor for r in chosen if isinstance(r, Layout)} | kept
        bases = [c for _, c in layout_candidates(inputs, bound, arrays, k)
                 if c and not fixed & {r.tensor for r in c if isinstance(r, Layout)}][:TILE_LAYOUTS]
        bases = [b for b in bases
                 if sum(sizes.get(r.tensor, 0) for r in b if isinstance(r, Layout)) * RELAYOUT_FLOPS <= 2 * work(bs)]
        pick = _tile_layouts(inputs, bound, arrays, k, chosen, bases, itemsize)
        if pick is None and _inner_run(bs, strides, itemsize, reduction=False) < MIN_REDUCTION_RUN:
            pick = _reduction_run_layouts(inputs, bound, arrays, k, chosen, bases, itemsize)
        chosen += pick or ()
    return _pack_tiles(inputs, bound, arrays, pad_rows(inputs, bound, arrays, chosen, total, as_given), heavy)


def _pack_tiles(inputs: tuple[str, ...], bound, arrays: list, chosen: tuple, heavy: list[int]) -> tuple[Record, ...]:
    """``chosen`` with the inputs it permutes (copies per call anyway) packed for the default tiles of
    the ``heavy`` statements, where they read them down a reduction (``microkernel.packed_schedules``,
    the column operands): the tile's records are then spelled out, as the default would make them.
    The capsule kernel's weights in panels of 16 output channels, in the order its tile reads them:
    13.9-14.1 -> 8.5-9.4 ms. (A matrix product's column panel, copied only to pad its rows
    otherwise, measured no faster packed: 17.0 vs 17.3 ms, so inputs not permuted stay as they are.)"""
    itemsize = itemsizes(bound)
    out = tuple(chosen)
    for k in heavy:
        permuted = {r.tensor for r in out if isinstance(r, Layout) and not r.pad and not r.blocks
                    and r.perm != tuple(range(len(r.perm)))} & packable(inputs, bound, arrays, k)
        if any(getattr(r, "stmt", None) == k for r in out) or not permuted:
            continue
        tile = default_tile(bound.statements[k], k, strides_under(inputs, bound, arrays, out), itemsize)
        if tile is None:
            continue
        for packed in packed_schedules(bound.statements[k], k, out + tile, permuted)[:1]:
            out = packed
    return out


MIN_PADDED_BYTES = 1 << 16  # smaller inputs stay in L1/L2 whatever their sets


def pad_rows(inputs: tuple[str, ...], bound, arrays: list, chosen: tuple, total: float,
             as_given: frozenset = frozenset()) -> tuple[Record, ...]:
    """``chosen`` with a cache line of padding after each row of every large input whose rows (the
    second-innermost physical axis) lie a multiple of ``ALIASED_ROW_BYTES`` bytes apart: a tile reading a
    column panel down such rows (a 1024-wide float32 matrix: 4 KB apart) finds them all in one
    cache set and misses L1 on each. Matmul 1024²: 40-45 -> 26-28 ms. Only when the copy costs at
    most one byte per ``RELAYOUT_FLOPS`` flops."""
    strides = strides_under(inputs, bound, arrays, chosen)
    given = {r.tensor: r for r in chosen if isinstance(r, Layout)}
    used = set().union(*(tensors_of(bs) for bs in bound.statements))
    padded = {}
    for pos, name in enumerate(inputs):
        if name not in used or name in as_given or name in given and given[name].blocks:  # an unused input (a
            continue  # gradient op's): never copied; a blocked one: packed; one to read as given: as given
        info, size = bound.tensors[name], ITEMSIZE[bound.tensors[name].dtype]
        perm = given[name].perm if name in given else tuple(range(len(info.shape)))
        dense = len(perm) >= 2 and strides[name] == permuted_strides(info.shape, perm, size)
        row = strides[name][perm[-2]] if dense else 0
        nbytes = arrays[pos].nbytes
        if row and row % ALIASED_ROW_BYTES == 0 and nbytes >= MIN_PADDED_BYTES and nbytes * RELAYOUT_FLOPS <= 2 * total:
            padded[name] = Layout(name, perm, 64 // size)
    out = [padded.pop(r.tensor) if isinstance(r, Layout) and r.tensor in padded else r for r in chosen]
    return tuple(out) + tuple(padded.values())


def tensors_of(bs) -> set[str]:
    return {bs.stmt.target} | {a.tensor for a in bs.stmt.accesses()}


def _tile_layouts(inputs: tuple[str, ...], bound, arrays, k: int, chosen: tuple, bases: list, itemsize) -> tuple | None:
    """The one of ``bases`` under which (with ``chosen``) statement ``k`` gets the best tile passing
    the default tile's rules; None if none does."""
    bs = bound.statements[k]
    best: tuple[float, tuple[Record, ...] | None] = (-float("inf"), None)
    for base in bases:
        strides = strides_under(inputs, bound, arrays, chosen + base)
        for score, records in tile_schedules(bs, k, strides, itemsize, chosen + base, max_footprint=TILE_CACHE_BYTES,
                                             min_reuse=MIN_DEFAULT_SCORE):
            if score > best[0] and columns_contiguous(bs, records, strides, itemsize):
                best = (score, base)
    return best[1]


def _reduction_run_layouts(inputs: tuple[str, ...], bound, arrays, k: int, chosen: tuple, bases: list, itemsize) -> tuple | None:
    """The first of ``bases`` under which (with ``chosen``) statement ``k``'s default innermost group is
    a reduction run of at least ``MIN_REDUCTION_RUN`` elements; None if none is."""
    bs = bound.statements[k]
    for base in bases:
        if _inner_run(bs, strides_under(inputs, bound, arrays, chosen + base), itemsize, reduction=True) >= MIN_REDUCTION_RUN:
            return base
    return None


def _inner_run(bs, strides: dict[str, tuple[int, ...]], itemsize: dict[str, int], reduction: bool) -> int:
    """Elements in the default order's innermost group when every access using it walks it with unit
    stride (the write too, unless ``reduction``: then the group must be reduction loops); else 0."""
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
