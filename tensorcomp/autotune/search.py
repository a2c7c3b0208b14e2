"""``tc.tune``: search schedules generated from the op itself (``space``), keep the fastest verified one.

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

import math
import random
import time
from typing import Any

import numpy as np

from .. import compiler
from .. import distributed as dist
from ..compiler import ArraySpec
from ..errors import ArgumentError, TensorcompError
from ..opdef import Op
from ..schedule.default import heaviest
from ..schedule.records import from_json, to_json
from . import database, space
from .measure import NEAR_CEILING, flops as count_flops, gemm_ceiling, measure, verify
from .gpu import tune_cuda
from .precompile import Precompiler
from .result import TuneResult, progress_bar

FIRST_TRIALS = 24  # candidates measured before the local search around the best one
FINALISTS = 3  # the fastest candidates timed again (with the default) in the last part of the budget
FINAL_SHARE = 0.1  # ... that part; on a shared machine one round of timings can land in a busy moment
FINAL_ROUNDS = 3
RUNNERS_UP = 4  # with budget left after every candidate: the schedules whose neighbours are tried next


def tune(op: Op, *inputs: Any, budget_s: float | None = None, trials: int | None = None,
         progress: bool = True, target: str = "cpu", retune: bool = False, **params: Any) -> TuneResult:
    """Search schedules for ``op`` on these inputs; store the best in the tuning database.

    ``budget_s`` bounds the wall-clock time (default 60 s), ``trials`` the number of
    candidates measured. Afterwards ``op(*inputs)`` — in this process or a new one —
    runs the best schedule found. ``target="cuda"`` tunes the GPU kernel (register
    tiles, block size, layouts) and stores it under the GPU's own key.

    An op and signature already in the database are not tuned again: the stored result comes back
    at once (``result.stored`` is True) unless ``retune=True``.
    """
    if not isinstance(op, Op):
        raise ArgumentError(f"tc.tune expects an op made by tc.op or tc.grad, got {type(op).__name__}")
    if op.schedule:
        raise ArgumentError(f"{op.label}: tc.tune searches schedules itself; pass the op without schedule=")
    if target not in ("cpu", "cuda"):
        raise ArgumentError(f"{op.label}: unknown target '{target}'; available targets: cpu, cuda")
    if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float, np.integer,
                                                                                        np.floating))
                                 or not math.isfinite(budget_s) or budget_s <= 0):
        raise ArgumentError(f"{op.label}: tc.tune budget_s must be a finite number of seconds > 0, got {budget_s!r}")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1):
        raise ArgumentError(f"{op.label}: tc.tune trials must be a positive int, got {trials!r}")
    budget = 60.0 if budget_s is None else float(budget_s)
    if target == "cuda":
        return tune_cuda(op, inputs, budget, trials, progress, params)
    t_start = time.perf_counter()
    arrays = [a if isinstance(a, np.ndarray) else np.asarray(a) for a in inputs]
    kinds = op.check_call(tuple(arrays), params)
    if not retune:
        found = database.stored_result(op, arrays, params)
        if found is not None:
            schedule, best_s, trials = found
            default_s = next((t.get("final_seconds", t.get("seconds")) for t in trials if t.get("schedule") == "[]"),
                             best_s)
            flops = count_flops(compiler.plan(op, [ArraySpec(a.shape, a.dtype, a.strides) for a in arrays], kinds,
                                              params, upto="fold_elementwise").bound)
            return TuneResult(schedule, best_s, default_s or best_s, flops, time.perf_counter() - t_start, trials,
                              stored=True)
    specs = [ArraySpec(a.shape, a.dtype, a.strides) for a in arrays]
    bound = compiler.plan(op, specs, kinds, params, upto="fold_elementwise").bound
    flops = count_flops(bound)

    default = op.with_schedule((), use_tuned=False)
    cands, layouts = space.first_candidates(op, bound, arrays)
    dist.init()  # under mpiexec: each rank measures its share of the candidates (identical hardware only)
    if dist.size() > 1:
        dist.ensure_same_hardware(database.target_key())
        dist.agree("the op and inputs to tune", (op.canonical(), database.signature(arrays, params)))
        cands = cands[dist.rank()::dist.size()]
    first, later = cands[:FIRST_TRIALS], cands[FIRST_TRIALS:]
    deadline = t_start + budget * (1 - FINAL_SHARE)
    pre = Precompiler(op, arrays, params)
    pre.submit(first)  # the workers compile the first batch while this process compiles the default
    ref = default(*arrays, **params)
    refs = ref if isinstance(ref, tuple) else (ref,)
    pre.wait(deadline)
    default_s = measure(lambda: default(*arrays, **params), 3, float("inf"))
    best_s, best = default_s, ()
    log: list[dict] = [{"schedule": "[]", "seconds": default_s}]
    limit = float("inf") if trials is None else trials  # no trial limit: the budget decides
    bar = progress_bar(len(cands) if trials is None else trials, progress)
    tried: set[str] = {"[]"}
    k = heaviest(bound)
    rng = random.Random(0)

    def attempt(cand: tuple, upcoming: list) -> float | None:
        """Compile (with the candidates after it, see ``Precompiler``), verify and time ``cand``."""
        pre.ready([cand] + [c for c in upcoming[:8] if to_json(c) not in tried], deadline)
        entry: dict[str, Any] = {"schedule": to_json(cand)}
        tried.add(entry["schedule"])
        seconds = None
        try:
            trial = default.with_schedule(cand)
            out = trial(*arrays, **params)
            verify(out if isinstance(out, tuple) else (out,), refs)
            seconds = measure(lambda: trial(*arrays, **params), 3, 2 * best_s)
            entry["seconds"] = seconds
        except (TensorcompError, ValueError) as exc:
            entry["skipped"] = str(exc)
        log.append(entry)
        if bar is not None:
            bar.set_postfix_str(f"best {flops / min(best_s, seconds or best_s) / 1e9:.1f} GFLOP/s")
            bar.update(1)
        return seconds

    # (not with several ranks: each times its own share, and a host's gemm speed shared by ranks is no ceiling)
    ceiling = gemm_ceiling(bound.statements[k].dtype) if dist.size() == 1 else None
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
        steps = [c for c in space.steps_from(op, bound, arrays, best) if to_json(c) not in tried]
        rng.shuffle(steps)
        if not measure_all(steps, until_better=True):
            break
    if left():  # last, while budget lasts: the tiles again with other reduction blocks (matmul 1024²
        # runs out of candidates in ~12 s of a 60 s budget)
        later += space.tile_candidates(op, bound, arrays, layouts, chunks=space.EXTRA_CHUNKS)
    measure_all(list(dict.fromkeys(space.finish(op, bound, arrays, c) for c in later)))
    # budget left after every candidate (matmul 1024²: all tried in ~19 s of 60): one step from each
    # of the runners-up too, the fastest first
    ranked = sorted((e["seconds"], e["schedule"]) for e in log if e.get("seconds") is not None)
    for _, sched in ranked[1:1 + RUNNERS_UP]:
        if not left():
            break
        measure_all(space.steps_from(op, bound, arrays, from_json(sched)))
    if bar is not None:
        bar.close()
    times = _final_round(default, arrays, params, log, best,
                         t_start + budget if not stopped else time.perf_counter() + FINAL_SHARE * budget)
    winner = min(times, key=times.__getitem__)
    if dist.size() > 1:  # the fastest over the ranks; every rank's trials in the log
        every = dist.allgather((times[winner], winner, log))
        best_rank = min(range(len(every)), key=lambda r: every[r][0])
        times = {**times, every[best_rank][1]: every[best_rank][0]}
        winner = every[best_rank][1]
        log = [dict(entry, rank=r) for r, (_, _, entries) in enumerate(every) for entry in entries]
    best, best_s, default_s = from_json(winner), times[winner], times["[]"]
    saved = True
    if dist.is_main():  # only rank 0 writes the tuning database
        saved = database.store_result(op, arrays, params, "cpu", best, best_s, log)
    dist.barrier()
    op.forget_kernels(*arrays, **params)  # (its kernels for other signatures are kept)
    op(*arrays, **params)  # compiled under the stored schedule, with a manifest: a new process starts at once
    return TuneResult(best, best_s, default_s, flops, time.perf_counter() - t_start, log, stopped,
                      unsaved=not saved)


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
    turns = [(sched, trial) for _ in range(FINAL_ROUNDS) for sched, trial in ops.items()]
    for sched, trial in turns:  # a slow kernel's turns stop at the deadline (the rest keep their times)
        if time.perf_counter() >= deadline:
            break
        times[sched] = min(times[sched], measure(lambda: trial(*arrays, **params), 2, float("inf")))
    for entry in log:
        if entry.get("schedule") in times:
            entry["final_seconds"] = times[entry["schedule"]]
    return times
