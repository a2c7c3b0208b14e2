"""Capsule layers and routing: forward against numpy references, gradients by finite differences
(float64, directional), losses, model wiring, and clear errors."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import nn, ops

from test_nn import fd_check

rng = np.random.default_rng(5)


def squash_ref(s):
    q = (s * s).sum(-1, keepdims=True)
    return s * q / ((1 + q) * np.sqrt(q + 1e-9))


def dynamic_ref(U, iterations):
    b = np.zeros(U.shape[:3])
    for t in range(iterations):
        c = np.exp(b - b.max(2, keepdims=True))
        c /= c.sum(2, keepdims=True)
        v = squash_ref((c[..., None] * U).sum(1))
        if t < iterations - 1:
            b = b + (U * v[:, None]).sum(-1)
    return v


def em_ref(A, V, bu, ba, iterations, lam):
    J = V.shape[2]
    R = np.full(V.shape[:3], 1 / J)
    for t in range(iterations):
        W = R * A[:, :, None]
        D = W.sum(1)
        K = D.mean(1)
        mu = (W[..., None] * V).sum(1) / (D[..., None] + 1e-6)
        G = (W[..., None] * (V - mu[:, None]) ** 2).sum(1) / (D[..., None] + 1e-6)
        C = ((bu[None, :, None] + 0.5 * np.log(G + 1e-4)) * (D / (K[:, None] + 1e-6))[..., None]).sum(-1)
        ao = 1 / (1 + np.exp(-lam * (ba[None] - C)))
        if t < iterations - 1:
            P = (-(V - mu[:, None]) ** 2 / (2 * (G[:, None] + 1e-4)) - 0.5 * np.log(G[:, None] + 1e-4)).sum(-1)
            L = np.log(ao[:, None] + 1e-6) + P
            Y = np.exp(L - L.max(2, keepdims=True))
            R = Y / Y.sum(2, keepdims=True)
    return ao, mu


def directional(op, inputs, wrt, params, eps=1e-6):
    """d/de sum(op(inputs + e*dirs) * weights) by central differences against the derived gradient."""
    outs = op(*inputs, **params)
    outs = outs if isinstance(outs, tuple) else (outs,)
    weights = [rng.standard_normal(o.shape) for o in outs]
    dirs = {n: rng.standard_normal(inputs[op.inputs.index(n)].shape) for n in wrt}

    def f(e):
        moved = [x + e * dirs[n] if n in dirs else x for n, x in zip(op.inputs, inputs)]
        res = op(*moved, **params)
        res = res if isinstance(res, tuple) else (res,)
        return sum(float((r * w).sum()) for r, w in zip(res, weights))
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    grads = tc.grad(op, list(wrt))(*inputs, *weights, **params)
    grads = grads if isinstance(grads, tuple) else (grads,)
    analytic = sum(float((g * dirs[n]).sum()) for n, g in zip(wrt, grads))
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)


@pytest.mark.parametrize("iterations", [1, 3])
def test_dynamic_routing_matches_numpy_and_its_gradient(iterations):
    U = rng.standard_normal((2, 5, 3, 4))
    op = ops.capsule.dynamic_routing(iterations)
    np.testing.assert_allclose(op(U, inv_j=1 / 3), dynamic_ref(U, iterations), rtol=1e-12, atol=1e-12)
    directional(op, [U], ["U"], {"inv_j": 1 / 3})


def test_em_routing_matches_numpy_and_its_gradient():
    A, V = rng.random((2, 6)), rng.standard_normal((2, 6, 3, 16))
    bu, ba = rng.standard_normal(3), rng.standard_normal(3)
    op = ops.capsule.em_routing(2, 3)
    assert op.inputs == ("A", "V", "BU", "BA") and op.outputs == ("AO", "POSE")
    ao, pose = op(A, V, bu, ba, lam=0.5)
    rao, rpose = em_ref(A, V, bu, ba, 2, 0.5)
    np.testing.assert_allclose(ao, rao, rtol=1e-10)
    np.testing.assert_allclose(pose, rpose, rtol=1e-10, atol=1e-12)
    directional(op, [A, V, bu, ba], ["A", "V", "BU", "BA"], {"lam": 0.5})


def test_losses_match_numpy_and_their_gradients():
    L = rng.random((4, 5))
    T = np.array([0, 3, 4, 3])
    one = np.eye(5)[T]
    want = (one * np.maximum(0, 0.9 - L) ** 2 + 0.5 * (1 - one) * np.maximum(0, L - 0.1) ** 2).sum(1).mean()
    margin = ops.capsule.margin_loss()
    got = margin(T, L, m_plus=0.9, m_minus=0.1, lam=0.5, inv_n=0.25)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    directional(margin, [T, L], ["L"], {"m_plus": 0.9, "m_minus": 0.1, "lam": 0.5, "inv_n": 0.25})
    at = L[np.arange(4), T]
    want = ((1 - one) * np.maximum(0, 0.4 - (at[:, None] - L)) ** 2).sum(1).mean()
    spread = ops.capsule.spread_loss()
    np.testing.assert_allclose(spread(T, L, margin=0.4, inv_n=0.25), want, rtol=1e-12)
    directional(spread, [T, L], ["A"], {"margin": 0.4, "inv_n": 0.25})


@pytest.mark.parametrize("channels_last", [False, True])
def test_primary_caps_is_conv_then_squashed_capsules(channels_last):
    layer = nn.PrimaryCaps(3, types=2, dim=4, kernel_size=3, stride=2, channels_last=channels_last)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    xin = x.transpose(0, 2, 3, 1).copy() if channels_last else x
    out = layer(tc.Tensor(xin)).data
    w = layer.conv.weight.data
    w = w.transpose(3, 2, 0, 1) if channels_last else w  # -> (F, C, k, k)
    conv = np.zeros((2, 8, 3, 3))
    for y in range(3):
        for z in range(3):
            conv[:, :, y, z] = np.einsum("ncij,fcij->nf", x[:, :, 2 * y:2 * y + 3, 2 * z:2 * z + 3], w)
    conv += layer.conv.bias.data[None, :, None, None]
    caps = conv.reshape(2, 2, 4, 3, 3).transpose(0, 1, 3, 4, 2).reshape(2, 18, 4)  # (n, t*9 + y*3 + x, d)
    np.testing.assert_allclose(out, squash_ref(caps), rtol=1e-4, atol=1e-5)
    fd_check(layer, xin)


def test_dense_caps_layer_routes_votes():
    layer = nn.DenseCaps(6, 4, 3, 5, iterations=2)
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    U = np.einsum("nik,ijdk->nijd", x.astype(np.float64), layer.weight.data.astype(np.float64))
    np.testing.assert_allclose(layer(tc.Tensor(x)).data, dynamic_ref(U, 2), rtol=1e-4, atol=1e-6)
    fd_check(layer, x)


def test_matrix_capsule_layers_shapes_and_gradients():
    prim = nn.EMPrimaryCaps(3, 2)
    caps = nn.ConvCaps(2, 3, kernel_size=3, stride=2, iterations=2)
    cls = nn.ClassCaps(3, 4, iterations=2)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    poses, acts = prim(tc.Tensor(x))
    assert poses.shape == (2, 7, 7, 2, 4, 4) and acts.shape == (2, 7, 7, 2)
    assert 0 < acts.data.min() and acts.data.max() < 1
    p2, a2 = caps(poses, acts)
    assert p2.shape == (2, 3, 3, 3, 4, 4) and a2.shape == (2, 3, 3, 3)
    a3, p3 = cls(p2, a2)
    assert a3.shape == (2, 4) and p3.shape == (2, 4, 4, 4)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.prim, self.caps, self.cls = prim, caps, cls

        def forward(self, x):
            return self.cls(*self.caps(*self.prim(x)))[0]
    fd_check(Net(), x, eps=1e-2, tol=5e-2)


def test_views_carry_gradients():
    x = tc.Tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    y = x.transpose(2, 0, 1).reshape(4, 6)
    assert y.shape == (4, 6) and np.shares_memory(y.data, x.data)
    c = rng.standard_normal((4, 6))
    y.backward(c)
    np.testing.assert_allclose(x.grad, c.reshape(4, 2, 3).transpose(1, 2, 0))
    with pytest.raises(tc.ShapeError) as info:
        x.reshape(5, 5)
    assert str(info.value) == "reshape: cannot reshape a tensor of shape (2, 3, 4) (24 elements) into (5, 5)"


def test_conv_layers_of_any_rank_groups_and_dilation():
    conv = nn.Conv1d(4, 6, 3, dilation=2, groups=2, padding=1)
    x = rng.standard_normal((2, 4, 9)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    w, b = conv.weight.data, conv.bias.data
    out = np.zeros((2, 6, 7), np.float32)
    for f in range(6):
        g = f // 3
        for y in range(7):
            out[:, f, y] = np.einsum("nck,ck->n", xp[:, 2 * g:2 * g + 2, y:y + 5:2], w[f]) + b[f]
    np.testing.assert_allclose(conv(tc.Tensor(x)).data, out, rtol=1e-4, atol=1e-5)
    pool = nn.AvgPool3d(2)
    v = rng.standard_normal((1, 2, 4, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(pool(tc.Tensor(v)).data, v.reshape(1, 2, 2, 2, 2, 2, 2, 2).mean((3, 5, 7)),
                               rtol=1e-5)
    assert repr(conv) == "Conv1d(4, 6, kernel_size=3, padding=(1,), dilation=(2,), groups=2)"


def test_capsule_layer_errors():
    with pytest.raises(tc.ShapeError) as info:
        nn.DenseCaps(6, 4, 3, 5)(tc.Tensor(np.zeros((2, 6, 3), np.float32)))
    assert str(info.value) == "DenseCaps: expected input capsules of shape (N, 6, 4), got (2, 6, 3)"
    with pytest.raises(tc.ShapeError) as info:
        nn.MarginLoss()(tc.Tensor(np.zeros((2, 10), np.float32)), np.zeros(3, np.int64))
    assert str(info.value) == "MarginLoss: expected integer targets of shape (2,), got int64 of shape (3,)"
    with pytest.raises(tc.ShapeError) as info:
        nn.PrimaryCaps(2, 2, 4, 3)(tc.Tensor(np.zeros((1, 3, 5, 5), np.float32)))
    assert str(info.value) == "PrimaryCaps(2, 2x4): expected 2 features on axis 1, got shape (1, 3, 5, 5)"
    with pytest.raises(tc.ShapeError) as info:
        nn.ConvCaps(2, 3)(tc.Tensor(np.zeros((1, 5, 5, 2, 4, 4))), tc.Tensor(np.zeros((1, 5, 5, 3))))
    assert str(info.value) == ("ConvCaps: expected poses (N, H, W, 2, 4, 4) and activations (N, H, W, 2), got "
                               "(1, 5, 5, 2, 4, 4) and (1, 5, 5, 3)")
    with pytest.raises(tc.ArgumentError) as info:
        nn.Conv2d(4, 8, (3, 3, 3))
    assert str(info.value) == "Conv2d(4, 8): kernel_size must be an int or 2 ints, got (3, 3, 3)"
    with pytest.raises(tc.ArgumentError) as info:
        nn.Conv1d(4, 6, 3, groups=4)
    assert str(info.value) == "Conv1d(4, 6): in_channels and out_channels must be divisible by groups=4"


def test_capsnet_small_training_steps_reduce_the_loss():
    from tensorcomp.train import CapsNet
    nn.manual_seed(0)
    model = CapsNet(channels=8, types=2, iterations=2)
    x, y = tc.data.mnist()[:2]
    x, y = x[:32], y[:32]
    opt = tc.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.MarginLoss()
    losses = []
    for _ in range(6):
        loss = loss_fn(model(tc.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
