"""More nn layers and tensor arithmetic: against numpy, gradients by finite differences, clear errors."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import nn

from test_nn import fd_check

rng = np.random.default_rng(11)


def test_batchnorm_train_eval_and_running_statistics():
    bn = nn.BatchNorm2d(3)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1
    y = bn(tc.Tensor(x)).data
    mean = x.mean((0, 2, 3), keepdims=True)
    var = x.var((0, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
    m = 4 * 25
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mean.ravel(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * var.ravel() * m / (m - 1), rtol=1e-4)
    bn.eval()
    rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
    want = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(bn(tc.Tensor(x)).data, want, rtol=1e-4, atol=1e-4)
    bn.train()
    bn.weight.data = rng.standard_normal(3).astype(np.float32)
    fd_check(nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2, channels_last=False), nn.Tanh()), x)
    with pytest.raises(tc.ShapeError) as info:
        bn(tc.Tensor(np.zeros((2, 4, 3), np.float32)))
    assert str(info.value) == "BatchNorm(3): expected 3 channels on axis 1, got shape (2, 4, 3)"


def test_dropout_scales_kept_elements_and_is_identity_in_eval():
    nn.manual_seed(1)
    drop = nn.Dropout(0.25)
    x = np.ones((200, 50), np.float32)
    y = drop(tc.Tensor(x)).data
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    t = tc.Tensor(x, requires_grad=True)
    out = drop(t)
    out.backward(np.ones_like(x))
    np.testing.assert_allclose(t.grad, (out.data != 0) / 0.75, rtol=1e-6)
    drop.eval()
    assert drop(t) is t
    with pytest.raises(tc.ArgumentError) as info:
        nn.Dropout(1.0)
    assert str(info.value) == "Dropout: p must be a number in [0, 1), got 1.0"


def test_activations_softmax_and_losses():
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(nn.Sigmoid()(tc.Tensor(x)).data, 1 / (1 + np.exp(-x)), rtol=1e-5)
    np.testing.assert_allclose(nn.Tanh()(tc.Tensor(x)).data, np.tanh(x), rtol=1e-5)
    e = np.exp(x - x.max(0))
    np.testing.assert_allclose(nn.Softmax(0)(tc.Tensor(x)).data, e / e.sum(0), rtol=1e-5)
    t = np.array([1, 0, 3])
    logp = nn.LogSoftmax()(tc.Tensor(x))
    np.testing.assert_allclose(nn.NLLLoss()(logp, t).item(), -logp.data[np.arange(3), t].mean(), rtol=1e-5)
    target = rng.standard_normal((3, 4)).astype(np.float32)
    p = tc.Tensor(x, requires_grad=True)
    loss = nn.MSELoss()(p, target)
    np.testing.assert_allclose(loss.item(), ((x - target) ** 2).mean(), rtol=1e-5)
    loss.backward()
    np.testing.assert_allclose(p.grad, 2 * (x - target) / x.size, rtol=1e-5)
    with pytest.raises(tc.ShapeError) as info:
        nn.MSELoss()(p, np.zeros((4, 3)))
    assert str(info.value) == "MSELoss: prediction has shape (3, 4) but target has shape (4, 3)"
    with pytest.raises(tc.ShapeError) as info:
        nn.NLLLoss()(logp, np.array([1.5, 0, 2]))
    assert str(info.value) == "NLLLoss: expected integer targets of shape (3,), got float64 of shape (3,)"


def test_tensor_arithmetic_broadcasts_and_differentiates():
    A, B = rng.standard_normal((2, 3)), rng.standard_normal(3)
    a, b = tc.Tensor(A, requires_grad=True), tc.Tensor(B, requires_grad=True)
    s = (((a * b + 1.0) / 2.0 - b) ** 2).sum() + (2.0 - a).mean()
    C = (A * B + 1) / 2 - B
    np.testing.assert_allclose(s.item(), (C ** 2).sum() + (2 - A).mean(), rtol=1e-12)
    s.backward()
    np.testing.assert_allclose(a.grad, C * B - 1 / 6, rtol=1e-12)
    np.testing.assert_allclose(b.grad, (2 * C * (A / 2 - 1)).sum(0), rtol=1e-12)
    np.testing.assert_allclose((a @ tc.Tensor(np.ones((3, 2)))).numpy(), A @ np.ones((3, 2)), rtol=1e-12)
    np.testing.assert_allclose((-a).numpy(), -A)
    with pytest.raises(tc.ShapeError) as info:
        a + tc.Tensor(np.ones(4))
    assert str(info.value) == "operands of shapes (2, 3) and (4,) do not broadcast together (numpy's rules)"
