"""The ``tensorcomp`` command line."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .errors import TensorcompError


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.partition("=")
    if not name or not dims:
        raise argparse.ArgumentTypeError(f"expected NAME=DxDx..., e.g. A=2x3, got '{text}'")
    try:
        shape = tuple(int(d) for d in dims.split("x")) if dims != "scalar" else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=DxDx..., e.g. A=2x3, got '{text}'") from None
    if any(d < 0 or d >= 2 ** 62 for d in shape):
        raise argparse.ArgumentTypeError(f"extents must lie in [0, 2**62), got '{text}'")
    return name, shape


def _dtype_arg(text: str) -> tuple[str, str]:
    name, value = _kv(text)
    if value not in ("float32", "float64", "int32", "int64", "bool"):
        raise argparse.ArgumentTypeError(f"dtype of {name} must be one of float32, float64, int32, int64, bool; "
                                         f"got '{value}'")
    return name, value


def _kv(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    return name, value


def _range_arg(text: str) -> tuple[str, object]:
    name, value = _kv(text)
    try:
        if ":" in value:
            lo, hi = value.split(":")
            return name, (int(lo), int(hi))
        return name, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INDEX=N or INDEX=LO:HI, got '{text}'") from None


def cmd_show(args: argparse.Namespace) -> int:
    from .compiler import ArraySpec
    from .opdef import Op
    from .strides import contiguous
    op = Op(args.source, ranges=dict(args.range) or None)
    shapes = dict(args.shape)
    dtypes = dict(args.dtype)
    specs = []
    for name in op.inputs:
        if name not in shapes:
            print(f"error: {op.label}: no shape for input {name}; pass --shape {name}=DxD...", file=sys.stderr)
            return 2
        dt = np.dtype(dtypes.get(name, "float32"))
        specs.append(ArraySpec(shapes[name], dt, contiguous(shapes[name], dt.itemsize)))
    params = {p: 1.0 for p in op.params}
    print(f"# op\n{op.source}\n")
    print(f"# inputs {', '.join(op.inputs)}; outputs {', '.join(op.outputs)}"
          + (f"; scalar parameters {', '.join(op.params)}" if op.params else ""))
    print("\n# shapes")
    for name, shape in op.shapes(*specs, **params).items():
        print(f"{name}: {shape}")
    print("\n# ranges (lo <= index < hi) and isl domains")
    for k, (ranges, dom) in enumerate(zip(op.ranges(*specs, **params), op.domains(*specs, **params))):
        line = op.program.statements[k].line
        print(f"line {line}: " + ", ".join(f"{n} in [{lo}, {hi})" for n, (lo, hi) in ranges.items()))
        print(f"  {dom}")
    print("\n# loop nest")
    print(op.loopnest(*specs, **params))
    print(f"\n# LLVM IR{' (after -O3)' if args.optimized else ''}")
    print(op.code(*specs, optimized=args.optimized, **params))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Classify the bundled MNIST digits by nearest class mean, every step a tensorcomp op."""
    from . import op
    from .data import mnist_5k
    d = mnist_5k()
    xtr = d["train_images"].reshape(len(d["train_images"]), -1).astype(np.float32) / 255
    xte = d["test_images"].reshape(len(d["test_images"]), -1).astype(np.float32) / 255
    ytr, yte = d["train_labels"].astype(np.int64), d["test_labels"].astype(np.int64)
    t0 = time.perf_counter()
    # one-hot labels, class sums and counts, class means, squared distances, nearest class
    means = op("""
        H[n, c] = where(Y[n] == c, 1.0, 0.0)
        S[c, p] += H[n, c] * X[n, p]
        K[c] += H[n, c]
        M[c, p] = S[c, p] / K[c]
    """, ranges={"c": 10})
    dist = op("D[n, c] += (X[n, p] - M[c, p]) ** 2")
    nearest = op("""
        B[n] = min(D[n, c])
        P[n] = max(where(D[n, c] == B[n], 9 - c, -1))
        L[n] = 9 - P[n]
    """)
    M = means(ytr, xtr)
    D = dist(xte, M)
    pred = nearest(D)
    elapsed = time.perf_counter() - t0
    ref_m = np.stack([xtr[ytr == c].mean(0) for c in range(10)])
    ref_pred = ((xte[:, None, :] - ref_m[None]) ** 2).sum(-1).argmin(1)
    agree = float((pred == ref_pred).mean())
    acc = float((pred == yte).mean())
    print(f"tensorcomp demo: nearest class mean on the bundled MNIST subset "
          f"({len(xtr)} train / {len(xte)} test digits)")
    print(f"  test accuracy {acc:.3f}; predictions agree with numpy on {agree:.1%} of digits; "
          f"{elapsed:.2f} s including JIT compilation")
    caps_demo()
    return 0 if agree > 0.99 else 1


def caps_demo() -> None:
    from .ops import capsule_conv
    rng = np.random.default_rng(0)
    I = rng.standard_normal((32, 14, 14, 32, 4, 4), dtype=np.float32)
    W = rng.standard_normal((3, 3, 32, 32, 4, 4), dtype=np.float32)
    caps = capsule_conv(stride=2)
    O = caps(I, W)
    best = min(_time(lambda: caps(I, W)) for _ in range(3))
    flops = 2 * np.prod(O.shape) * 3 * 3 * 32 * 4
    print(f"  capsule convolution {I.shape} x {W.shape} -> {O.shape}: {best * 1e3:.1f} ms "
          f"({flops / best / 1e9:.1f} GFLOP/s, default schedule)")


def cmd_tune(args: argparse.Namespace) -> int:
    from . import distributed as dist
    from . import tune
    dist.init()  # under mpiexec: the ranks tune together
    from .opdef import Op
    op = Op(args.source, ranges=dict(args.range) or None)
    shapes, dtypes = dict(args.shape), dict(args.dtype)
    rng = np.random.default_rng(0)
    arrays = []
    for name in op.inputs:
        if name not in shapes:
            print(f"error: {op.label}: no shape for input {name}; pass --shape {name}=DxD...", file=sys.stderr)
            return 2
        arrays.append(rng.standard_normal(shapes[name]).astype(dtypes.get(name, "float32")))
    params = {p: 1.0 for p in op.params}
    result = tune(op, *arrays, budget_s=args.budget, trials=args.trials, progress=dist.is_main(),
                  retune=args.retune, **params)
    if dist.is_main():  # under mpiexec the ranks tuned together; rank 0 reports (and stored the result)
        ranks = f" on {dist.size()} ranks" if dist.size() > 1 else ""
        print(result.summary() + ranks)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .autotune import database
    from .runtime import objects as disk
    if args.action == "list":
        rows = database.entries() if database.db_path().exists() else []
        print(f"# {len(rows)} tuned entries in {database.db_path()}")
        for r in rows:
            op = r["op"].replace("\n", "; ")
            print(f"{r['best_s'] * 1e3:10.3f} ms  {op}  {r['signature']}\n{'':15s}{r['schedule']}")
        objects = disk.cached_objects()
        size = sum(f.stat().st_size for f in objects)
        print(f"# {len(objects)} compiled kernels ({size / 1e6:.1f} MB) in {disk.cache_dir() / 'objects'}")
    elif args.action == "clear":
        n = database.clear() if database.db_path().exists() else 0
        print(f"removed {n} entries from {database.db_path()} and {disk.clear_objects()} compiled kernels")
    elif args.action == "export":
        print(f"wrote {database.export(args.file)} entries to {args.file}")
    else:
        print(f"read {database.import_(args.file)} entries from {args.file}")
    return 0


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tensorcomp", description="Tensor ops written as index expressions.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print inferred ranges, domains, the loop nest and the LLVM IR of an op")
    show.add_argument("source", help="the op, e.g. 'C[i, j] += A[i, k] * B[k, j]'")
    show.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME=DxD",
                      help="shape of an input, e.g. A=2x3 (repeat per input)")
    show.add_argument("--dtype", action="append", type=_dtype_arg, default=[], metavar="NAME=DTYPE",
                      help="dtype of an input (default float32)")
    show.add_argument("--range", action="append", type=_range_arg, default=[], metavar="INDEX=N|LO:HI",
                      help="explicit range of an index")
    show.add_argument("--optimized", action="store_true", help="print the IR after LLVM's -O3 pipeline")
    show.set_defaults(run=cmd_show)
    tune = sub.add_parser("tune", help="search schedules for an op on random inputs; store the best")
    tune.add_argument("source")
    tune.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME=DxD")
    tune.add_argument("--dtype", action="append", type=_dtype_arg, default=[], metavar="NAME=DTYPE")
    tune.add_argument("--range", action="append", type=_range_arg, default=[], metavar="INDEX=N|LO:HI")
    tune.add_argument("--budget", type=float, default=60.0, help="seconds (default 60)")
    tune.add_argument("--trials", type=int, default=None, help="at most this many candidate schedules")
    tune.add_argument("--retune", action="store_true", help="search again even when a result is stored")
    tune.set_defaults(run=cmd_tune)
    cache = sub.add_parser("cache",
                           help="the tuning database and compiled kernels: list, clear, export FILE, import FILE")
    cache.add_argument("action", choices=["list", "clear", "export", "import"])
    cache.add_argument("file", nargs="?", help="JSON file for export/import")
    cache.set_defaults(run=cmd_cache)
    train = sub.add_parser("train", help="train a model on MNIST (the bundled subset unless --data)")
    train.add_argument("model", choices=["lenet", "capsnet", "capsnet-small", "capsnet-em"])
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data", default=None, help="directory with the MNIST IDX files")
    train.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    train.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the kernels run")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the MPI job this process is a rank of (start with mpiexec)")
    train.add_argument("--nproc", type=int, default=None, metavar="N",
                       help="run N ranks on this host (MPI from the dist extra), data-parallel")
    train.add_argument("--check-every", type=int, default=0, metavar="K",
                       help="with several ranks: check every K steps that all ranks hold the same parameters")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--compile", dest="eager", action="store_false",
                      help="run each training step as one compiled program (tc.compile: traced on its first calls "
                           "with each batch shape, then replayed); the default on the CPU with one rank")
    mode.add_argument("--eager", action="store_true",
                      help="run the training step op by op (for debugging; always so with several ranks)")
    train.set_defaults(eager=False)
    train.add_argument("--retune", action="store_true",
                       help="tune kernels again even when the tuning database has a result for them")
    train.add_argument("--tune", type=float, default=None, metavar="S",
                       help="seconds of blocking tuning for the kernels the second step spends its time in, before "
                            "training goes on (CPU; 0: none). Default: up to 60 s of tuning in a background "
                            "process while training goes on (when 30 s or more of training are left), tuned "
                            "kernels swapped in between steps. Tuned "
                            "schedules are stored: a later run uses them at once and never tunes them again")
    train.set_defaults(run=lambda a: __import__("tensorcomp.train", fromlist=["main"]).main(a))
    demo = sub.add_parser("demo", help="run ops on the bundled MNIST subset and time the capsule kernel")
    demo.set_defaults(run=cmd_demo)
    args = parser.parse_args(argv)
    if args.command == "cache" and args.action in ("export", "import") and not args.file:
        parser.error(f"cache {args.action} needs a FILE")
    try:
        return args.run(args)
    except TensorcompError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
