"""GPU tuning: register tiles, block sizes and layouts, generated from the op.

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
shared memory (``Stage``); a variant whose tiles do not fit in 48 KB is refused when lowered and
skipped.

nvcc runs for all candidates at once on a thread pool while the earlier ones are measured (the
compile overlaps measurement); every candidate's output is compared with the default schedule's
before its time counts. Times are CUDA-event times of back-to-back calls, so launch overhead that
the GPU hides is not counted, as in a real model.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from .. import compiler
from ..compiler import ArraySpec
from ..errors import TensorcompError
from ..opdef import Op
from ..runtime import cuda as rc
from ..schedule.default import layout_candidates
from ..schedule.records import Block, Record, Reorder, Split, Stage, Threads, to_json
from ..strides import contiguous
from ..target import CUDA_MAX_TILE
from . import database
from .measure import flops as count_flops, verify
from .result import TuneResult, progress_bar

BLOCKS = (64, 128, 256)
STAGED_TILES = 8  # the best tiles that also get shared-memory variants
BOX_THREADS = 128  # threads in a shared-memory variant's box
LOOKAHEAD = 24  # candidates compiling ahead of the one being measured


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


def staged_variants(bound, k: int, records: tuple[Record, ...]) -> list[tuple[Record, ...]]:
    """Shared-memory variants of a register-tile candidate: ``Threads`` boxes of 128 and 256 threads
    over its innermost parallel loops, and ``Stage`` records for the inputs that some loop of the
    box does not index, at each of its two outermost reduction loops or at the outer part of its
    longest reduction split by 8 or 16."""
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
    for f in (8, 16):
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
            out.append(base + (Threads(k, tuple(shape)),) + tuple(Stage(k, t, loop) for t in shared))
    return list(dict.fromkeys(out))


def candidates(op: Op, bound, arrays: list, sms: int) -> list[tuple[float, tuple[Record, ...]]]:
    k = max(range(len(bound.statements)), key=lambda j: _work(bound.statements[j]))
    layouts = [()] + [c for _, c in layout_candidates(op.inputs, bound, arrays)[:2] if c]
    strides = {name: tuple(spec.strides) for name, spec in zip(op.inputs, arrays)}
    for name, info in bound.tensors.items():
        strides.setdefault(name, contiguous(info.logical_shape, np.dtype(info.dtype).itemsize))
    scored = []
    full = sms * 512  # threads that hide most latency when each has a tile of independent work
    n_in = max(1, len(set(bound.statements[k].stmt.accesses())))
    tiles = tile_candidates(bound, k, strides)
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
    return scored


def _time(fn, repeats: int) -> float:
    import pycuda.driver as drv  # (the cuda extra)
    fn()
    rc.synchronize()
    start, end = drv.Event(), drv.Event()
    best = float("inf")
    for _ in range(3):
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.time_till(end) / 1e3 / repeats)
    return best


def tune_cuda(op: Op, inputs: tuple, budget: float, trials: int | None, progress: bool,
              params: dict[str, Any]):
    t_start = time.perf_counter()
    devs = [rc.as_device(a) for a in inputs]
    specs = [ArraySpec(tuple(d.shape), d.dtype, tuple(d.strides)) for d in devs]
    kinds = op.check_call(tuple(devs), params)
    bound = compiler.plan(op, specs, kinds, params, "cuda", upto="fold_elementwise").bound
    flops = count_flops(bound)
    default = op.with_schedule((), use_tuned=False)
    ref = default.call_cuda(tuple(devs), params)
    refs = [rc.to_host(r) for r in (ref if isinstance(ref, tuple) else (ref,))]
    first = _time(lambda: default.call_cuda(tuple(devs), params), 1)
    repeats = max(3, min(200, int(0.02 / max(first, 1e-6))))
    default_s = _time(lambda: default.call_cuda(tuple(devs), params), repeats)
    best_s, best = default_s, ()
    log: list[dict] = [{"schedule": "[]", "seconds": default_s}]
    cands = [c for _, c in candidates(op, bound, specs, rc.device_info()["sms"])]
    if trials is not None:
        cands = cands[:trials]
    trial_ops: list[tuple] = []

    def lower_ahead(upto: int) -> None:
        """Lower candidates up to ``upto`` and start nvcc on them in the background."""
        while len(trial_ops) < min(upto, len(cands)):
            cand = cands[len(trial_ops)]
            trial = default.with_schedule(cand)
            try:
                rc.prefetch(trial.cuda_source(specs, params))
                trial_ops.append((cand, trial, None))
            except TensorcompError as exc:
                trial_ops.append((cand, None, str(exc)))
    bar = progress_bar(len(cands), progress)
    for i in range(len(cands)):
        if time.perf_counter() - t_start > budget:
            break
        lower_ahead(i + LOOKAHEAD)
        cand, trial, error = trial_ops[i]
        entry: dict[str, Any] = {"schedule": to_json(cand)}
        try:
            if error is not None:
                raise TensorcompError(error)
            out = trial.call_cuda(tuple(devs), params)
            verify([rc.to_host(o) for o in (out if isinstance(out, tuple) else (out,))], refs)
            seconds = _time(lambda: trial.call_cuda(tuple(devs), params), repeats)
            entry["seconds"] = seconds
            if seconds < best_s:
                best_s, best = seconds, cand
        except (TensorcompError, ValueError) as exc:
            entry["skipped"] = str(exc)
        log.append(entry)
        if bar is not None:
            bar.set_postfix_str(f"best {flops / best_s / 1e9:.1f} GFLOP/s")
            bar.update(1)
    if bar is not None:
        bar.close()
    rc.cancel_prefetches()
    database.store_result(op, specs, params, "cuda", best, best_s, log)
    op.forget_kernels()
    return TuneResult(best, best_s, default_s, flops, time.perf_counter() - t_start, log)
