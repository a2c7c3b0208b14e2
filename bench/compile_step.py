"""Whole-step compilation (``tc.compile``): what the program holds and what it costs, per model.

    python bench/compile_step.py [--models lenet,capsnet-small,capsnet-em] [--steps 40]

Each model (batch 64, Adam 1e-3, seed 0, one fixed batch of the bundled MNIST subset) runs in a fresh
process with an empty cache directory (cold) and again with that cache (warm): the seconds until the
compiled step first replays (its calls 1-2 are traced; the second already runs compiled), then the step's ms in
interleaved rounds of the eager step, the compiled one (one native call per step) and the same
program replayed by a Python loop over its calls (best and median), and the program's
counts: op calls and statements before and after the whole-program passes, stages per step, peak
bytes of the step's own arrays, relayout copies per step, and each pass's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

JOB = """
import json, sys, time
t_start = time.perf_counter()
import numpy as np
import tensorcomp as tc
from tensorcomp import nn, optim
from tensorcomp.data import mnist
from tensorcomp.train import MODELS
name, steps = sys.argv[1], int(sys.argv[2])
xtr, ytr, _, _ = mnist()
x, y = xtr[:64], ytr[:64]
build, make_loss = MODELS[name]
nn.manual_seed(0)
model, loss_fn = build(), make_loss()
opt = optim.Adam(model.parameters(), 1e-3)

def step(x, y):
    opt.zero_grad()
    loss = loss_fn(model(tc.Tensor(x)), y)
    loss.backward()
    opt.step()
    return loss

compiled = tc.compile(step)
while compiled.replays == 0:
    compiled(x, y)
first_replay_s = time.perf_counter() - t_start
import tensorcomp.step as step_module
step_module.NATIVE = False  # the same program replayed by a Python loop over its calls, for comparison
replayed = tc.compile(step)
while replayed.replays < 3:
    replayed(x, y)
step_module.NATIVE = True
rounds = {"eager": [], "compiled": [], "python_replay": []}
for _ in range(steps):
    for mode, fn in (("eager", step), ("compiled", compiled), ("python_replay", replayed)):
        t0 = time.perf_counter()
        fn(x, y)
        rounds[mode].append(1e3 * (time.perf_counter() - t0))
stats = compiled.stats(x, y)
entry = compiled._entries[compiled._arrays((x, y))[1]][-1]
stats["stages"] = sum(len(r.kernel.stages) for r, rel in entry.runs if rel is None)
print(json.dumps({"first_replay_s": first_replay_s, "traces": compiled.traces,
                  "eager_ms": [min(rounds["eager"]), float(np.median(rounds["eager"]))],
                  "compiled_ms": [min(rounds["compiled"]), float(np.median(rounds["compiled"]))],
                  "python_replay_ms": [min(rounds["python_replay"]), float(np.median(rounds["python_replay"]))],
                  **stats}))
"""


def run(model: str, steps: int, cache: str) -> dict:
    env = dict(os.environ, TENSORCOMP_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", JOB, model, str(steps)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="lenet,capsnet-small,capsnet-em")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="tc-bench-") as cache:
            cold = run(name, args.steps, cache)
            warm = run(name, args.steps, cache)
        print(name, "cold", json.dumps(cold))
        print(name, "warm", json.dumps(warm))


if __name__ == "__main__":
    main()
