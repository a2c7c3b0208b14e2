"""Ops, gradients and tuning on a real GPU against the CPU backend (skipped without pycuda and a GPU)."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp.runtime import cuda as rc
from tensorcomp.schedule import Block, Layout, Reorder, Split

from test_cuda_codegen import CORPUS, GRADS

pytestmark = pytest.mark.skipif(not rc.available(), reason="needs pycuda and a CUDA GPU")

CAPSULE = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"


def _random_like(arrays, seed):
    rng = np.random.default_rng(seed)
    out = []
    for a in arrays:
        if a.dtype == np.bool_:
            out.append(rng.random(a.shape) < 0.5)
        elif a.dtype.kind == "i":
            out.append(rng.integers(-9, 10, a.shape).astype(a.dtype))
        else:
            out.append(rng.standard_normal(a.shape).astype(a.dtype))
    return out


def _close(got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray) and g.shape == w.shape and g.dtype == w.dtype
        tol = 1e-4 if w.dtype == np.float32 else 1e-10
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * (float(np.abs(w).max(initial=0)) or 1.0))


@pytest.mark.parametrize("case", range(len(CORPUS) + len(GRADS)))
def test_corpus_matches_the_cpu(case):
    op, arrays, params = (CORPUS + GRADS)[case]
    arrays = _random_like(arrays, case)
    _close(op(*arrays, target="cuda", **params), op(*arrays, **params))


@pytest.mark.parametrize("schedule", [
    (Reorder(0, ("n", "y", "x", "co", "ky", "kx", "ci", "q", "p", "r")), Block(128)),
    (Split(0, "co", 4), Reorder(0, ("n", "y", "x", "co_o", "p", "ky", "kx", "ci", "q", "co_i", "r")), Block(64)),
    (Layout("W", (0, 1, 2, 4, 3, 5)), Layout("O", (0, 1, 2, 4, 3, 5)), Block(256)),
])
def test_register_tiles_and_layouts(schedule):
    I, W = _random_like([np.zeros((2, 9, 9, 8, 4, 4), np.float32), np.zeros((3, 3, 8, 8, 4, 4), np.float32)], 1)
    want = tc.op(CAPSULE)(I, W)
    _close(tc.op(CAPSULE, schedule=schedule)(I, W, target="cuda"), want)


def test_device_arrays_stay_on_the_device():
    import pycuda.gpuarray as ga
    A, B = _random_like([np.zeros((33, 17), np.float32), np.zeros((17, 9), np.float32)], 2)
    mm = tc.op("C[i, j] += A[i, k] * B[k, j]")
    C = mm(ga.to_gpu(A), ga.to_gpu(B))
    assert isinstance(C, ga.GPUArray) and C.shape == (33, 9)
    np.testing.assert_allclose(C.get(), A @ B, rtol=1e-5, atol=1e-5)
    # transposed (strided) device inputs are read in place: B.T @ A.T == (A @ B).T
    Ct = mm(ga.to_gpu(B).transpose(), ga.to_gpu(A).transpose())
    np.testing.assert_allclose(rc.to_host(Ct), (A @ B).T, rtol=1e-5, atol=1e-5)


def test_tuning_on_the_gpu_stores_a_verified_schedule():
    I, W = _random_like([np.zeros((2, 9, 9, 8, 4, 4), np.float32), np.zeros((3, 3, 8, 8, 4, 4), np.float32)], 3)
    op = tc.op(CAPSULE)
    result = tc.tune(op, I, W, target="cuda", budget_s=10, trials=12, progress=False)
    assert result.best_s <= result.default_s
    assert len(result.trials) >= 2
    _close(op(I, W, target="cuda"), tc.op(CAPSULE)(I, W))
    from tensorcomp.autotune import stored_schedule
    from tensorcomp.compiler import ArraySpec
    found = stored_schedule(op, [ArraySpec.of(I), ArraySpec.of(W)], {}, "cuda")
    assert found == result.schedule


def test_device_tensors_run_forward_and_backward_on_the_gpu():
    from tensorcomp import nn
    nn.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    x = np.random.default_rng(4).standard_normal((5, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 2, 1, 1, 0])
    loss_fn = nn.CrossEntropyLoss()
    cpu_loss = loss_fn(model(tc.Tensor(x)), y)
    cpu_loss.backward()
    cpu_grads = [p.grad.copy() for p in model.parameters()]
    model.to("cuda")
    assert all(p.device == "cuda" for p in model.parameters())
    xg = tc.Tensor(x, device="cuda")
    out = model(xg)
    assert out.device == "cuda" and isinstance(out.numpy(), np.ndarray)
    loss = loss_fn(out, y)
    model.zero_grad()
    loss.backward()
    np.testing.assert_allclose(loss.item(), cpu_loss.item(), rtol=1e-5)
    for p, g in zip(model.parameters(), cpu_grads):
        np.testing.assert_allclose(rc.to_host(p.grad), g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["lenet", "capsnet-small"])
def test_training_steps_on_the_gpu_follow_the_cpu(model):
    from tensorcomp.train import train
    cpu = train(model, epochs=1, max_steps=3, progress=False)
    gpu = train(model, epochs=1, max_steps=3, progress=False, device="cuda")
    assert gpu["device"] == "cuda"
    np.testing.assert_allclose(gpu["initial_loss"], cpu["initial_loss"], rtol=1e-3)
    np.testing.assert_allclose(gpu["final_loss"], cpu["final_loss"], rtol=2e-2)


@pytest.mark.parametrize("case", range(3))
def test_tensor_cores_on_the_gpu_match_tf32_references(case):
    from test_tensor_cores import CASES, _inputs, _reference
    op, shapes = CASES[case]
    arrays = _inputs(shapes, case)
    got = op(*arrays, target="cuda")
    want = _reference(op, arrays)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(np.abs(want).max()))
