"""Time to first result: whole processes, wall clock, fresh cache directories (one run).

    python bench/startup.py [--capsnet-em] [--skip-torch-compile]

- ``tensorcomp train lenet --epochs 1`` cold (empty cache) and warm (the same cache again), with the
  default flags (tuning in the background) and with ``--tune 0``; the same job in torch eager (import,
  build, one epoch, evaluate); torch.compile's first LeNet training step;
- the first training step (compiling every kernel it runs) of LeNet, CapsNet-small and, with
  ``--capsnet-em``, capsnet-em, cold, with the compile time per compiler pass;
- the capsule kernel's first call in a new process with a cold cache; ``import tensorcomp``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

TORCH_JOB = """
import time, numpy as np, torch
from torch import nn
from importlib import resources
z = np.load(resources.files("tensorcomp.data").joinpath("mnist_5k.npz"))
x = torch.from_numpy((z["train_images"].astype(np.float32) / 255).reshape(-1, 1, 28, 28))
y = torch.from_numpy(z["train_labels"].astype(np.int64))
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                      nn.Linear(84, 10))
opt = torch.optim.Adam(model.parameters(), 1e-3)
if COMPILE:
    step_model = torch.compile(model)
else:
    step_model = model
order = torch.randperm(len(x))
t0 = time.perf_counter()
for k in range(0, len(x), 64):
    idx = order[k:k + 64]
    loss = nn.functional.cross_entropy(step_model(x[idx]), y[idx])
    opt.zero_grad(); loss.backward(); opt.step()
    if COMPILE:
        print("first step", time.perf_counter() - t0); break
with torch.no_grad():
    xt = torch.from_numpy((z["test_images"].astype(np.float32) / 255).reshape(-1, 1, 28, 28))
    acc = (model(xt).argmax(1).numpy() == z["test_labels"]).mean()
print("accuracy", acc)
"""

FIRST_STEP = """
import json, sys
from tensorcomp import compiler
import tensorcomp.train as t
t.evaluate = lambda *args, **kwargs: 0.0  # the first step alone
r = t.train(sys.argv[1], epochs=1, max_steps=1, progress=False)
print(json.dumps({"first_step_s": r["compile_s"], "passes": compiler.PASS_SECONDS}))
"""

CAPSULE = """
import time
t0 = time.perf_counter()
import numpy as np, tensorcomp as tc
I = np.ones((32, 14, 14, 32, 4, 4), np.float32); W = np.ones((3, 3, 32, 32, 4, 4), np.float32)
t1 = time.perf_counter()
tc.op("O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]")(I, W)
print(time.perf_counter() - t1, t1 - t0)
"""


def wall(cmd: list[str], cache: str, timeout: float = 3600) -> tuple[float, str]:
    env = dict(os.environ, TENSORCOMP_CACHE_DIR=cache)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        return seconds, "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:160]
    return seconds, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capsnet-em", action="store_true", help="also capsnet-em's first step (minutes)")
    parser.add_argument("--skip-torch-compile", action="store_true")
    args = parser.parse_args()
    py = sys.executable
    print(f"machine: {machine()}\n")
    print("| what | seconds, wall clock | note |\n|---|---:|---|")
    for flags, name in (([], "default (background tuning)"), (["--tune", "0"], "--tune 0")):
        cache = tempfile.mkdtemp(prefix="tc-startup-")
        for kind in ("cold", "warm"):
            s, out = wall([py, "-m", "tensorcomp.cli", "train", "lenet", "--epochs", "1", "--json", *flags], cache)
            r = json.loads([line for line in out.splitlines() if line.startswith("{")][-1]) if "{" in out else {}
            note = (f"accuracy {r.get('test_accuracy', 0):.3f}, {r.get('tuned_ops', 0)} kernels tuned, "
                    f"{r.get('stored_ops', 0)} already tuned" if r else out)
            print(f"| tensorcomp train lenet --epochs 1, {name}, {kind} | {s:.1f} | {note} |")
    s, out = wall([py, "-c", "COMPILE = False\n" + TORCH_JOB], tempfile.mkdtemp())
    print(f"| torch eager, the same job (import, one epoch, evaluate) | {s:.1f} | {out.strip().splitlines()[-1]} |")
    if not args.skip_torch_compile:
        s, out = wall([py, "-c", "COMPILE = True\n" + TORCH_JOB], tempfile.mkdtemp())
        first = next((line for line in out.splitlines() if line.startswith("first step")), out.strip()[-160:])
        print(f"| torch.compile LeNet, process to first step | {s:.1f} | {first} |")
    models = ["lenet", "capsnet-small"] + (["capsnet-em"] if args.capsnet_em else [])
    passes = {}
    for model in models:
        s, out = wall([py, "-c", FIRST_STEP, model], tempfile.mkdtemp(prefix="tc-first-"))
        r = json.loads(out.strip().splitlines()[-1]) if out.startswith("{") or "\n{" in out else None
        if r is None:
            print(f"| {model}: first step, cold | | {out} |")
            continue
        passes[model] = r["passes"]
        print(f"| {model}: first training step, cold | {r['first_step_s']:.1f} | whole process {s:.1f} s |")
    s, out = wall([py, "-c", CAPSULE], tempfile.mkdtemp(prefix="tc-caps-"))
    first, imp = (float(v) for v in out.split())
    print(f"| capsule kernel, first call in a new process, cold cache | {first:.2f} | import and arrays {imp:.2f} s |")
    best = min(wall([py, "-c", "import tensorcomp"], tempfile.mkdtemp())[0] for _ in range(3))
    base = min(wall([py, "-c", "pass"], tempfile.mkdtemp())[0] for _ in range(3))
    print(f"| import tensorcomp (process minus an empty one, best of 3) | {best - base:.2f} | |")
    print("\nCompile time per compiler pass in the first step, seconds (tensorcomp.compiler.PASS_SECONDS)\n")
    names = list(dict.fromkeys(n for p in passes.values() for n in p))
    print("| pass | " + " | ".join(passes) + " |\n|---|" + "---:|" * len(passes))
    for n in names:
        print(f"| {n} | " + " | ".join(f"{p.get(n, 0.0):.2f}" for p in passes.values()) + " |")


if __name__ == "__main__":
    main()
