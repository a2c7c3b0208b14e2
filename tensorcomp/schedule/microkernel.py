"""Register-tile schedules for the CPU ("micro-kernels"), generated from the statement itself.

A vector tile keeps ``rows x columns`` written elements in SIMD registers across the whole
reduction (``codegen.llvm``: the tile loops run inside the reduction loops with constant bounds,
the innermost one contiguous in the written tensor). Each reduction step then loads a few
operand vectors and broadcasts and does ``rows x columns / lanes`` multiply-adds on them — the
shape of a BLAS micro-kernel, found here for any statement:

* columns: the default order's innermost contiguous group (see ``schedule.order.default_order``)
  when every index in it is written; its outer part is split so that the run is one to four
  vectors wide (``co, r`` with ``r`` = 4 and 16-float columns: ``Split(co, 4)``, columns
  ``co_i, r`` fused);
* rows: one or two other written indices, or the inner parts of splits of them, up to 8 rows;
* order: the other written loops outside (in the default order, outer parts of splits where
  the indices were; outermost one over a plain written index, so the cores can share it), then
  every reduction loop, then the rows, then the fused columns;
* chunking: when the whole reduction reads more than ``TILE_CACHE_BYTES`` (counted in cache lines),
  only its innermost loops reading at most ``TILE_BYTES`` stay around the tile; the rest move
  right inside the outermost loop (``_chunk_reduction``).

Candidates are ranked by multiply-adds per load in one reduction step: an operand that depends
on the columns is one vector load per column vector and per row it depends on, any other a
broadcast per row it depends on; at most ``MAX_VECTOR_ACCUMULATORS`` accumulator vectors, and the
accumulators, one row's operand vectors and a broadcast must fit the 16 vector registers (3 x 32
floats measured 2x slower than 6 x 16 on the capsule kernel: LLVM spills). Less ``LINE_COST`` per
byte of new cache lines per multiply-add: rows whose broadcasts share lines win ties.
"""

from __future__ import annotations

import itertools
import math

from .. import target
from ..target import LINE_BYTES, TILE_CACHE_BYTES
from .order import default_order
from .records import Fuse, Layout, Record, Reorder, Split

MAX_ROWS = 8
MIN_REDUCTION = 16  # reduction steps around a default tile
TILE_BYTES = 64 * 1024  # ... else it is chunked to read this much (_chunk_reduction; 9x9 conv: 35 -> 120 GFLOP/s)
MIN_DEFAULT_SCORE = 1.2  # multiply-adds per load (plus the size bonus) for a default tile
ROW_FACTORS = (2, 3, 4, 6, 8)


def _column_split(cols: list[str], extent: dict[str, int], width: int, lanes: int, tails: bool):
    """(split or None, column loop names, outer names, tail) making the innermost run ``width``.
    When the split does not divide its loop, the last columns form a narrower tile of their own (a
    peeled tail, see ``schedule.lower``); ``tail`` is (the part of the columns it holds, its
    vectors), else None. With ``tails``, columns that are not whole vectors (the tail's, or a whole
    run narrower than ``width``: 10 classes as 8 + 2) end in a masked vector (``codegen.llvm``)."""
    run = 1
    for j in range(len(cols) - 1, -1, -1):
        c = cols[j]
        if run * extent[c] == width:
            return None, cols[j:], cols[:j], None
        if run * extent[c] > width:
            rest = extent[c] % (width // run) if width % run == 0 else 0
            if width % run or (rest and not tails):
                return "bad", [], [], None
            tail = (rest / extent[c], -(-rest * run // lanes)) if rest else None
            return Split(-1, c, width // run), [f"{c}_i"] + cols[j + 1:], cols[:j] + [f"{c}_o"], tail
        run *= extent[c]
    if tails and run >= lanes and run > width - lanes:  # the whole run, its last vector masked
        return None, cols, [], None
    return "bad", [], [], None


def _row_choices(names: list[str], extent: dict[str, int], tails: bool) -> list[tuple[tuple[str, int], ...]]:
    """Row sets: () or one or two (index, rows) pairs with at most MAX_ROWS rows in all. With
    ``tails``, a row count need not divide its loop: the last rows form a smaller tile of their own
    (a peeled tail)."""
    single: list[tuple[str, int]] = []
    for n in names:
        e = extent[n]
        if e <= 1:
            continue
        if e <= MAX_ROWS:
            single.append((n, e))
        single += [(n, f) for f in ROW_FACTORS if f < e and (e % f == 0 or tails and e >= 2 * f)]
    out: list[tuple[tuple[str, int], ...]] = [()] + [(s,) for s in single]
    for a, b in itertools.combinations(single, 2):
        if a[0] != b[0] and a[1] * b[1] <= MAX_ROWS:
            out.append((a, b))
    return out


def tile_schedules(bs, k: int, strides: dict[str, tuple[int, ...]], itemsize: dict[str, int],
                   base: tuple[Record, ...] = (), max_footprint: int | None = None, min_reuse: float = 0.0,
                   chunk: int | None = None, tails: bool = False) -> list[tuple[float, tuple[Record, ...]]]:
    """(score, schedule) for the vector tiles of statement ``k`` under the layouts in ``base``;
    with ``max_footprint``, only tiles whose (chunked) reduction reads at most that many bytes, and
    only those doing at least ``min_reuse`` multiply-adds per load (plus the size bonus). The score
    is that reuse less ``LINE_COST`` per byte of new cache lines per multiply-add. ``chunk``: chunk
    every reduction reading more than that many bytes into inner loops reading at most that much
    (see ``_chunk_reduction``). ``tails``: also tiles whose row or column count does not divide its
    loop (the remainder runs as a smaller tile: ``schedule.lower`` peels it); the tuner tries them,
    the default does not (a conv2d 3x3's 56-wide rows as 3 x 16 + 8 columns with 64 channels as
    21 x 3 + 1 rows measured 1.7-2x slower than its 8-column, 2 x 4-row tile)."""
    st = bs.stmt
    if st.reduce != "sum" or itemsize.get(st.target) not in (4, 8):
        return []
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    order, group = default_order(bs, strides, itemsize)
    written = [n for n in st.write_names() if n in extent]
    plain = {lin.plain_var for lin in st.index} - {None}  # columns: plain written indices
    # rows: those, or an index of one compound written axis (a scatter's x in dI[.., kx + 2*x, ..],
    # the rows of a gradient's tile: capsule dI 6 x 16 over x like the forward's); distinct rows
    # write distinct elements as long as no two share an axis
    axes = {n: {d for d, lin in enumerate(st.index) if n in lin.names()} for n in written}
    if set(st.write_names()) - set(written):
        return []
    cols = list(group) or [order[-1]]
    if any(c not in plain for c in cols):
        return []
    lanes = target.VECTOR_BYTES // itemsize[st.target]
    reductions = [n for n in order if n not in written]
    if not reductions:
        return []
    reads = list(dict.fromkeys((a.tensor, a.index) for a in st.accesses()))
    names = set(bs.names)
    out: list[tuple[float, tuple[Record, ...]]] = []
    for vectors in (1, 2, 3, 4):
        split, col_loops, col_outer, col_tail = _column_split(cols, extent, vectors * lanes, lanes, tails)
        if split == "bad":
            continue
        others = [n for n in order if n in written and n not in cols]
        for rows in _row_choices([n for n in others if n in plain or len(axes[n]) == 1], extent, tails):
            if len(rows) == 2 and axes[rows[0][0]] & axes[rows[1][0]]:
                continue  # two rows in one written axis (dI[ky + 2*y]) would write the same elements
            nrows = 1
            for _, f in rows:
                nrows *= f
            if nrows * vectors > target.MAX_VECTOR_ACCUMULATORS or nrows * vectors < 2 or \
                    nrows * vectors + vectors + 1 > target.VECTOR_REGISTERS:
                continue
            sweeps = [_sweep(tensor, index, used, rows, vectors * lanes if used & set(cols) else 0,
                             reductions, strides, itemsize)
                      for tensor, index in reads for used in [{n for lin in index for n in lin.names()}]]
            chunked = _chunk_reduction(reductions, extent, sweeps, chunk)
            if chunked is None:
                continue
            red_split, red_outer, red_inner, footprint = chunked
            if max_footprint is not None and footprint > max_footprint:
                continue
            records: list[Record] = list(base)
            if split is not None:
                records.append(Split(k, split.index, split.factor))
            if red_split is not None:
                records.append(Split(k, red_split[0], red_split[1]))
            splits, outer, inner = _rows_inside(k, others, dict(rows), extent)
            records += splits
            seq = _reuse_order(outer + col_outer, reads, sweeps, names, extent)
            # outermost a loop the cores can share: one over a plain written index (a scatter's
            # k0 in dI[k0 + 2*y0] is not; 9x9 conv dI 2 threads instead of 1)
            # (and with iterations enough for the threads when another such loop has them)
            splits = {r.index: r.factor for r in records if isinstance(r, Split)}

            def trips(n: str) -> int:
                src = _source(n, names)
                return -(-extent[src] // splits[src]) if n != src and src in splits else extent.get(n, 1)
            safe = [j for j, n in enumerate(seq) if _source(n, names) in plain]
            wide = [j for j in safe if trips(seq[j]) >= MIN_PARALLEL_TRIPS]
            pick = wide[0] if wide else max(safe, key=lambda j: trips(seq[j]), default=0)
            if pick > 0:
                seq.insert(0, seq.pop(pick))
            if red_outer:  # chunked: the reduction's outer part right inside the outermost loop
                outside, rest = seq[:1] + red_outer + seq[1:], red_inner + inner + col_loops
            else:
                outside, rest = seq, reductions + inner + col_loops
            strip = _shared_strip(st, outside, rest, reads, extent, {r.index: r.factor for r in records if isinstance(
                r, Split) and r.stmt == k}, itemsize, names)
            if strip:  # a strip of the outermost loop's steps inside the loops choosing a chunk of an operand
                at, factor = strip
                records.append(Split(k, outside[0], factor))
                outside = [f"{outside[0]}_o"] + outside[1:at] + [f"{outside[0]}_i"] + outside[at:]
            loops = outside + rest
            records.append(Reorder(k, tuple(loops)))
            records += [Fuse(k, "", "")] * (len(col_loops) - 1)
            fmas = nrows * vectors
            reuse = _tail_reuse(reads, rows, vectors, set(cols), extent, col_tail)
            if reuse + 0.01 * fmas < min_reuse:
                continue
            last = (red_inner or reductions)[-1]  # the loop each reduction step advances
            lines = sum(step * per[last] for step, per in sweeps if last in per)  # new bytes per step
            out.append((reuse + 0.01 * fmas - LINE_COST * lines / fmas, tuple(records)))
    return out


def _shared_strip(st, outside: list[str], rest: list[str], reads, extent: dict[str, int], splits: dict[str, int],
                  itemsize: dict[str, int], names: set[str]) -> tuple[int, int] | None:
    """(position in ``outside``, factor) of a strip of the outermost loop's steps (strip-mining) to run
    inside the loops around a tile that choose a chunk of a large operand, or None. Each step of the outermost
    loop (``outside[0]``, shared by the cores) sweeps every loop inside it; an operand it does not
    index (a convolution's weights, with the batch outermost) is then read whole once per step,
    from memory when it is larger than the caches (``SHARED_REUSED_BYTES``). With a strip of the
    outermost loop's steps just inside the last outer loop that indexes that operand, each chunk of
    it serves the whole strip from cache: the longest strip whose own data for one chunk (its part
    of the written tensor and of the operands it indexes, over the loops inside) fits
    ``SHARED_STRIP_BYTES``, leaving at least ``MIN_PARALLEL_TRIPS`` strips for the cores. CapsNet's
    primary capsules (9x9, stride 2, 256 -> 256 channels, 21 MB of weights): 78 -> 61 ms."""
    shared = outside[0] if outside else None
    if shared not in names or shared not in st.write_names():
        return None
    accesses = [(st.target, {n for lin in st.index for n in lin.names()})] + \
        [(tensor, {n for lin in index for n in lin.names()}) for tensor, index in reads]
    reused = [(tensor, used) for tensor, used in accesses if shared not in used]
    if sum(itemsize.get(t, 4) * math.prod(extent.get(n, 1) for n in used) for t, used in reused) \
            <= SHARED_REUSED_BYTES:
        return None
    at = max((j for j in range(1, len(outside))
              if any(_source(outside[j], names) in used for _, used in reused)), default=None)
    if at is None:
        return None
    at += 1

    def trips(loop: str) -> int:
        src = _source(loop, names)
        if loop == src:
            return extent.get(src, 1)
        factor = splits.get(src, extent.get(src, 1))
        return factor if loop.endswith("_i") else -(-extent.get(src, 1) // factor)
    inside = outside[at:] + rest
    per_step = sum(itemsize.get(t, 4) * math.prod(trips(n) for n in inside if _source(n, names) in used)
                   for t, used in accesses if shared in used)
    fits = [f for f in range(2, extent[shared] // MIN_PARALLEL_TRIPS + 1)
            if extent[shared] % f == 0 and f * per_step <= SHARED_STRIP_BYTES]
    return (at, max(fits)) if fits else None


SHARED_REUSED_BYTES = 4 << 20  # an operand re-read whole at each step of the shared loop, beyond the caches
SHARED_STRIP_BYTES = 512 * 1024  # one strip's data for one chunk of the reduction (about a core's L2)


def _rows_inside(k: int, loops: list[str], row_of: dict[str, int], extent: dict[str, int]):
    """(splits, outer loops, tile loops): each of ``loops`` with rows stays outside, or moves into the
    tile whole (rows = its extent) or as the inner part of a split by its rows."""
    splits, outer, inner = [], [], []
    for n in loops:
        if n not in row_of:
            outer.append(n)
        elif row_of[n] == extent[n]:
            inner.append(n)
        else:
            splits.append(Split(k, n, row_of[n]))
            outer.append(f"{n}_o")
            inner.append(f"{n}_i")
    return splits, outer, inner


def _loads(reads: list, rows, vectors: int, cols: set[str]) -> int:
    """Loads per reduction step of a tile: an operand that depends on the columns is one vector
    load per column vector and per row it depends on, any other a broadcast per row it depends on."""
    loads = 0
    for _, index in reads:
        used = {n for lin in index for n in lin.names()}
        per_row = 1
        for n, f in rows:
            per_row *= f if n in used else 1
        loads += per_row * (vectors if used & cols else 1)
    return loads


def _tail_reuse(reads: list, rows, vectors: int, cols: set[str], extent: dict[str, int], col_tail) -> float:
    """Multiply-adds per load over the whole statement: with row or column counts that leave peeled
    tails, each piece's reuse weighted by the part of the work it does."""
    row_parts = [[(f, (extent[n] // f) * f / extent[n]), (extent[n] % f, extent[n] % f / extent[n])] for n, f in rows]
    col_parts = [(vectors, 1.0)] if col_tail is None else [(vectors, 1 - col_tail[0]), (col_tail[1], col_tail[0])]
    total = 0.0
    for cv, share in col_parts:
        for piece in itertools.product(*row_parts):
            if all(f for f, _ in piece):  # a loop that divides has no tail piece
                sizes = tuple((n, f) for (n, _), (f, _) in zip(rows, piece))
                weight = share * math.prod(part for _, part in piece)
                total += weight * math.prod(f for _, f in sizes) * cv / _loads(reads, sizes, cv, cols)
    return total


LINE_COST = 0.05  # score lost per byte of new cache lines per multiply-add (rows over adjacent channels
#                   of a weight gradient's input, one line, beat rows over window offsets, one line each: 2x)


def _byte_stride(tensor: str, index, name: str, strides: dict[str, tuple[int, ...]]) -> int:
    """How far (bytes) one step of loop ``name`` moves the access ``tensor[index]``."""
    return abs(sum(dict(lin.terms).get(name, 0) * st for lin, st in zip(index, strides[tensor])))


def _sweep(tensor: str, index, used: set, rows, width: int, reductions: list[str],
           strides: dict[str, tuple[int, ...]], itemsize: dict[str, int]) -> tuple[float, dict[str, float]]:
    """What one read of a tile brings into the cache, in whole cache lines: (bytes per reduction
    step, {reduction: share of a step's lines that each step of it brings anew}). Rows a short
    stride apart share lines (a weight gradient's rows over adjacent channels: one line; over
    window offsets: one line each), and so do the steps of the innermost reduction loop when it
    walks the tensor in small strides."""
    lines = max(1.0, width * itemsize[tensor] / LINE_BYTES)  # the vector columns, or one broadcast
    for n, f in rows:
        if n in used:
            lines *= min(f, max(1.0, f * _byte_stride(tensor, index, n, strides) / LINE_BYTES))
    inner = [n for n in reductions if n in used]
    per = {n: 1.0 for n in inner}
    if inner:
        per[inner[-1]] = min(1.0, _byte_stride(tensor, index, inner[-1], strides) / LINE_BYTES) or 1.0
    return lines * LINE_BYTES, per


def _reads(sweeps: list[tuple[float, dict[str, float]]], extent: dict[str, int]) -> float:
    """Bytes of cache lines a tile's reduction reads, with ``extent`` steps of each reduction loop."""
    total = 0.0
    for step, per in sweeps:
        for n, f in per.items():
            if n in extent:
                step *= max(1.0, extent[n] * f)
        total += step
    return total


def _chunk_reduction(reductions: list[str], extent: dict[str, int], sweeps: list, chunk: int | None = None):
    """(split, outer loops, inner loops, footprint) of the reduction around a tile: all of it when
    what it reads fits ``TILE_CACHE_BYTES`` (``chunk``, when given); else the innermost reduction loops
    that together read at most ``TILE_BYTES`` (``chunk``) (whole loops, then the next one split by
    the largest factor that fits, as ``split`` = (index, factor)), the others moved outside the
    tile's outer loops, so each chunk of the operands is reused from cache by the tiles that
    follow. Inner loops stay whole from the innermost out: a contiguous run cut short or a long
    stride inside the chunk measured up to 2x slower (9x9 conv: 8 channels x 81 window steps 59
    GFLOP/s, 256 channels 115). None when no inner part of ``MIN_REDUCTION`` steps fits."""
    footprint = _reads(sweeps, extent)
    if footprint <= (TILE_CACHE_BYTES if chunk is None else chunk):
        return None, [], list(reductions), footprint
    limit = TILE_BYTES if chunk is None else chunk
    inner: dict[str, int] = {}
    cut = None
    for n in reversed(reductions):
        if _reads(sweeps, dict(inner, **{n: extent[n]})) <= limit:
            inner[n] = extent[n]
            continue
        fits = [f for f in range(2, extent[n])
                if extent[n] % f == 0 and _reads(sweeps, dict(inner, **{n: f})) <= limit]
        if fits:
            cut = (n, max(fits))
            inner[n] = cut[1]
        break
    steps = 1
    for v in inner.values():
        steps *= v
    if steps < MIN_REDUCTION:
        return None
    name = {cut[0]: f"{cut[0]}_o"} if cut else {}
    outer = [name.get(n, n) for n in reductions if n not in inner or n in name]
    inner_loops = [f"{n}_i" if n in name else n for n in reductions if n in inner]
    return cut, outer, inner_loops, _reads(sweeps, inner)


def default_tile(bs, k: int, strides: dict[str, tuple[int, ...]], itemsize: dict[str, int]
                 ) -> tuple[Record, ...] | None:
    """The default schedule's tile for statement ``k`` (no layout changes): the best-scoring one when
    it reuses every load for more than one multiply-add on average, the reduction it runs around
    is long enough (``MIN_REDUCTION`` steps) to pay for loading and storing the tile, and what that
    reduction reads (chunked by ``_chunk_reduction`` when it would not fit) fits in ``TILE_CACHE_BYTES``."""
    if reduction_steps(bs) < MIN_REDUCTION:
        return None
    for tails in (False, True):  # tiles that leave tails only where no other tile fits
        found = [sc for sc in tile_schedules(bs, k, strides, itemsize, max_footprint=TILE_CACHE_BYTES,
                                             min_reuse=MIN_DEFAULT_SCORE, tails=tails)
                 if columns_contiguous(bs, sc[1], strides, itemsize)]
        if found:
            return max(found, key=lambda sc: sc[0])[1]
    return None


MIN_DOT_SCORE = 1.2  # multiply-adds per vector load (plus the size bonus) for a default dot tile


def default_dot_tile(bs, k: int, strides: dict[str, tuple[int, ...]], itemsize: dict[str, int]
                     ) -> tuple[Record, ...] | None:
    """For a statement with no vector tile (``default_tile``) whose default innermost loop is a
    reduction that the reads walk contiguously (a weight gradient's sum over the batch, the batch
    index innermost): a "dot" tile of one or two written indices (or inner parts of their splits),
    moved inside every reduction loop, so that each vector step of the innermost reduction loads
    every operand once and updates one vector of partial sums per written element
    (``schedule.tiles``: "vector_sum"). Scored as the vector tiles are, by multiply-adds per vector
    load (an operand that does not move along the innermost loop is loaded once outside it); the
    best when it reuses each load ``MIN_DOT_SCORE`` times. LeNet's second convolution's weight
    gradient: 4 x 5 elements, 0.48 -> 0.09 ms."""
    st = bs.stmt
    if st.reduce != "sum" or itemsize.get(st.target) not in (4, 8) or reduction_steps(bs) < MIN_REDUCTION:
        return None
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    order, group = default_order(bs, strides, itemsize)
    written = [n for n in st.write_names() if n in extent]
    inner = order[-1]
    lanes = target.VECTOR_BYTES // itemsize[st.target]
    group = list(group) or [inner]  # a fused group: its loops walk one contiguous run together
    if any(n in written for n in group) or math.prod(extent[n] for n in group) < lanes or \
            set(st.write_names()) - set(written):
        return None
    reads = list(dict.fromkeys((a.tensor, a.index) for a in st.accesses()))
    moving = []  # the reads that move along the innermost loop: each must walk it contiguously
    for tensor, index in reads:
        used = {n for lin in index for n in lin.names()}
        if used & set(group):
            if inner not in used or _byte_stride(tensor, index, inner, strides) != itemsize[tensor]:
                return None
            moving.append(used)
    axes = {n: {d for d, lin in enumerate(st.index) if n in lin.names()} for n in written}
    plain = {lin.plain_var for lin in st.index} - {None}
    choices = []
    for n in written:
        if n in plain or len(axes[n]) == 1:
            choices += [(n, f) for f in sorted({extent[n], *ROW_FACTORS})
                        if 1 < f <= extent[n] and extent[n] % f == 0 and f <= target.MAX_VECTOR_ACCUMULATORS]
    best = None
    for rows in [(c,) for c in choices] + list(itertools.combinations(choices, 2)):
        if len(rows) == 2 and (rows[0][0] == rows[1][0] or axes[rows[0][0]] & axes[rows[1][0]]):
            continue
        points = math.prod(f for _, f in rows)
        loads = sum(math.prod(f for n, f in rows if n in used) for used in moving)
        # the accumulators and every load of a step in registers (4 x 6 accumulators and 10 loads
        # in 32 registers ran 1.5x slower than 4 x 5 and 9: LLVM spills)
        if points > target.MAX_VECTOR_ACCUMULATORS or points + loads > target.VECTOR_REGISTERS:
            continue
        score = points / loads + 0.01 * points
        # ties: the rows whose loads lie closest together (a weight gradient's rows over the window's
        # innermost offset read overlapping runs; over its outer offset, rows far apart)
        spread = sum(_byte_stride(tensor, index, n, strides) * (f - 1)
                     for tensor, index in reads for n, f in rows if inner in {v for lin in index for v in lin.names()})
        if score >= MIN_DOT_SCORE and (best is None or (score, -spread) > best[0]):
            best = ((score, -spread), rows)
    if best is None:
        return None
    records: list[Record] = []
    splits, outer, tile = _rows_inside(k, [n for n in order if n in written], dict(best[1]), extent)
    records += splits
    # outermost a loop over a plain written index, so the cores can share it
    pick = next((j for j, n in enumerate(outer) if _source(n, set(bs.names)) in plain), 0)
    if not outer:  # nothing left outside the tile for the cores to share
        return None
    outer.insert(0, outer.pop(pick))
    reductions = [n for n in order if n not in written]
    fuses = []  # the group fused pairwise from the inside: (j, d) -> j_d
    for n in reversed(group[:-1]):
        fuses.append(Fuse(k, n, group[-1] if not fuses else f"{fuses[-1].outer}_{fuses[-1].inner}"))
    return tuple(records) + (Reorder(k, tuple(outer + reductions + tile)),) + tuple(fuses)


def reduction_steps(bs) -> int:
    """How many reduction steps each written element of the statement takes."""
    written = set(bs.stmt.write_names())
    steps = 1
    for n, lo, hi in bs.extents:
        if n not in written:
            steps *= hi - lo
    return steps


def columns_contiguous(bs, records: tuple[Record, ...], strides: dict[str, tuple[int, ...]],
                       itemsize: dict[str, int]) -> bool:
    """Whether a tile's innermost loop walks the written tensor contiguously, so its accumulators are
    loaded and stored as vectors (a tile whose columns only the reads walk contiguously gathers
    and scatters them: the EM primary capsules' 1x1 convolution ran 1.1x slower so tiled)."""
    order = next((r.order for r in records if isinstance(r, Reorder)), None)
    if not order:
        return False
    inner = _source(order[-1], set(bs.names))
    st = bs.stmt
    axis = next((ax for ax, lin in enumerate(st.index) if lin.plain_var == inner), None)
    return axis is not None and abs(strides[st.target][axis]) == itemsize[st.target]


MIN_PARALLEL_TRIPS = 8  # the outermost (shared) loop around a tile: at least this many iterations when possible


def _reuse_order(seq: list[str], reads, sweeps, names: set[str], extent: dict[str, int]) -> list[str]:
    """The loops around a tile with the one whose step brings the fewest new bytes innermost: a step
    of a loop re-reads every operand that depends on it (its whole reduction sweep) and keeps the
    others in cache. Matmul: the row loop innermost keeps a column panel (K x 16 floats) while each
    step brings 4 new rows; 2048²: 539 -> 244 ms."""
    if len(seq) < 2:
        return seq
    fresh = {n: sum(_reads([sweep], extent) for (_, index), sweep in zip(reads, sweeps)
                    if _source(n, names) in {v for lin in index for v in lin.names()})
             for n in seq}
    last = min(reversed(seq), key=lambda n: fresh[n])  # ties: the current innermost stays
    return [n for n in seq if n != last] + [last]


def _source(name: str, names: set[str]) -> str:
    """The statement index a loop name comes from (``ci_o`` -> ``ci``)."""
    return name[:-2] if name not in names and name[-2:] in ("_o", "_i") and name[:-2] in names else name


def neighbours(schedule: tuple[Record, ...], bs, k: int) -> list[tuple[Record, ...]]:
    """Schedules one step away from ``schedule`` (which must order statement ``k``'s loops): two
    adjacent loops outside the innermost reduction run swapped, or a reduction of 8 or more split
    with its outer part moved next to the outermost loop (so a slice of the reduced operand stays in
    cache across the loops between). Loops inside the innermost reduction (a tile) stay put, and the
    outermost loop stays a written one, so it still runs across the cores."""
    reorder = next((r for r in schedule if isinstance(r, Reorder) and r.stmt == k), None)
    if reorder is None:
        return []
    names = set(bs.names)
    written = set(bs.stmt.write_names())
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    order = list(reorder.order)
    is_red = [_source(n, names) not in written for n in order]
    if not any(is_red):
        return []
    last = max(j for j, red in enumerate(is_red) if red)
    head = last
    while head > 0 and is_red[head - 1]:
        head -= 1
    rest = [r for r in schedule if r is not reorder]
    out: list[tuple[Record, ...]] = []

    def with_order(new: list[str], extra: tuple[Record, ...] = ()) -> tuple[Record, ...]:
        pos = schedule.index(reorder)
        return tuple(rest[:pos]) + extra + (Reorder(k, tuple(new)),) + tuple(rest[pos:])
    for j in range(1, head):
        new = order[:]
        new[j], new[j + 1] = new[j + 1], new[j]
        if j + 1 <= head and not (j == 0 and is_red[j + 1]):
            out.append(with_order(new))
    split_already = {r.index for r in schedule if isinstance(r, Split) and r.stmt == k}
    for n in order[head:last + 1]:
        if n not in names or n in split_already:
            continue
        for f in (4, 8):
            if f < extent[n] and extent[n] % f == 0:
                new = [m for m in order]
                at = new.index(n)
                new[at] = f"{n}_i"
                new.insert(1, f"{n}_o")
                out.append(with_order(new, (Split(k, n, f),)))
    return out


def packed_schedules(bs, k: int, schedule: tuple[Record, ...], copyable: set[str]) -> list[tuple[Record, ...]]:
    """``schedule`` (a tile of statement ``k``) with its operands packed: each input of ``copyable``
    that the tile reads down a reduction (on plain indices only) stored in the order the tile's loops
    visit it, each axis whose index the schedule splits into a tile loop cut into blocks of that
    split (``Layout(..., blocks=...)``, see ``schedule.blocking``): a matrix product's column panel
    ``B[k, j]`` as ``B'[j_o][k][j_i]``, one contiguous run per panel instead of 16 floats per row 4 KB
    apart, and its row operand as ``A'[i_o][k][i_i]``. Only splits that divide their loop are blocked
    (a blocked tail has no constant tile bounds). Two variants: the operands that the columns index,
    and every one; [] when nothing is packed."""
    reorder = next((r for r in schedule if isinstance(r, Reorder) and r.stmt == k), None)
    if reorder is None:
        return []
    names = set(bs.names)
    written = set(bs.stmt.write_names())
    order = list(reorder.order)
    pos = {n: j for j, n in enumerate(order)}
    reds = [j for j, n in enumerate(order) if _source(n, names) not in written]
    if not reds:
        return []
    tile = set(order[reds[-1] + 1:])
    fused = sum(1 for r in schedule if isinstance(r, Fuse) and r.stmt == k)
    cols = {_source(n, names) for n in order[len(order) - 1 - fused:]}
    splits = {r.index: r.factor for r in schedule if isinstance(r, Split) and r.stmt == k}
    extent = {n: hi - lo for n, lo, hi in bs.extents}
    reads = list(dict.fromkeys(bs.stmt.accesses()))
    packs: dict[str, tuple[bool, Record]] = {}
    for a in reads:
        plain = [lin.plain_var for lin in a.index]
        if a.tensor not in copyable or None in plain or len(set(plain)) < len(plain) or \
                sum(1 for b in reads if b.tensor == a.tensor) > 1 or not any(v not in written for v in plain):
            continue
        blocks, keys = [], []  # (axis, size); per axis of the blocked tensor: its loop's position
        for axis, v in enumerate(plain):
            if v in splits and f"{v}_i" in tile and extent[v] % splits[v] == 0:
                blocks.append((axis, splits[v]))
                keys += [pos[f"{v}_o"], pos[f"{v}_i"]]
            else:
                keys.append(pos.get(v, pos.get(f"{v}_i", -1)))
        if not blocks:
            continue
        perm = tuple(sorted(range(len(keys)), key=lambda e: keys[e]))
        packs[a.tensor] = (bool(cols & set(plain)), Layout(a.tensor, perm, 0, tuple(blocks)))
    out = []
    for only_cols in (True, False):
        chosen = {t: lay for t, (is_col, lay) in packs.items() if is_col or not only_cols}
        if chosen:
            out.append(tuple(r for r in schedule if not (isinstance(r, Layout) and r.tensor in chosen))
                       + tuple(chosen.values()))
    return list(dict.fromkeys(out))
