"""The search space: candidate schedules generated from the op itself (no per-op templates).

For the statement doing the most work:

* layouts (``schedule.default.layout_candidates``): every ordered group of one to three of its
  indices is a candidate innermost run; each tensor that the group indexes on plain axes gets a
  ``Layout`` that puts those axes last, in group order; a cheap cost model ranks them;
* vector tiles (``schedule.microkernel``): under the default layouts and the best few layout
  candidates, rows x columns of written elements kept in SIMD registers across the whole
  reduction, ranked by multiply-adds per load, each also with its operands packed;
* window orders: a convolution's window reductions moved outside its spatial loops, so the
  weights are reused from cache;
* Rfactor pieces for reductions writing few elements (``schedule.rfactor.rfactor_variants``);
* neighbours of a schedule (``schedule.microkernel.neighbours``) for the local search.

Every candidate pads rows and factors reductions as the default does (``finish``).
"""

from __future__ import annotations

import itertools

from ..schedule.default import (default_layouts, heaviest, itemsizes, layout_candidates, packable, pad_rows,
                                strides_under, work)
from ..schedule.microkernel import neighbours, packed_schedules, tile_schedules
from ..schedule.order import default_order
from ..schedule.records import Fuse, Record, Reorder
from ..schedule.rfactor import default_rfactor, rfactor_variants
from ..target import L1_BYTES, num_threads

WINDOW_VARIANTS = 4  # layout candidates (best first) that are also tried with the window loop order
TILE_LAYOUTS = 4  # layout candidates (best first) under which vector tiles are generated
EXTRA_CHUNKS = (L1_BYTES // 2, 2 * L1_BYTES, 4 * L1_BYTES)  # ... and these, when budget is left at the end
TILES_PER_LAYOUT = 3  # best-scoring vector tiles tried under each


def finish(op, bound, arrays: list, cand: tuple) -> tuple:
    """``cand`` with rows padded and reductions factored as the default would (every candidate gets it)."""
    return default_rfactor(bound, num_threads(), pad_rows(op.inputs, bound, arrays, cand, flops_half(bound)))


def flops_half(bound) -> float:
    return float(sum(work(bs) for bs in bound.statements))


def first_candidates(op, bound, arrays: list) -> tuple[list[tuple], list]:
    """(every candidate schedule, best-ranked first, finished; the layout candidates they came from)."""
    layouts = [c for _, c in layout_candidates(op.inputs, bound, arrays) if c]
    cands = tile_candidates(op, bound, arrays, layouts) + with_window_orders(op, bound, arrays, layouts)
    # other pieces for the reductions writing few elements (a dot product, a sum): first, few and cheap
    cands = rfactor_variants(bound, num_threads(), default_layouts(op.inputs, bound, arrays)) + cands
    return list(dict.fromkeys(finish(op, bound, arrays, c) for c in cands)), layouts


def steps_from(op, bound, arrays: list, schedule: tuple) -> list[tuple]:
    """The finished neighbours of ``schedule`` (one step away) for the heaviest statement."""
    k = heaviest(bound)
    return [finish(op, bound, arrays, c) for c in neighbours(schedule, bound.statements[k], k)]


def window_order(bs, strides: dict[str, tuple[int, ...]], itemsize: dict[str, int]) -> tuple | None:
    """The default loop order with the window reductions (``k`` in ``I[2*y + k]``) moved together just
    outside the first written index they slide with (never outermost), and the default's fused
    innermost group; None when the statement has no window. Tensors that do not depend on the window
    position (a convolution's weights) are then reused from cache across every position."""
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


def with_window_orders(op, bound, arrays: list, cands: list) -> list:
    """After each of the first layout candidates (and the default), the same with the window order."""
    k = heaviest(bound)
    bs = bound.statements[k]
    itemsize = itemsizes(bound)
    out: list = []
    for base in [()] + cands[:WINDOW_VARIANTS]:
        found = window_order(bs, strides_under(op.inputs, bound, arrays, base), itemsize)
        if base:
            out.append(base)
        if found is not None:
            order, fused = found
            out.append(tuple(base) + (Reorder(k, order),) + (Fuse(k, "", ""),) * max(0, fused - 1))
    return out + cands[WINDOW_VARIANTS:]


def tile_candidates(op, bound, arrays: list, layouts: list, chunks: tuple = (None, L1_BYTES)
                    ) -> list[tuple[Record, ...]]:
    """Vector-tile schedules (see schedule.microkernel) under the default layouts and the first
    layout candidates, for each statement doing at least a quarter of the heaviest one's work: the
    best few of each, in layout-candidate order, each followed by the same tile with its reduction
    chunked to fit the L1 cache (the chunks' outer loops outside the tile loops, so the tiles that
    follow reuse each chunk of the operands from L1: capsule kernel 11.5-12.9 -> 8.2-8.7 ms). Then
    the same for tiles whose rows or columns leave peeled tails (matmul 1024²: 6 x 16, 4 x 24).
    Each tile is followed by its packed variants (``microkernel.packed_schedules``: capsule kernel
    tiles 10.2-14.1 -> 8.5-9.0 ms with the weights in panels).
    ``chunks``: the reduction chunks (bytes read) each tile is generated with (None: the default's rule)."""
    most = work(bound.statements[heaviest(bound)])
    itemsize = itemsizes(bound)
    copyable = [packable(op.inputs, bound, arrays, k) for k in range(len(bound.statements))]
    out: list = []
    for tails in (False, True):  # tiles leaving peeled tails after all the others
        for base in [()] + layouts[:TILE_LAYOUTS]:
            strides = strides_under(op.inputs, bound, arrays, base)
            for k, bs in enumerate(bound.statements):  # every statement doing a good part of the work
                if work(bs) * 4 < most:
                    continue
                pairs = [sorted(tile_schedules(bs, k, strides, itemsize, tuple(base), chunk=chunk, tails=tails),
                                key=lambda sc: -sc[0])[:TILES_PER_LAYOUT] for chunk in chunks]
                for found in itertools.zip_longest(*pairs):
                    for sc in found:
                        if sc is not None:  # each tile, then the same with its operands packed
                            out += [sc[1]] + packed_schedules(bs, k, sc[1], copyable[k])
    return list(dict.fromkeys(out))
