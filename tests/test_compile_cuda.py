"""tc.compile on CUDA tensors, run on the CPU emulator: the whole step as one CUDA module, against the
eager step on the CPU."""

import shutil
import subprocess

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import nn, optim
from tensorcomp.runtime import cuda as rc
from tensorcomp.step import on_device
from tensorcomp.trace import Call, View

import cuda_emulator
from cuda_emulator import emulated

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the emulator needs g++")

rng = np.random.default_rng(11)
BATCHES = [(rng.random((4, 1, 12, 12), dtype=np.float32), rng.integers(0, 3, 4)) for _ in range(6)]


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(144, 3))


def _train(device, compiled, make_opt):
    nn.manual_seed(0)
    model, lossf = _net(), nn.CrossEntropyLoss()
    model.to(device)
    opt = make_opt(model.parameters())

    def step(x, y):  # x and y stay numpy: the step uploads them (a copy on each replay)
        opt.zero_grad()
        loss = lossf(model(tc.Tensor(x, device=device)), y)
        loss.backward()
        opt.step()
        return loss
    f = tc.compile(step) if compiled else step
    losses = [float(f(x, y).numpy()) for x, y in BATCHES]
    return losses, {k: np.asarray(v) for k, v in model.state_dict().items()}, f


@pytest.mark.parametrize("make_opt", [lambda ps: optim.Adam(ps, 1e-2),
                                      lambda ps: optim.SGD(ps, 0.05, momentum=0.9)], ids=["adam", "sgd"])
def test_compiled_gpu_steps_match_eager_cpu_steps(make_opt, tmp_path):
    want_losses, want_state, _ = _train("cpu", False, make_opt)
    built = []

    class Counted(cuda_emulator.Module):
        def __init__(self, source, names, arg_format):
            built.append((source, names))
            super().__init__(source, names, arg_format)
    with emulated():
        rc.Module = Counted
        losses, state, step = _train("cuda", True, make_opt)
        program = step._entry(()).program
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4)
    for k in want_state:
        np.testing.assert_allclose(state[k], want_state[k], rtol=1e-4, atol=1e-6 * np.abs(want_state[k]).max())
    assert step.traces == 2 and step.replays == 4
    assert program.device == "cuda"
    # the step's kernels: one module (the last one built), each call's kernel in a namespace of its own
    source, names = built[-1]
    device = on_device(program)
    gpu_calls = [c for c in program.body if isinstance(c, Call) and any(v in device for v in c.inputs)]
    assert source.count("}  // namespace tc_s") == len(gpu_calls) >= 8 and all(n.startswith("tc_s") for n in names)
    # the labels and the batch go up on each replay; Adam's step counter stays on the CPU (a CPU kernel)
    uploads = [v for v in program.body if isinstance(v, View) and v.upload]
    assert len(uploads) >= 2
    if shutil.which("nvcc"):  # and the module assembles for the GPU
        (tmp_path / "step.cu").write_text(source)
        proc = subprocess.run(["nvcc", "-arch=sm_80", "-cubin", "-Werror", "all-warnings", str(tmp_path / "step.cu"),
                               "-o", str(tmp_path / "step.cubin")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_host_arrays_with_target_cuda_inside_a_traced_step_are_refused():
    op = tc.op("B[i] = A[i] * 2")

    def step(x):
        return op(x, target="cuda")
    f = tc.compile(step)
    with emulated(), pytest.raises(tc.TraceError) as info:
        f(np.ones(4, np.float32))
    assert str(info.value) == ("tc.compile: op 'B[i] = A[i] * 2' was called on host arrays with target='cuda' "
                               "inside a traced step; keep the step's tensors on one device "
                               "(tc.Tensor(x, device='cuda'))")


def test_one_process_trains_device_parameters_without_mpi():
    # (tensorcomp train broadcasts rank 0's parameters first: with one process there is nothing to
    # send, and the parameters may live on the GPU)
    from tensorcomp import distributed as dist
    with emulated():
        model = nn.Linear(3, 2)
        model.to("cuda")
        dist.broadcast_parameters(model)
        assert model.weight.device == "cuda"


class _Dense(nn.Module):
    """A layer whose contraction runs on tensor cores (precision="tf32"), its gradients too."""

    def __init__(self, i, o):
        super().__init__()
        self.w = nn.Parameter(0.1 * np.random.default_rng(3).standard_normal((i, o)).astype(np.float32))
        self.op = tc.op("Y[n, o] += X[n, i] * W[i, o]", precision="tf32")

    def forward(self, x):
        return self.op(x, self.w)


def test_a_compiled_gpu_step_runs_tf32_layers_on_tensor_cores(tmp_path):
    data = np.random.default_rng(1)
    batches = [(data.standard_normal((32, 16)).astype(np.float32), data.integers(0, 8, 32)) for _ in range(5)]
    built = []

    class Counted(cuda_emulator.Module):
        def __init__(self, source, names, arg_format):
            built.append(source)
            super().__init__(source, names, arg_format)

    def run(compiled):
        nn.manual_seed(0)
        model = nn.Sequential(_Dense(16, 32), nn.ReLU(), _Dense(32, 8))
        model.to("cuda")
        opt, lossf = optim.SGD(model.parameters(), 0.1), nn.CrossEntropyLoss()

        def step(x, y):
            opt.zero_grad()
            loss = lossf(model(tc.Tensor(x, device="cuda")), y)
            loss.backward()
            opt.step()
            return loss
        f = tc.compile(step) if compiled else step
        return [float(f(x, y).numpy()) for x, y in batches], {k: np.asarray(v) for k, v in model.state_dict().items()}
    with emulated():
        rc.Module = Counted
        eager, compiled = run(False), run(True)
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5)  # (both in TF32: the same arithmetic)
    for k in eager[1]:
        np.testing.assert_allclose(compiled[1][k], eager[1][k], rtol=1e-4, atol=1e-5)
    # the step's module: tf32 contractions (forward, input and weight gradients) on tensor cores
    assert built[-1].count("tc_mma_tf32(&tc_c[") >= 3
    if shutil.which("nvcc"):
        (tmp_path / "step.cu").write_text(built[-1])
        proc = subprocess.run(["nvcc", "-arch=sm_80", "-cubin", str(tmp_path / "step.cu"), "-o",
                               str(tmp_path / "step.cubin")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
