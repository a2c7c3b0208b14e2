"""Tuning in the background: a worker process tunes the hottest ops while the program goes on.

    tuner = BackgroundTuner.start(prof, budget_s=60)     # prof: an ``autotune.hot.profile()``
    ...                                                  # each step:
    for op in tuner.poll(): ...                          # ops whose tuned kernel is ready (swapped in)
    tuner.stop()                                         # never waits: what finished is stored

The worker (``python -m tensorcomp.autotune.background TASKS``, at a lower CPU priority) runs
``autotune.hot.tune_hot`` on the profiled ops, rebuilt from their recipes and their inputs (saved with
their strides: the database keys include them), and writes the results to the tuning database and
the kernels with their manifests to the object cache. As each op finishes, ``poll()`` drops the
calling process's kernel for that signature, so its next call loads the tuned kernel from the
manifest (milliseconds, no compiling). Ops whose result is already stored are never tuned again.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .precompile import from_recipe

NICE = 19  # the worker's CPU priority offset where SCHED_IDLE is not available


def _lowest_priority() -> None:
    """Run the worker only when a core would otherwise idle (Linux SCHED_IDLE; elsewhere the lowest
    nice level): with nice 10 the worker still took ~10% of a core the training wanted, and on a
    2-core machine the training's steps ran ~18% slower while it tuned."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(NICE)



def _save_array(path: Path, a: np.ndarray) -> dict:
    """Save ``a`` so that the worker rebuilds it with the same shape, strides and values."""
    if a.flags.c_contiguous or a.size == 0 or any(s < 0 for s in a.strides):
        np.save(path, np.ascontiguousarray(a))
        return {"file": str(path), "strides": None}
    span = 1 + sum((n - 1) * s for n, s in zip(a.shape, a.strides))
    base = np.zeros(-(-span // a.itemsize), a.dtype)
    np.lib.stride_tricks.as_strided(base, a.shape, a.strides)[...] = a
    np.save(path, base)
    return {"file": str(path), "strides": list(a.strides), "shape": list(a.shape)}


def _load_array(entry: dict) -> np.ndarray:
    a = np.load(entry["file"])
    if entry["strides"] is None:
        return a
    return np.lib.stride_tricks.as_strided(a, tuple(entry["shape"]), tuple(entry["strides"]))


class BackgroundTuner:
    """A worker process tuning the ops of a profile; see the module docstring."""

    def __init__(self, proc: subprocess.Popen, rows: list, workdir: str) -> None:
        self.proc, self.rows, self.workdir = proc, rows, workdir
        self.done: list[dict] = []

    @staticmethod
    def start(prof: dict, budget_s: float, retune: bool = False) -> "BackgroundTuner | None":
        """Start tuning the profiled ops that can be rebuilt in another process (None: none can)."""
        from .hot import hottest
        workdir = tempfile.mkdtemp(prefix="tc-tune-")
        rows, tasks = [], []
        for seconds, op, inputs, params in hottest(prof):
            recipe = op.recipe()
            if recipe is None or op.schedule:
                continue
            k = len(rows)
            arrays = [_save_array(Path(workdir) / f"op{k}_in{j}.npy", a) for j, a in enumerate(inputs)]
            plain = {p: (v.item() if hasattr(v, "item") else v) for p, v in params.items()}
            tasks.append({"recipe": recipe, "arrays": arrays, "params": plain, "seconds": seconds})
            rows.append((op, inputs, params))
        if not rows:
            return None
        spec = Path(workdir) / "tasks.json"
        spec.write_text(json.dumps({"tasks": tasks, "budget_s": budget_s, "retune": retune}))
        proc = subprocess.Popen([sys.executable, "-m", "tensorcomp.autotune.background", str(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=dict(os.environ), preexec_fn=_lowest_priority)
        return BackgroundTuner(proc, rows, workdir)

    def poll(self) -> list:
        """The ops whose tuning finished since the last poll; their kernels for the profiled signature
        are dropped, so the next call runs the tuned one."""
        ready = []
        while self.proc.stdout is not None and select.select([self.proc.stdout], [], [], 0)[0]:
            line = self.proc.stdout.readline()
            if not line:
                break
            entry = json.loads(line)
            self.done.append(entry)
            op, inputs, params = self.rows[entry["index"]]
            if "tuning_s" in entry:
                op.forget_kernels(*inputs, **params)
                ready.append(op)
        return ready

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """End the worker now (what it finished is stored; the rest is tuned by a later run)."""
        self.poll()
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _serve(spec_path: str) -> None:
    """The worker: tune each task's op (hottest first) within the budget, one JSON line per op."""
    from .hot import tune_hot
    spec = json.loads(Path(spec_path).read_text())
    prof = {}
    for k, task in enumerate(spec["tasks"]):
        op = from_recipe(task["recipe"])
        prof[k] = [op, [_load_array(a) for a in task["arrays"]], task["params"], task["seconds"], 1]
    ops = [prof[k][0] for k in range(len(prof))]

    def report(entry: dict) -> None:
        entry = dict(entry, index=ops.index(entry.pop("_op")))
        sys.stdout.write(json.dumps(entry) + "\n")
        sys.stdout.flush()
    tune_hot(prof, spec["budget_s"], log=report, retune=spec["retune"], with_op=True)


if __name__ == "__main__":
    _serve(sys.argv[1])
