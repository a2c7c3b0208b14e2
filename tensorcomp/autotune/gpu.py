"""GPU tuning: the candidates of ``schedule.gpu`` (register tiles, block sizes, layouts,
single- and double-buffered shared-memory tiles), measured on the device.

nvcc runs for all candidates at once on a thread pool while the earlier ones are measured (the
compile overlaps measurement); every candidate's output is compared with the default schedule's
before its time counts. Times are CUDA-event times of back-to-back calls, so launch overhead that
the GPU hides is not counted, as in a real model.
"""

from __future__ import annotations

import time
from typing import Any

from .. import compiler
from ..compiler import ArraySpec
from ..errors import TensorcompError
from ..opdef import Op
from ..runtime import cuda as rc
from ..schedule.gpu import candidates
from ..schedule.records import to_json
from . import database
from .measure import flops as count_flops, verify
from .result import TuneResult, progress_bar

LOOKAHEAD = 24  # candidates compiling ahead of the one being measured


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
    cands = [c for _, c in candidates(op.inputs, bound, specs, rc.device_info()["sms"], op.precision)]
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
