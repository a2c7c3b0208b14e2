"""Parameters and optimizer state in the layouts the step's kernels read them in (``state_layouts``)."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import optim, state_layouts
from tensorcomp.schedule.records import Layout
from tensorcomp.tensor import keep_state

rng = np.random.default_rng(3)
# an op whose own schedule reads W with its last axis outermost: its kernel copies W on every call
VOTES = tc.op("U[n, i, j, d] += X[n, i, k] * W[i, j, d, k]").with_schedule((Layout("W", (0, 3, 1, 2)),))
SCALE = tc.op("Y[n, i, k] = X[n, i, k] * A[i, k]")
NORM = tc.op("L += U[n, i, j, d] * U[n, i, j, d] * s")


def _setup(make_opt):
    w = keep_state(tc.Tensor((rng.standard_normal((12, 3, 16, 8)) * 0.1).astype(np.float32), requires_grad=True))
    a = keep_state(tc.Tensor(np.ones((12, 8), np.float32), requires_grad=True))
    opt = make_opt([w, a])

    def step(x):
        opt.zero_grad()
        loss = NORM(VOTES(SCALE(tc.Tensor(x), a), w), s=0.01)
        loss.backward()
        opt.step()
        return loss
    return w, a, opt, step


@pytest.mark.parametrize("make_opt", [lambda ps: optim.Adam(ps, 1e-2), lambda ps: optim.SGD(ps, 1e-2, momentum=0.9)])
def test_a_parameter_moves_with_its_update_and_shows_its_logical_layout(monkeypatch, tmp_path, make_opt):
    """Moved (the move forced to pay): the weight, its gradient and its optimizer state live with the
    axis order the kernel reads (no copy per step; the first replay converts the state once); the
    step trains as the eager one does; the tensors, the optimizer's state dict and an eager step
    after compiled ones still see the logical layout. Not moved where it does not pay."""
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path / "moved"))
    monkeypatch.setattr(state_layouts, "_pays", lambda *args: True)
    xs = [rng.standard_normal((4, 12, 8)).astype(np.float32) for _ in range(6)]
    seed = rng.integers(1 << 30)
    runs = []
    for compiled in (True, False):
        np.random.seed(seed)
        w, a, opt, step = _setup(make_opt)
        w.data, a.data = np.random.standard_normal(w.shape).astype(np.float32) * 0.1, np.ones(a.shape, np.float32)
        f = tc.compile(step) if compiled else step
        losses = [float(f(x).numpy()) for x in xs[:5]]
        runs.append((f, w, a, opt, step, losses))
    (f, w, a, opt, step, losses), (_, w0, a0, opt0, step0, losses0) = runs
    np.testing.assert_allclose(losses, losses0, rtol=1e-5)
    assert f.stats(xs[0])["relayout_copies"] == 0
    # W stored with its last axis outermost (strides of a (12, 8, 3, 16) array, transposed back)
    assert w.data.strides == (8 * 3 * 16 * 4, 16 * 4, 4, 3 * 16 * 4) and w.numpy().shape == (12, 3, 16, 8)
    moments = [t.data for t in (opt.m if isinstance(opt, optim.Adam) else opt.buf)]
    assert moments[0].strides == w.data.strides and moments[1].strides == a.data.strides
    np.testing.assert_allclose(w.numpy(), w0.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(w.grad, w0.grad, rtol=1e-5, atol=1e-7)
    for (k, s), (_, s0) in zip(opt.state_dict().items(), opt0.state_dict().items()):
        assert s.shape == s0.shape
        np.testing.assert_allclose(s, s0, rtol=1e-5, atol=1e-9, err_msg=k)
    # an eager step on the moved tensors, then compiled steps again: still the eager training
    step(xs[5]), step0(xs[5])
    assert f(xs[0]).numpy() == pytest.approx(step0(xs[0]).numpy(), rel=1e-5)
    np.testing.assert_allclose(w.numpy(), w0.numpy(), rtol=1e-5, atol=1e-7)
    # where the move does not pay, the kernel keeps its copy
    monkeypatch.setenv("TENSORCOMP_CACHE_DIR", str(tmp_path / "kept"))
    monkeypatch.setattr(state_layouts, "_pays", lambda *args: False)
    w, a, opt, step = _setup(make_opt)
    g = tc.compile(step)
    for x in xs[:4]:
        g(x)
    assert g.stats(xs[0])["relayout_copies"] == 1 and w.data.flags.c_contiguous
