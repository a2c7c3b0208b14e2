"""GPU schedules generated from the op: register tiles, thread boxes and shared-memory tiles --
the space the GPU tuner searches (``autotune.gpu``) and the default schedule of ``target="cuda"``.

The space, for the statement doing the most work: a *register tile* is a set of its written
indices (or the inner part of a split written index) whose loops move inside the reduction loops
(``Reorder``), so each thread accumulates a small block of outputs in registers and reuses every
loaded input value across it (``codegen.cuda``); the remaining written indices map to threads.
Tiles of 2..64 elements are tried with 64, 128 and 256 threads per block, and with the best few
CPU layout candidates (which change which index is contiguous, hence coalescing). A cost model
ranks them: outputs per thread (register reuse) against the threads left to fill the GPU.
Each of the best tiles also comes with *shared-memory* variants: a 2-D box of threads over the
innermost parallel loops (``Threads``) that stages, once per iteration of an outer reduction loop,
every input that the box's threads share (one that does not depend on one of the box's loops) in
shared memory (``Stage``), single- or double-buffered; a variant whose tiles do not fit in 48 KB
is refused when code is generated, and skipped.

With ``precision="tf32"`` the default first tries tiles that tensor cores take
(``schedule.tensor_cores.mma_schedules``). Otherwise (and after those) it is the best-ranked double-buffered shared-memory variant, in
the op's own layouts, then the next ones, then the best register tile alone: the compiler takes
the first whose tiles fit (``compiler.choose_schedule``).
"""

from __future__ import annotations

import itertools

import numpy as np

from ..strides import ITEMSIZE, contiguous
from ..target import CUDA_MAX_TILE
from .default import layout_candidates
from .dims import gather_loops
from .lower import is_conflicting_scatter
from .order import default_order
from .records import Block, Record, Reorder, Split, Stage, Threads
from .tensor_cores import mma_schedules

BLOCKS = (64, 128, 256)
STAGED_TILES = 8  # the best tiles that also get shared-memory variants
BOX_THREADS = 128  # threads in a shared-memory variant's box
DEFAULT_TRIES = 12  # candidates the default schedule tries before giving up on shared memory


def _work(bs) -> int:
    return int(np.prod([hi - lo for _, lo, hi in bs.extents]))


def _coef(lin, name: str) -> int:
    return sum(c for atom, c in lin.terms if atom == name)


def tile_candidates(bound, k: int, strides: dict[str, tuple[int, ...]]) -> list[tuple[tuple[Record, ...], float, int]]:
    """(records, score, threads) for statement ``k``'s register tiles.

    A candidate picks the tile (written indices, or inner parts of split ones, that each thread
    keeps in registers) and the written index that varies fastest across neighbouring threads.
    Its score is multiply-adds per memory transaction in one reduction step: every input
    access loads one value per tile element it depends on, and a warp's load costs one
    transaction when neighbouring threads read the same or consecutive elements, up to 32
    when they are far apart. ``O[p, r] += I[p, q] * W[q, r]`` tiled over (p, r) does 16
    multiply-adds per 4 + 4 loads.
    """
    bs = bound.statements[k]
    st = bs.stmt
    if st.reduce is None or any(lin.plain_var is None for lin in st.index):
        return []
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    written = [lin.plain_var for lin in st.index if lin.plain_var is not None and extent[lin.plain_var] > 1]
    if len(set(written)) != len(written):
        return []
    reductions = [n for n in bs.names if n not in st.write_names()]
    if not reductions:
        return []
    total = int(np.prod([extent[w] for w in written])) if written else 1
    accesses = list(dict.fromkeys(st.accesses()))
    # tile parts: a whole written index, or the inner part of one split by 2, 4 or 8
    parts: list[tuple[str, int, str | None, int]] = [(w, extent[w], None, 0) for w in written]
    for w in written:
        for f in (2, 4, 8):
            if extent[w] > f and extent[w] % f == 0:
                parts.append((f"{w}_i", f, w, f))
    out = []
    for size in (1, 2, 3):
        for combo in itertools.combinations(parts, size):
            sources = [p[2] or p[0] for p in combo]
            if len(set(sources)) != size:
                continue
            tile = int(np.prod([p[1] for p in combo]))
            if not 2 <= tile <= CUDA_MAX_TILE:
                continue
            splits = tuple(Split(k, p[2], p[3]) for p in combo if p[2] is not None)
            factor = {p[2]: p[3] for p in combo if p[2] is not None}
            inner = [p[0] for p in sorted(combo, key=lambda p: written.index(p[2] or p[0]))]
            outer = [f"{w}_o" if w in factor else w for w in written if w in factor or w not in inner]
            rest = [n for n in bs.names if n not in written and n not in reductions]  # extent-1 written
            for fast in dict.fromkeys([o for o in outer if extent[o.removesuffix("_o")] >= 4] + outer[-1:]):
                base = fast.removesuffix("_o") if fast.endswith("_o") and fast[:-2] in factor else fast
                step = factor.get(base, 1)
                cost = 0.0
                last = max(combo, key=lambda p: written.index(p[2] or p[0]))  # the innermost tile loop
                for a in accesses:
                    names = {n for lin in a.index for n in lin.names()}
                    loads = int(np.prod([p[1] for p in combo if (p[2] or p[0]) in names]))
                    src = last[2] or last[0]
                    unit = sum(_coef(lin, src) * stride for lin, stride in zip(a.index, strides[a.tensor]))
                    if unit == 4 and last[1] % 4 == 0:  # float4 loads along the innermost tile loop
                        loads = max(1, loads // 4)
                    delta = abs(sum(_coef(lin, base) * stride for lin, stride in zip(a.index, strides[a.tensor])))
                    cost += loads * (1.0 if delta == 0 else min(32.0, max(1.0, delta * step / 4.0)))
                order = tuple(rest + [o for o in outer if o != fast] + [fast] + reductions + inner)
                out.append((splits + (Reorder(k, order),), tile / max(cost, 1.0), total // tile))
    return out


def gather_tile_candidates(bound, k: int, strides: dict[str, tuple[int, ...]]
                           ) -> list[tuple[tuple[Record, ...], float, int]]:
    """(records, score, threads) for the register tiles of a statement the GPU runs in gather form
    (a transposed convolution's input gradient ``dI[n, 2*y + ky, ..] += ..``; ``schedule.lower``):
    one to three of its plain written indices (whole) inside the reductions, the other written
    coordinates on the threads; scored like ``tile_candidates`` (multiply-adds per load), without
    its coalescing term."""
    bs = bound.statements[k]
    st = bs.stmt
    if st.reduce is None or not is_conflicting_scatter(bs):
        return []
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    plain = [lin.plain_var for lin in st.index if lin.plain_var is not None and extent[lin.plain_var] > 1]
    itemsize = {t: ITEMSIZE[info.dtype] for t, info in bound.tensors.items()}
    loops = gather_loops(bs, list(default_order(bs, strides, itemsize)[0]))
    total = 1
    for info_n in bound.tensors[st.target].shape:
        total *= info_n
    accesses = list(dict.fromkeys(st.accesses()))
    out = []
    for size in (1, 2, 3):
        for tile in itertools.combinations(plain, size):
            points = int(np.prod([extent[t] for t in tile]))
            if not 2 <= points <= CUDA_MAX_TILE:
                continue
            loads = sum(int(np.prod([extent[t] for t in tile if t in {n for lin in a.index for n in lin.names()}]))
                        for a in accesses)
            order = tuple(n for n in loops if n not in tile) + tile
            out.append(((Reorder(k, order),), points / max(loads, 1), total // points))
    return out


def staged_variants(bound, k: int, records: tuple[Record, ...]) -> list[tuple[Record, ...]]:
    """Shared-memory variants of a register-tile candidate: ``Threads`` boxes of 128 and 256 threads
    over its innermost parallel loops, and ``Stage`` records for the inputs that some loop of the
    box does not index, at each of its two outermost reduction loops or at the outer part of its
    longest reduction split by 2, 4, 8 or 16."""
    if is_conflicting_scatter(bound.statements[k]):  # gather form: its reduction loops' bounds vary by thread
        return []
    reorder = next((r for r in records if isinstance(r, Reorder)), None)
    if reorder is None:
        return []
    bs = bound.statements[k]
    st = bs.stmt
    factor = {r.index: r.factor for r in records if isinstance(r, Split)}
    extent = {n: hi - lo for n, lo, hi in bs.extents}

    def source(name: str) -> str:
        return name[:-2] if name[-2:] in ("_o", "_i") and name[:-2] in factor else name

    def length(name: str) -> int:
        if source(name) == name:
            return extent[name]
        f = factor[source(name)]
        return f if name.endswith("_i") else -(-extent[source(name)] // f)
    written = set(st.write_names())
    order = list(reorder.order)
    first = next((j for j, n in enumerate(order) if source(n) not in written), None)
    if first is None:
        return []
    parallel = [n for n in order[:first] if length(n) > 1]
    reductions = [n for n in order[first:] if source(n) not in written]
    if not parallel:
        return []
    # where to stage: at each of the two outermost reduction loops, or at the outer part of the
    # longest reduction split in place (its inner part and the loops after it fill the tile)
    stagings = [(records, loop) for loop in reductions[:2]]
    longest = max((n for n in reductions if source(n) == n), key=length, default=None)
    for f in (2, 4, 8, 16):
        if longest is not None and length(longest) > f and length(longest) % f == 0:
            split_order = [m for n in order for m in ((f"{n}_o", f"{n}_i") if n == longest else (n,))]
            head = tuple(r for r in records if not isinstance(r, Reorder))
            stagings.append((head + (Split(k, longest, f), Reorder(k, tuple(split_order))), f"{longest}_o"))
    out = []
    for target in (BOX_THREADS, 2 * BOX_THREADS):
        shape, left = [], target  # threads along the innermost parallel loops, at most a warp along each
        for n in reversed(parallel):
            if left < 2:
                break
            shape.insert(0, min(length(n), left, 32))
            left //= shape[0]
        box = {source(n) for n, t in zip(parallel[-len(shape):], shape) if t > 1}
        shared = [t for t in dict.fromkeys(a.tensor for a in st.accesses())
                  if not box <= {n for a in st.accesses() if a.tensor == t for lin in a.index for n in lin.names()}]
        if not shared or int(np.prod(shape)) < 32:
            continue
        for base, loop in stagings:
            for buffers in (2, 1):
                out.append(base + (Threads(k, tuple(shape)),) + tuple(Stage(k, t, loop, buffers) for t in shared))
    return list(dict.fromkeys(out))


def _main(bound) -> int:
    """The statement doing the most work: the one the space schedules."""
    return max(range(len(bound.statements)), key=lambda j: _work(bound.statements[j]))


def _strides(inputs: list[str], bound, arrays: list) -> dict[str, tuple[int, ...]]:
    strides = {name: tuple(spec.strides) for name, spec in zip(inputs, arrays)}
    for name, info in bound.tensors.items():
        strides.setdefault(name, contiguous(info.logical_shape, np.dtype(info.dtype).itemsize))
    return strides


def candidates(inputs: list[str], bound, arrays: list, sms: int, precision: str = "fp32"
               ) -> list[tuple[float, tuple[Record, ...]]]:
    """(score, schedule) of every candidate the tuner measures, best-scored first (with precision
    "tf32", the tiles tensor cores take first, each with 64, 128 and 256 threads per block)."""
    k = _main(bound)
    warps = mma_schedules(bound, k) if precision == "tf32" else []
    layouts = [()] + [c for _, c in layout_candidates(inputs, bound, arrays)[:2] if c]
    scored = []
    full = sms * 512  # threads that hide most latency when each has a tile of independent work
    n_in = max(1, len(set(bound.statements[k].stmt.accesses())))
    strides = _strides(inputs, bound, arrays)
    tiles = tile_candidates(bound, k, strides) + gather_tile_candidates(bound, k, strides)
    best = sorted(tiles, key=lambda t: -t[1])[:STAGED_TILES]
    for records, reuse, threads in tiles + [((), 1 / n_in, 0)]:
        fill = min(1.0, threads / full) ** 0.5 if threads else 1.0
        if any(records is b[0] for b in best):
            for variant in staged_variants(bound, k, records):
                for j, layout in enumerate(layouts):
                    scored.append((reuse * fill * (1.0 - 0.05 * j), tuple(layout) + variant))
        for block in BLOCKS:
            for j, layout in enumerate(layouts):
                score = reuse * fill * (1.0 if block == 128 else 0.9) * (1.0 - 0.05 * j)
                scored.append((score, tuple(layout) + records + (Block(block),)))
    scored.sort(key=lambda s: -s[0])
    return [(float("inf"), c + (Block(block),)) for c in warps for block in BLOCKS] + scored


def default_candidates(inputs: list[str], bound, arrays: list, sms: int, precision: str = "fp32"
                       ) -> list[tuple[tuple[Record, ...], bool]]:
    """The default GPU schedule's choices, best first, each with whether it is meant for tensor
    cores: with precision "tf32", tiles of the shape they take; then double-buffered
    shared-memory variants of the best register tiles in the op's own layouts (no relayout copy
    per call); then the best register tile alone. Unmeasured, the default asks more of filling the
    GPU than the tuner's ranking does: a tile's reuse counts in full only when its threads give
    every multiprocessor two boxes of 128 threads, and in proportion below that."""
    k = _main(bound)
    # (tensor cores: a tile per warp; at least 16 warps per multiprocessor, else the most warps)
    warps = [(c, True) for c in mma_schedules(bound, k, 16 * sms)[:DEFAULT_TRIES]] if precision == "tf32" else []
    full = sms * 2 * BOX_THREADS
    strides = _strides(inputs, bound, arrays)
    tiles = sorted(tile_candidates(bound, k, strides) + gather_tile_candidates(bound, k, strides),
                   key=lambda t: -t[1] * min(1.0, t[2] / full))
    staged = []
    for records, _, _ in tiles[:STAGED_TILES]:
        variants = [v for v in staged_variants(bound, k, records) if any(isinstance(r, Stage) and r.buffers == 2
                                                                          for r in v)]
        staged += sorted(variants, key=_per_barrier)
    plain = staged[:DEFAULT_TRIES] + [tiles[0][0] + (Block(BOX_THREADS),)] if tiles else []
    return warps + [(c, False) for c in plain]


def _per_barrier(variant: tuple[Record, ...]) -> tuple[int, int]:
    """Sort key, most work between two barriers first: staged at the outer part of a split loop
    (by its factor, largest first), then at a whole loop."""
    stage = next(r for r in variant if isinstance(r, Stage))
    f = next((r.factor for r in variant if isinstance(r, Split) and stage.loop == f"{r.index}_o"), None)
    return (0, -f) if f else (1, 0)
