"""Capsule convolution against naive C, NumPy, torch eager and torch.compile (one run).

    python bench/capsule.py [--budget 60] [--no-compile] [--png bench/out/capsule.png]

Same as ``tensorcomp bench capsule``; the experiment lives in tensorcomp/benchmarks/capsule.py.
"""

import argparse

from tensorcomp.benchmarks.capsule import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=60.0, help="tuning budget in seconds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for ~20 s)")
    parser.add_argument("--png", default="bench/out/capsule.png")
    args = parser.parse_args()
    print(run(args.budget, args.rounds, not args.no_compile, args.png))
