"""The capsule convolution on an NVIDIA GPU: tensorcomp (default, tuned, fresh process) beside
torch eager CUDA (unfold + einsum) and torch.compile, forward and both gradients, in one run; and
with TF32 tensor cores on both sides (torch ``allow_tf32``, tensorcomp ``precision="tf32"``).

    python bench/capsule_gpu.py [--budget 60] [--grad-budget 30] [--rounds 7]

Times are CUDA-event times of back-to-back calls (median of the rounds, interleaved); every
result is checked against a float64 reference. The fp32 ceiling is cuBLAS SGEMM (TF32 off) on
8192² matrices measured in the same run; the datasheet fp32 peak is given beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_process_seconds  # noqa: E402

SRC = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"
N, H, CI, CO, P = 32, 14, 32, 32, 4
OH = (H - 3) // 2 + 1
FLOPS = 2.0 * N * OH * OH * CO * P * P * 3 * 3 * CI * P


def _events_time(fn, calls: int) -> float:
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def _sgemm_ceiling() -> float:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(8192, 8192, device="cuda")
    b = torch.randn(8192, 8192, device="cuda")
    torch.mm(a, b)
    t = min(_events_time(lambda: torch.mm(a, b), 5) for _ in range(3))
    return 2 * 8192 ** 3 / t / 1e9


def _fresh(cache: str, calls: int) -> float | None:
    code = textwrap.dedent(f"""
        import numpy as np, torch, tensorcomp as tc, pycuda.gpuarray as ga
        tc.runtime.cuda.init()
        rng = np.random.default_rng(0)
        I = ga.to_gpu(rng.standard_normal({(N, H, H, CI, P, P)}, dtype=np.float32))
        W = ga.to_gpu(rng.standard_normal({(3, 3, CI, CO, P, P)}, dtype=np.float32))
        op = tc.op({SRC!r})
        op(I, W)
        import pycuda.driver as drv
        s, e = drv.Event(), drv.Event()
        best = 1e9
        for _ in range(5):
            s.record()
            for _ in range({calls}):
                op(I, W)
            e.record(); e.synchronize()
            best = min(best, s.time_till(e) / 1e3 / {calls})
        print(best)
    """)
    return fresh_process_seconds(code, cache)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--grad-budget", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="tc-gpu-bench-")
    os.environ["TENSORCOMP_CACHE_DIR"] = cache  # a cold database
    import torch
    import pycuda.gpuarray as ga
    import tensorcomp as tc
    from tensorcomp.runtime import cuda as rc
    rc.init()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(0)
    I = rng.standard_normal((N, H, H, CI, P, P), dtype=np.float32)
    W = rng.standard_normal((3, 3, CI, CO, P, P), dtype=np.float32)
    dO = rng.standard_normal((N, OH, OH, CO, P, P), dtype=np.float32)
    tI, tW, tdO = (torch.from_numpy(a).cuda() for a in (I, W, dO))
    gI, gW, gdO = (ga.to_gpu(a) for a in (I, W, dO))
    info = rc.device_info()
    lines = [f"# Capsule convolution on the GPU, N={N} ({FLOPS / 1e9:.2f} GFLOP per pass), float32", "",
             f"device: {info['name']} (sm_{info['cc']}, {info['sms']} SMs, driver {info['driver']}); "
             f"torch {torch.__version__}"]
    ceiling = _sgemm_ceiling()
    lines.append(f"fp32 ceiling: cuBLAS SGEMM 8192² with TF32 off, this run: {ceiling / 1e3:.1f} TFLOP/s "
                 f"(H100 SXM datasheet fp32: 67 TFLOP/s)")

    def eager(a, b):
        return torch.einsum("nyxcpqab,abcdqr->nyxdpr", a.unfold(1, 3, 2).unfold(2, 3, 2), b)

    # references in float64
    rI, rW, rdO = tI.double().requires_grad_(), tW.double().requires_grad_(), tdO.double()
    ref = eager(rI, rW)
    ref.backward(rdO)
    refs = {"fwd": ref.detach().cpu().numpy(), "dI": rI.grad.cpu().numpy(), "dW": rW.grad.cpu().numpy()}

    rows: dict[str, dict] = {}
    notes: dict[str, str] = {}

    def add(name: str, kind: str, fn, check=None, tol: float = 1e-4):
        out = fn()
        if check is not None:
            for key, got in check(out).items():
                want = refs[key]
                err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
                if not err < tol:
                    notes[name] = f"WRONG ({key}: relative error {err:.1e})"
        rows[name] = {"kind": kind, "fn": fn, "times": []}

    def host(x):
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else rc.to_host(x)

    with torch.no_grad():
        add("torch eager (unfold + einsum)", "fwd", lambda: eager(tI, tW), lambda o: {"fwd": host(o)})
        compiled = torch.compile(lambda a, b: eager(a, b))
        t0 = time.perf_counter()
        compiled(tI, tW)
        torch.cuda.synchronize()
        notes["torch.compile"] = f"compile {time.perf_counter() - t0:.1f} s"
        add("torch.compile", "fwd", lambda: compiled(tI, tW), lambda o: {"fwd": host(o)})

    untuned = tc.op(SRC, use_tuned=False)
    add("tensorcomp untuned (default GPU schedule)", "fwd", lambda: untuned(gI, gW), lambda o: {"fwd": host(o)})
    op = tc.op(SRC)
    result = tc.tune(op, gI, gW, target="cuda", budget_s=args.budget, progress=False)
    notes["tensorcomp tuned"] = (f"tuning {result.tuning_s:.1f} s, {len(result.trials)} schedules; "
                                 f"best {list(result.schedule)}")
    add("tensorcomp tuned", "fwd", lambda: op(gI, gW), lambda o: {"fwd": host(o)})

    # TF32 on both sides (tensor cores): torch with allow_tf32, tensorcomp with precision="tf32"
    def tf32_on(fn):
        def run():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                return fn()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        return run
    with torch.no_grad():
        add("torch eager, TF32 on", "fwd", tf32_on(lambda: eager(tI, tW)), lambda o: {"fwd": host(o)}, tol=1e-2)
    op32 = tc.op(SRC, precision="tf32", use_tuned=False)
    add("tensorcomp precision='tf32', default schedule", "fwd", lambda: op32(gI, gW), lambda o: {"fwd": host(o)},
        tol=1e-2)
    tuned32 = tc.op(SRC, precision="tf32")
    res32 = tc.tune(tuned32, gI, gW, target="cuda", budget_s=args.grad_budget, progress=False)
    notes["tensorcomp precision='tf32', tuned"] = f"tuning {res32.tuning_s:.1f} s; best {list(res32.schedule)}"
    add("tensorcomp precision='tf32', tuned", "fwd", lambda: tuned32(gI, gW), lambda o: {"fwd": host(o)}, tol=1e-2)

    # gradients: torch autograd (both inputs, one backward) vs tensorcomp's derived ops
    aI, aW = tI.clone().requires_grad_(), tW.clone().requires_grad_()

    def torch_backward():
        out = eager(aI, aW)
        return torch.autograd.grad(out, (aI, aW), tdO)
    add("torch autograd forward + backward (dI and dW)", "grad", torch_backward,
        lambda g: {"dI": host(g[0]), "dW": host(g[1])})
    g_i, g_w = tc.grad(op, "I"), tc.grad(op, "W")
    for name, g in (("dI", g_i), ("dW", g_w)):
        d = g.with_schedule((), use_tuned=False)
        add(f"tensorcomp {name} untuned", "grad", lambda d=d: d(gI, gW, gdO), lambda o, k=name: {k: host(o)})
    for name, g in (("dI", g_i), ("dW", g_w)):
        res = tc.tune(g, gI, gW, gdO, target="cuda", budget_s=args.grad_budget, progress=False)
        notes[f"tensorcomp {name} tuned"] = f"tuning {res.tuning_s:.1f} s; best {list(res.schedule)}"
        add(f"tensorcomp {name} tuned", "grad", lambda g=g: g(gI, gW, gdO), lambda o, k=name: {k: host(o)})

    for _ in range(args.rounds):  # interleaved rounds
        for row in rows.values():
            row["times"].append(_events_time(row["fn"], args.calls))
    fresh = _fresh(cache, args.calls)

    med = {name: float(np.median(row["times"])) for name, row in rows.items()}
    if fresh is not None:
        med["tensorcomp tuned, fresh process (warm database)"] = fresh
        rows["tensorcomp tuned, fresh process (warm database)"] = {"kind": "fwd"}
    eager_t = med["torch eager (unfold + einsum)"]
    eager32 = med["torch eager, TF32 on"]
    lines += ["", "| contender | µs | TFLOP/s | fraction of SGEMM ceiling | vs torch eager (TF32 rows: vs torch "
              "eager with TF32) | note |",
              "|---|---:|---:|---:|---:|---|"]
    for name, t in med.items():
        flops = 3 * FLOPS if "forward + backward" in name else FLOPS  # each gradient costs one forward
        tf = flops / t / 1e12
        vs = f"{(eager32 if 'TF32' in name or 'tf32' in name else eager_t) / t:.2f}x" \
            if rows[name]["kind"] == "fwd" else "-"
        lines.append(f"| {name} | {t * 1e6:.1f} | {tf:.2f} | {tf * 1e3 / ceiling:.2f} | {vs} | {notes.get(name, '')} |")
    tb = med["torch autograd forward + backward (dI and dW)"]
    ours = med["tensorcomp tuned"] + med["tensorcomp dI tuned"] + med["tensorcomp dW tuned"]
    lines.append(f"\nforward + both gradients: tensorcomp tuned {ours * 1e6:.1f} µs vs torch autograd "
                 f"{tb * 1e6:.1f} µs ({tb / ours:.2f}x)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
