"""Tune the kernels a program spends its time in: profile a few calls, tune the hottest ops.

    with profile() as prof:
        step()                    # every CPU op call is timed, with a copy of its inputs
    tune_hot(prof, budget_s=30)   # the slowest ops first, each for its share of the budget

Tuned schedules go to the tuning database like any ``tc.tune`` result, so later calls (and later
processes) run them at once. ``tensorcomp train --tune S`` does this after its first steps.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from ..errors import TensorcompError
from ..opdef import profiling
from .search import tune

MIN_OP_BUDGET_S = 2.0  # the least time one op is tuned for
MIN_SHARE = 0.02  # ops taking less of the profiled time than this are left alone


@contextlib.contextmanager
def profile() -> Iterator[dict]:
    """Time every CPU op call inside the block; yields the profile (see ``opdef.profiling``)."""
    with profiling({}) as prof:
        yield prof


def hottest(prof: dict) -> list[tuple[float, object, list, dict]]:
    """(seconds, op, inputs, params) per op and input signature, slowest first."""
    rows = [(seconds, o, inputs, params) for o, inputs, params, seconds, _ in prof.values()]
    return sorted(rows, key=lambda r: -r[0])


def tune_hot(prof: dict, budget_s: float, log=None, retune: bool = False, with_op: bool = False) -> list[dict]:
    """Tune the ops of ``prof`` (slowest first) within ``budget_s`` seconds in all; each op gets a
    share of the budget in proportion to its time (at least ``MIN_OP_BUDGET_S``). Ops whose result
    for these inputs is already stored are not tuned again (unless ``retune``) and take no budget.
    Returns one summary per op; ``log(summary)`` is called as each one is done (with the op itself
    under ``"_op"`` when ``with_op``)."""
    rows = [r for r in hottest(prof) if not r[1].schedule]
    total = sum(r[0] for r in rows) or 1.0
    spent = 0.0  # seconds of searching (a stored result costs none)
    done: list[dict] = []
    for seconds, o, inputs, params in rows:
        left = budget_s - spent
        if seconds / total < MIN_SHARE or left < MIN_OP_BUDGET_S:
            break
        share = max(MIN_OP_BUDGET_S, budget_s * seconds / total)
        t0 = time.perf_counter()
        try:
            result = tune(o, *inputs, budget_s=min(left, share), progress=False, retune=retune, **params)
        except TensorcompError as exc:  # an op the tuner cannot run on these inputs: keep its default
            entry = {"op": o.label, "skipped": str(exc)}
        else:
            if result.stored:
                entry = {"op": o.label, "stored": True, "tuned_ms": result.best_s * 1e3}
            else:
                entry = {"op": o.label, "share": seconds / total, "default_ms": result.default_s * 1e3,
                         "tuned_ms": result.best_s * 1e3, "tuning_s": result.tuning_s}
        if not entry.get("stored"):
            spent += time.perf_counter() - t0
        done.append(entry)
        if log is not None:
            log(dict(entry, _op=o) if with_op else entry)
    return done
