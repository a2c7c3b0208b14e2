"""Compiling tuning candidates on all cores at once, in worker processes.

Most of a CPU tuning trial is compiling it: for the capsule kernel ~0.9 s of LLVM and ~0.3 s of
planning and IR generation against ~0.1 s of timing. Candidates are compiled a batch at a time,
one per core, each by a worker process (LLVM's calls and the planner hold the GIL or share
LLVM's context, so processes, not threads). A worker writes the object code and the kernel
manifest to the object cache (``runtime.jit``); the tuner then loads each candidate from there
when it measures it. A batch is waited for before the next timing, so compiling never runs
while a candidate is timed.

The workers are plain ``python -m tensorcomp.autotune.precompile`` processes reading one task
per line on stdin and answering one line on stdout (not ``multiprocessing``, whose spawned
children import the caller's main module again: a script without a ``__main__`` guard would run
once more in each). They are kept for later ``tc.tune`` calls in the process and replaced after
``MAX_TASKS_PER_WORKER`` tasks (their kernel caches only grow).

Without the object cache (``TENSORCOMP_OBJECT_CACHE=0``) or with one thread, nothing changes:
each candidate compiles in the tuning process when it is measured.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import time
from typing import Any

import numpy as np

from .. import compiler
from ..autodiff import grad
from ..compiler import ArraySpec
from ..errors import TensorcompError
from ..opdef import Op
from ..runtime import jit
from ..schedule.records import Record, from_json, to_json
from ..target import num_threads

MAX_TASKS_PER_WORKER = 64
# settings a kernel's object code, manifest or default schedule depend on: sent with each task (a
# worker outlives the tuning call that started it)
_ENV = ("TENSORCOMP_CACHE_DIR", "TENSORCOMP_OBJECT_CACHE", "TENSORCOMP_NUM_THREADS")
_workers: list["_Worker"] = []


class _Worker:
    """One worker process and its pipes."""

    def __init__(self) -> None:
        # the worker imports tensorcomp from where this process did (a source checkout on sys.path too)
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        self.proc = subprocess.Popen([sys.executable, "-m", "tensorcomp.autotune.precompile"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=dict(os.environ, PYTHONPATH=path))
        self.tasks = 0
        self.busy = False

    def alive(self) -> bool:
        return self.proc.poll() is None and self.tasks < MAX_TASKS_PER_WORKER

    def send(self, task: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(task) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            return False
        self.tasks += 1
        self.busy = True
        return True

    def receive(self, deadline: float) -> bool:
        """Wait for the answer to the task sent (until ``deadline``; a worker still busy then is
        stopped). True when it compiled."""
        self.busy = False
        wait = None if deadline == float("inf") else max(0.0, deadline - time.perf_counter())
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not ready:
            self.stop()
            return False
        return self.proc.stdout.readline().startswith("ok")

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()


def _pool(n: int) -> list[_Worker]:
    """``n`` live workers (started now if needed; they import tensorcomp meanwhile)."""
    for w in [w for w in _workers if not w.alive()]:
        w.stop()
        _workers.remove(w)
    while len(_workers) < n:
        try:
            _workers.append(_Worker())
        except OSError:
            break
    return _workers[:n]


@atexit.register
def _stop_all() -> None:
    for w in _workers:
        w.stop()
    _workers.clear()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class Precompiler:
    """Compiles an op's candidate schedules ahead of their timing, a batch (one per core) at once."""

    def __init__(self, op, arrays: list, params: dict[str, Any]) -> None:
        n = num_threads()
        self.op = op
        self.recipe = op.recipe()  # how a worker makes the op (a gradient: tc.grad of its base)
        self.workers = _pool(n) if n > 1 and self.recipe is not None and jit.manifest_key(()) else []
        self.arrays = arrays
        self.specs = [[list(a.shape), a.dtype.str, list(a.strides)] for a in arrays]
        self.params = {k: _plain(v) for k, v in params.items()}
        self.submitted: set[str] = set()
        self.pending: dict[_Worker, tuple[Record, ...]] = {}  # what each busy worker compiles
        self.compiled: list[tuple[Record, ...]] = []  # candidates the workers compiled
        self.checked = False

    def submit(self, cands: list[tuple[Record, ...]]) -> None:
        """Start compiling those of ``cands`` not started yet, one per idle worker."""
        idle = [w for w in self.workers if not w.busy]
        for cand in cands:
            key = to_json(cand)
            if key in self.submitted:
                continue
            if not idle:
                break
            task = {"recipe": self.recipe, "schedule": key, "specs": self.specs, "params": self.params,
                    "env": {k: os.environ.get(k) for k in _ENV}}
            worker = idle.pop()
            if worker.send(task):
                self.submitted.add(key)
                self.pending[worker] = cand

    def wait(self, deadline: float) -> None:
        """Wait until every batch started has compiled (or ``deadline`` has passed)."""
        for w in self.workers:
            if w.busy and w.receive(deadline) and w in self.pending:
                self.compiled.append(self.pending[w])
        self.pending.clear()

    def ready(self, upcoming: list[tuple[Record, ...]], deadline: float) -> None:
        """Before ``upcoming[0]`` is timed: unless an earlier batch compiled it, compile it and the
        candidates after it, one per worker, and wait for the batch, so nothing compiles while it is
        timed. A candidate that fails in a worker fails again, with its reason, when the tuner
        compiles it itself."""
        if not self.workers or not upcoming:
            return
        if to_json(upcoming[0]) not in self.submitted:
            self.submit(upcoming)
            self.wait(deadline)
        if not self.checked and self.compiled:  # did the workers make what this process looks up?
            self.checked = True
            if not self._found(self.compiled[0]):
                self.workers = []  # (an op they cannot make alike): compile here, not twice

    def _found(self, cand: tuple[Record, ...]) -> bool:
        trial = self.op.with_schedule(cand, use_tuned=False)
        specs = [ArraySpec(a.shape, a.dtype, a.strides) for a in self.arrays]
        return compiler.has_manifest(trial, specs, trial.check_call(tuple(specs), self.params), self.params)


def compile_in_workers(items: list[tuple[Op, list, dict[str, Any]]], meanwhile=None) -> int:
    """Compile the CPU kernel of each ``(op, input specs, params)`` (the ops' own schedules, tuned ones
    as ``kernel_for`` would find them) in the workers, one per core, into the object cache, while this
    process compiles those a worker cannot make (no recipe, or one that does not make the op again)
    through ``meanwhile(op, specs, params)``; returns how many the workers built. With one core or
    without the cache, ``meanwhile`` compiles them all. A kernel a worker did not build is compiled
    by whoever looks it up next."""
    n = num_threads()
    tasks, here = [], []
    for op, specs, params in items:
        recipe = op.recipe()
        if recipe is None or not _remade(op, recipe):
            here.append((op, specs, params))
            continue
        tasks.append({"recipe": recipe, "schedule": None, "params": {k: _plain(v) for k, v in params.items()},
                      "specs": [[list(s.shape), np.dtype(s.dtype).str, list(s.strides)] for s in specs],
                      "env": {k: os.environ.get(k) for k in _ENV}})
    if n < 2 or len(tasks) < 2 or not jit.manifest_key(()):
        here, tasks = list(items), []
    workers, built = _pool(min(n, len(tasks))) if tasks else [], 0
    for w in workers:
        if tasks and not w.send(tasks.pop()):
            break
    for item in here if meanwhile is not None else ():
        meanwhile(*item)
    while any(w.busy for w in workers):
        busy = {w.proc.stdout: w for w in workers if w.busy}
        ready, _, _ = select.select(list(busy), [], [])
        for stream in ready:
            w = busy[stream]
            w.busy = False
            line = stream.readline()
            if not line:  # (a worker died: what is left compiles in the caller)
                return built
            built += line.startswith("ok")
            if tasks and not w.send(tasks.pop()):
                return built
    return built


def _remade(op: Op, recipe: list) -> bool:
    """Whether a worker makes ``op`` again from its recipe (a gradient op a whole-program pass rebuilt
    is not ``tc.grad`` of its base any more)."""
    if type(op) is Op:
        return True
    try:
        return from_recipe(recipe).ident == op.ident
    except TensorcompError:
        return False


def from_recipe(recipe: list) -> Op:
    """The op an ``Op.recipe()`` describes."""
    if recipe[0] == "grad":
        return grad(from_recipe(recipe[1]), recipe[2])
    _, source, ranges, pad, pad_value, schedule, use_tuned, *kept = recipe
    return Op(source, ranges=ranges or None, pad=pad or None, pad_value=pad_value or None,
              schedule=from_json(schedule), use_tuned=use_tuned, outputs=kept[0] if kept else None)


def _compile_task(task: dict) -> None:
    """In a worker: compile the op a task describes under its schedule (into the object cache)."""
    for k, v in task["env"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    op = from_recipe(task["recipe"])
    if task["schedule"] is not None:  # (a tuning candidate; None: the op as it is, tuned schedules and all)
        op = op.with_schedule(from_json(task["schedule"]), use_tuned=False)
    arrays = [ArraySpec(tuple(shape), np.dtype(dtype), tuple(strides)) for shape, dtype, strides in task["specs"]]
    params = task["params"]
    compiler.kernel(op, arrays, op.check_call(tuple(arrays), params), params, op._kernel_key(arrays, params))


def _serve() -> None:
    """A worker's loop: one JSON task per line in, ``ok`` or ``error <kind>`` per line out."""
    out, sys.stdout = sys.stdout, sys.stderr  # nothing else may write to the answer pipe
    for line in sys.stdin:
        try:
            _compile_task(json.loads(line))
            answer = "ok"
        except Exception as exc:  # noqa: BLE001 - the tuner compiles it again and reports the reason
            answer = f"error {type(exc).__name__}"
        out.write(answer + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
