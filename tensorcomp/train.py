"""``tensorcomp train``: models from the nn layer trained on MNIST."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import distributed as dist
from . import nn, optim
from .data import DataLoader, mnist
from .errors import ArgumentError
from .runtime import compile_count
from .runtime import cuda
from .autotune.background import BackgroundTuner
from .autotune.hot import profile, tune_hot
from .step import compile as compile_step
from .tensor import Tensor, no_grad


def lenet() -> nn.Module:
    """LeNet-5 (ReLU, max pooling) for 28x28 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


class CapsNet(nn.Module):
    """Sabour et al.'s CapsNet without the reconstruction decoder: conv 9x9 -> primary capsules
    (9x9 stride 2, ``types`` types of 8D) -> 10 digit capsules of 16D by dynamic routing; the
    class scores are the digit capsules' lengths. Feature maps are channels-last inside."""

    def __init__(self, channels: int = 256, types: int = 32, iterations: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 9, channels_last=True)
        self.relu = nn.ReLU()
        self.primary = nn.PrimaryCaps(channels, types, 8, 9, stride=2, channels_last=True)
        self.digits = nn.DenseCaps(types * 6 * 6, 8, 10, 16, iterations)
        self.length = nn.Length()

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(0, 2, 3, 1)  # (N, 1, H, W) -> (N, H, W, 1): a view
        return self.length(self.digits(self.primary(self.relu(self.conv1(x)))))


class CapsNetEM(nn.Module):
    """Matrix capsules with EM routing, sized for a CPU: conv 5x5 stride 2 (64 channels) -> 8 primary
    4x4-pose types -> ConvCaps 3x3 stride 2 (8 types) -> ConvCaps 3x3 (8 types) -> 10 class
    capsules; the class scores are their activations."""

    def __init__(self, channels: int = 32, types: int = 8, iterations: int = 2, lam_class: float = 0.01) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 5, stride=2)
        self.relu = nn.ReLU()
        self.primary = nn.EMPrimaryCaps(channels, types)
        self.caps1 = nn.ConvCaps(types, types, 3, stride=2, iterations=iterations)
        self.caps2 = nn.ConvCaps(types, types, 3, stride=1, iterations=iterations)
        self.classes = nn.ClassCaps(types, 10, iterations=iterations, lam=lam_class)

    def forward(self, x: Tensor) -> Tensor:
        poses, acts = self.primary(self.relu(self.conv1(x)))
        poses, acts = self.caps1(poses, acts)
        poses, acts = self.caps2(poses, acts)
        return self.classes(poses, acts)[0]


DEFAULT_TUNE_S = 60.0  # CPU: seconds of tuning for the kernels of the first steps (--tune)
# the background tuner starts only when the training left would last this long at the measured step
# time (its first kernels come back after ~10-30 s; a worker that cannot finish in time only competes
# for the caches: CapsNet-small's 3 epochs, 4 s of steps, ran 23.4 ms/step with it, 22.0 without)
BACKGROUND_MIN_S = 30.0
TIMED_BEFORE_TUNING = 5  # steps timed (replays, for a compiled step) before that estimate

MODELS = {
    "lenet": (lenet, nn.CrossEntropyLoss),
    "capsnet": (lambda: CapsNet(256, 32), nn.MarginLoss),
    "capsnet-small": (lambda: CapsNet(64, 8), nn.MarginLoss),
    "capsnet-em": (lambda: CapsNetEM(channels=64), lambda: nn.SpreadLoss(steps=1000)),
}


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 250, device: str = "cpu") -> float:
    """Test accuracy; with several ranks each scores its shard of the test set and the counts are summed.
    Every batch has ``batch_size`` samples (the last one padded with zeros, their scores dropped), so
    evaluating with the training batch size runs the kernels training compiled (no new batch shape)."""
    model.eval()
    correct = 0
    part = dist.shard(len(x))
    x, y = x[part], y[part]
    with no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            n = len(xb)
            if n < batch_size:
                xb = np.concatenate([xb, np.zeros((batch_size - n,) + xb.shape[1:], xb.dtype)])
            logits = model(Tensor(xb, device=device)).numpy()[:n]
            correct += int((logits.argmax(1) == y[start:start + n]).sum())
    model.train()
    return dist.gather_sum(correct) / dist.gather_sum(len(x))


def train(model_name: str, epochs: int = 1, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
          data: str | None = None, progress: bool = True, max_steps: int | None = None, device: str = "cpu",
          tune_s: float = 0.0, distributed: bool = False, check_every: int = 0, background: bool = False,
          retune: bool = False, compiled: bool = True) -> dict:
    """Train ``model_name`` on MNIST; returns the summary printed by ``tensorcomp train --json`` (see
    ``fit``, which also returns the trained model)."""
    return fit(model_name, epochs, batch_size, lr, seed, data, progress, max_steps, device, tune_s, distributed,
               check_every, background, retune, compiled)[1]


def fit(model_name: str, epochs: int = 1, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
        data: str | None = None, progress: bool = True, max_steps: int | None = None, device: str = "cpu",
        tune_s: float = 0.0, distributed: bool = False, check_every: int = 0, background: bool = False,
        retune: bool = False, compiled: bool = True) -> tuple[nn.Module, dict]:
    """Train ``model_name`` on MNIST; returns the model and the summary ``tensorcomp train --json`` prints.

    With ``tune_s`` > 0 (CPU), the second step is profiled and the ops it spent its time in are
    tuned for ``tune_s`` seconds in all (``autotune.hot``); the tuned schedules are stored in the
    tuning database, so a later run with the same shapes uses them at once, and ops with a stored
    result are not tuned again (unless ``retune``). With ``background``, a worker process tunes them
    while training goes on (``autotune.background``): each tuned kernel is swapped in between steps as it
    is ready, and the worker is ended with the training (nothing waits for it); it starts once a few
    steps are timed, and only when the steps left would take ``BACKGROUND_MIN_S`` or more
    (``"tuning": "skipped"`` otherwise: a shorter run would end before its kernels came back, and the
    worker would only compete for the caches). Steps that compiled,
    profiled, tuned or swapped kernels in, and those the compiled step ran eagerly to trace itself, are
    left out of ``ms_per_step`` (their seconds are ``compile_s``).

    ``distributed``: data-parallel over the MPI job this process is a rank of (``tensorcomp.distributed``):
    every rank starts from rank 0's parameters, takes its shard of each global batch of ``batch_size``,
    and the gradients are summed over the ranks before each step; kernels are not tuned (ranks must run
    the same kernels to stay bit-identical). ``check_every`` K > 0: every K steps, check that all ranks
    hold the same parameters. Only rank 0 shows progress.

    ``compiled`` (one rank): the training step runs through ``tc.compile`` (traced on its first
    calls with each batch shape, then replayed as one program; on CUDA its kernels are one module);
    otherwise op by op (``--eager``).
    """
    if model_name not in MODELS:
        raise ArgumentError(f"tensorcomp train: unknown model {model_name!r}; models: {', '.join(MODELS)}")
    for what, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            flag = what.replace("_", "-")
            raise ArgumentError(f"tensorcomp train: --{flag} must be a positive integer, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr) or lr <= 0:
        raise ArgumentError(f"tensorcomp train: --lr must be a finite number > 0, got {lr!r}")
    if max_steps is not None and max_steps < 1:
        raise ArgumentError(f"tensorcomp train: max_steps must be >= 1, got {max_steps!r}")
    if distributed:
        dist.init()
        dist.agree("the training options", (model_name, epochs, batch_size, lr, seed, data, device))
        if dist.size() > 1:
            tune_s = 0.0
    ranks = dist.size()
    nn.manual_seed(seed)
    build, make_loss = MODELS[model_name]
    model = build().to(device)
    dist.broadcast_parameters(model)
    xtr, ytr, xte, yte = mnist(data)
    opt = optim.Adam(model.parameters(), lr=lr)
    shared = dist.DistributedOptimizer(opt) if ranks > 1 else None
    loss_fn = make_loss()
    loader = DataLoader(xtr, ytr, batch_size, shuffle=True, seed=seed, rank=dist.rank(), ranks=ranks)
    compiled = compiled and shared is None

    def one_step(xb, yb):
        logits = model(Tensor(xb, device=device))
        loss = loss_fn(logits, yb)
        opt.zero_grad()
        if shared is not None:
            shared.set_batch(len(xb), loader.global_batch)
        loss.backward()
        if shared is not None:
            shared.step()
        else:
            opt.step()
        return loss, logits
    run_step = compile_step(one_step) if compiled else one_step
    reduce_s, reduced = [], 0
    step_times, losses, hits, steps, compile_s, tuning_s, tuned = [], [], [], 0, 0.0, 0.0, []
    tuner, pending = None, None
    tuning = "off" if not tune_s or device != "cpu" else "blocking" if not background else "skipped"
    eval_batch = 0  # the first step's batch: evaluation reuses its kernels
    tune_at = 2 if tune_s > 0 and device == "cpu" else None
    bar = None
    if progress and dist.is_main():
        try:
            from tqdm import tqdm
            bar = tqdm(total=epochs * len(loader), desc=model_name, unit="step")
        except ImportError:
            bar = None
    for _ in range(epochs):
        for xb, yb in loader:
            eval_batch = eval_batch or len(xb)
            if pending is not None and len(step_times) >= TIMED_BEFORE_TUNING:
                # ... when the steps left take long enough for its kernels to come back
                left = min(epochs * len(loader), max_steps or epochs * len(loader)) - steps
                if left * float(np.median(step_times)) >= BACKGROUND_MIN_S:
                    tuner = BackgroundTuner.start(pending, tune_s, retune)
                    tuning = "background"
                pending = None
            if tuner is not None and tuner.poll():  # tuned kernels swapped in from here
                if compiled:
                    run_step.forget_kernels()
                if bar is not None:
                    bar.set_postfix_str(f"tuned {len([d for d in tuner.done if 'tuning_s' in d])} kernels")
            before = compile_count(), run_step.traces if compiled else 0
            profiling = steps + 1 == tune_at
            t0 = time.perf_counter()
            with profile() if profiling else contextlib.nullcontext() as prof:
                # (the profiled step runs op by op: a compiled step's traces run no op eagerly)
                loss, logits = (one_step if profiling else run_step)(xb, yb)
                if shared is not None:
                    reduce_s.append(shared.reduce_s)
                    reduced = shared.reduced_bytes
            if device == "cuda":  # kernels run asynchronously: time them to the end
                cuda.synchronize()
            elapsed = time.perf_counter() - t0
            if profiling and background:  # a worker tunes the profiled ops while training goes on ...
                pending = prof
            elif profiling:  # the profiled step copies every op's inputs: not a timed step
                t1 = time.perf_counter()
                tuned = tune_hot(prof, tune_s, retune=retune)
                tuning_s = time.perf_counter() - t1
            elif (compile_count(), run_step.traces if compiled else 0) == before:
                step_times.append(elapsed)
            else:  # a new batch shape: this step JIT-compiled kernels or ran under the step's tracer
                compile_s += elapsed
            losses.append(loss.item())
            hits.append(float((logits.numpy().argmax(1) == yb).mean()))
            steps += 1
            if check_every and ranks > 1 and steps % check_every == 0:
                dist.check_parameters(model, steps)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{np.mean(hits[-20:]):.3f}")
            if max_steps is not None and steps >= max_steps:
                break
        if max_steps is not None and steps >= max_steps:
            break
    if bar is not None:
        bar.close()
    if tuner is not None:  # never waits: what the worker finished is stored, a later run tunes the rest
        tuner.stop()
        tuned = tuner.done
    acc = evaluate(model, xte, yte, batch_size=eval_batch or 250, device=device)
    # steps that compiled kernels or traced the step (the first ones, and the first with each new batch
    # shape) are reported apart: ms_per_step is the mean over the steps that only ran kernels
    return model, {"model": model_name, "device": device, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
            "steps": steps, "test_accuracy": acc,
            "ms_per_step": 1e3 * float(np.mean(step_times)) if step_times else float("nan"),
            "median_ms_per_step": 1e3 * float(np.median(step_times)) if step_times else float("nan"),
            "compiling_steps": steps - len(step_times) - (tune_at is not None and steps >= tune_at),
            "compile_s": compile_s, "tune_s": tuning_s, "tuned_ops": len([t for t in tuned if "tuning_s" in t]),
            "stored_ops": len([t for t in tuned if t.get("stored")]),
            "tuning": tuning,
            "initial_loss": float(np.mean(losses[:5])), "final_loss": float(np.mean(losses[-5:])),
            "compiled": compiled, "traced_steps": run_step.traces if compiled else 0,
            "ranks": ranks, "allreduce_ms_per_step": 1e3 * float(np.mean(reduce_s)) if reduce_s else 0.0,
            "reduced_bytes_per_step": reduced}


def main(args) -> int:
    if args.nproc is not None:
        return launch(args.nproc)
    # default: tuning in the background (never longer than without); --tune S: a blocking phase of S s
    background = args.tune is None
    tune_s = args.tune if args.tune is not None else (DEFAULT_TUNE_S if args.device == "cpu" else 0.0)
    result = train(args.model, args.epochs, args.batch_size, args.lr, args.seed, args.data,
                   progress=not args.json, device=args.device, tune_s=tune_s, distributed=args.distributed,
                   check_every=args.check_every, background=background, retune=args.retune,
                   compiled=not args.eager)
    if not dist.is_main():
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        ranks = f", {result['ranks']} ranks" if result["ranks"] > 1 else ""
        print(f"{result['model']}: test accuracy {result['test_accuracy']:.3f} after {result['epochs']} epoch(s), "
              f"{result['ms_per_step']:.1f} ms/step{ranks} ({result['compiling_steps']} steps compiled kernels: "
              f"{result['compile_s']:.1f} s; {result['tuned_ops']} kernels tuned"
              + {"background": " in the background", "skipped": " (too little training left to tune in the background)",
                 "off": ""}.get(result["tuning"], f" in {result['tune_s']:.1f} s")
              + (f", {result['stored_ops']} already tuned" if result["stored_ops"] else "") + ")")
    return 0


def launch(nproc: int) -> int:
    """``tensorcomp train ... --nproc N``: the same command as N ranks on this host, through the MPI
    launcher of the dist extra (``mpiexec`` beside this Python, else on the PATH); each rank gets
    an equal share of the cores. Returns the job's exit status (non-zero when any rank failed)."""
    if nproc < 1:
        raise ArgumentError(f"tensorcomp train: --nproc must be >= 1, got {nproc}")
    beside = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise ArgumentError("tensorcomp train --nproc: no mpiexec found; install the dist extra "
                            "(pip install 'tensorcomp[dist]': mpi4py and MPICH) or start the ranks with your own "
                            "launcher: mpiexec -n N tensorcomp train MODEL --distributed")
    argv = list(sys.argv[1:])
    k = argv.index("--nproc") if "--nproc" in argv else None
    if k is not None:
        del argv[k:k + 2]
    else:
        argv = [a for a in argv if not a.startswith("--nproc=")]
    env = dict(os.environ)
    env.setdefault("TENSORCOMP_NUM_THREADS", str(dist.local_threads(nproc)))
    proc = subprocess.Popen([mpiexec, "-n", str(nproc), sys.executable, "-m", "tensorcomp.cli", *argv,
                             "--distributed"], env=env)

    def stop(signum, frame):  # ending the launcher ends the job
        proc.terminate()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    return proc.wait()
