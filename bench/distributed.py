"""Data-parallel training and distributed tuning on MPI, measured on this host, projected beyond it.

    python bench/distributed.py [--epochs 3] [--models lenet,capsnet-small] [--tune-budget 20]

1. Each model trained (`tensorcomp train`, no kernel tuning, same seed and global batch 64) as 1 rank
   x 2 threads and as 2 ranks x 1 thread (`--nproc 2`): ms/step, allreduce ms/step (the wait in
   `DistributedOptimizer.synchronize`), bytes reduced per step, test accuracy.
2. On paper, for CapsNet (full) and capsnet-em: step time and scaling efficiency on 8 and 64 machines
   at 10 and 100 Gb/s, from their gradient bytes (counted here) and a measured compute time per step,
   with a ring allreduce (2 (p-1)/p x bytes over the link, plus 2 (p-1) latencies of 10 µs).
3. Distributed tuning of the capsule kernel: candidates measured per second with 1 rank (2 threads)
   and with 2 ranks (1 thread each), same budget.
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

from tensorcomp import nn  # noqa: E402
from tensorcomp.train import MODELS  # noqa: E402

CAPS = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"
# measured compute per step (ms, batch 64, one process on this 2-core CPU): CapsNet (full) from the issue's
# figure (about a second), capsnet-em from its eager step (bench/RESULTS.md)
COMPUTE_MS = {"capsnet": 1000.0, "capsnet-em": 344.0}
LATENCY_S = 10e-6


def run(cmd: list[str], env: dict) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3000)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return out.stdout


def training(models: list[str], epochs: int) -> list[str]:
    rows = []
    for model in models:
        for nproc, threads in ((1, "2"), (2, None)):
            env = dict(os.environ, TENSORCOMP_CACHE_DIR=tempfile.mkdtemp(prefix="tc-dist-"))
            env.pop("TENSORCOMP_NUM_THREADS", None)
            if threads:
                env["TENSORCOMP_NUM_THREADS"] = threads
            cmd = [sys.executable, "-m", "tensorcomp.cli", "train", model, "--epochs", str(epochs), "--json",
                   "--tune", "0"] + (["--nproc", str(nproc)] if nproc > 1 else [])
            r = json.loads([line for line in run(cmd, env).splitlines() if line.startswith("{")][-1])
            rows.append(f"| {model} | {nproc} x {threads or 1} | {r['ms_per_step']:.1f} | "
                        f"{r['allreduce_ms_per_step']:.2f} | {r['reduced_bytes_per_step']:,} | "
                        f"{r['test_accuracy']:.3f} |")
    return rows


def projection() -> list[str]:
    rows = []
    for model, compute_ms in COMPUTE_MS.items():
        nn.manual_seed(0)
        params = sum(p.data.nbytes for p in MODELS[model][0]().parameters())
        compute = compute_ms / 1e3
        for gbps in (10, 100):
            for p in (8, 64):
                ring = 2 * (p - 1) / p * params * 8 / (gbps * 1e9) + 2 * (p - 1) * LATENCY_S
                strong = compute / p + ring  # global batch 64 shared by p machines
                weak = compute + ring  # 64 per machine
                rows.append(f"| {model} | {params / 1e6:.2f} MB | {gbps} Gb/s | {p} | {ring * 1e3:.1f} | "
                            f"{strong * 1e3:.1f} ({compute / (p * strong):.2f}) | "
                            f"{weak * 1e3:.1f} ({compute / weak:.2f}) |")
    return rows


def tuning(budget: float) -> list[str]:
    rows = []
    for nproc in (1, 2):
        env = dict(os.environ, TENSORCOMP_CACHE_DIR=tempfile.mkdtemp(prefix="tc-dist-tune-"),
                   TENSORCOMP_NUM_THREADS=str(2 // nproc))
        cmd = [sys.executable, "-m", "tensorcomp.cli", "tune", CAPS, "--shape", "I=32x14x14x32x4x4",
               "--shape", "W=3x3x32x32x4x4", "--budget", str(budget)]
        if nproc > 1:
            cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(nproc)] + cmd
        out = run(cmd, env)
        line = next(line for line in out.splitlines() if line.startswith("tried"))
        tried, seconds = int(line.split()[1]), float(line.split()[4])
        best = next(line for line in out.splitlines() if line.startswith("default"))
        rows.append(f"| {nproc} x {2 // nproc} | {tried} | {seconds:.1f} | {tried / seconds:.2f} | {best} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", default="lenet,capsnet-small")
    parser.add_argument("--tune-budget", type=float, default=20.0)
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print("| model | ranks x threads | ms/step | allreduce ms/step | bytes reduced/step | test accuracy |\n"
          "|---|---|---:|---:|---:|---:|")
    print("\n".join(training(args.models.split(","), args.epochs)))
    print("\nProjected (ring allreduce; compute per step measured on one 2-core process; efficiency in "
          "parentheses)\n")
    print("| model | gradient bytes | link | machines | allreduce ms | step ms, global batch 64 | "
          "step ms, 64 per machine |\n|---|---:|---|---:|---:|---:|---:|")
    print("\n".join(projection()))
    print(f"\nDistributed tuning of the capsule kernel ({args.tune_budget:.0f} s budget)\n")
    print("| ranks x threads | candidates | seconds | candidates/s | result |\n|---|---:|---:|---:|---|")
    print("\n".join(tuning(args.tune_budget)))


if __name__ == "__main__":
    main()
