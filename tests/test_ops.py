"""The op library (tensorcomp.ops) against NumPy and loop references."""

import itertools
import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from tensorcomp import ops

rng = np.random.default_rng(1)


def conv_reference(x, w, stride, dilation, padding, groups):
    """Channels-first convolution by explicit loops over output positions (float64)."""
    rank = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    n, c = x.shape[:2]
    f, cg = w.shape[:2]
    k = w.shape[2:]
    out_sp = [(x.shape[2 + a] - dilation[a] * (k[a] - 1) - 1) // stride[a] + 1 for a in range(rank)]
    out = np.zeros((n, f, *out_sp))
    fg = f // groups
    for pos in itertools.product(*[range(o) for o in out_sp]):
        for tap in itertools.product(*[range(kk) for kk in k]):
            src = tuple(pos[a] * stride[a] + tap[a] * dilation[a] for a in range(rank))
            for g in range(groups):
                xs = x[(slice(None), slice(g * cg, (g + 1) * cg)) + src]  # (n, cg)
                ws = w[(slice(g * fg, (g + 1) * fg), slice(None)) + tap]  # (fg, cg)
                out[(slice(None), slice(g * fg, (g + 1) * fg)) + pos] += xs @ ws.T
    return out


CONV_CASES = [
    # rank, spatial, kernel, stride, dilation, padding, groups
    (1, (11,), (3,), (2,), (1,), (0,), 1),
    (1, (12,), (3,), (1,), (2,), (1,), 1),
    (2, (9, 8), (3, 2), (2, 1), (1, 2), (0, 0), 1),
    (2, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 2),
    (2, (8, 9), (3, 3), (2, 2), (2, 1), (2, 1), 1),
    (3, (5, 6, 5), (2, 3, 2), (1, 2, 1), (2, 1, 1), (0, 1, 0), 1),
]


@pytest.mark.parametrize("rank,spatial,kernel,stride,dilation,padding,groups", CONV_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_any_rank(rank, spatial, kernel, stride, dilation, padding, groups, channels_last):
    c, f = 4, 6
    x = rng.standard_normal((2, c, *spatial))
    w = rng.standard_normal((f, c // groups, *kernel))
    ref = conv_reference(x, w, stride, dilation, padding, groups)
    op = ops.conv(rank, stride=stride, dilation=dilation, padding=padding, groups=groups,
                  channels_last=channels_last, in_channels=c, out_channels=f)
    if channels_last:
        xl = np.moveaxis(x, 1, -1)
        # weights (k..., c, f)
        wl = np.moveaxis(np.moveaxis(w, 0, -1), 0, -2)
        got = np.moveaxis(op(xl, wl), -1, 1)
    else:
        got = op(x, w)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("rank,window,stride,padding", [(1, 3, 2, 0), (2, 2, 2, 0), (2, 3, 2, 1), (3, 2, 1, 0)])
def test_pool_any_rank(kind, rank, window, stride, padding):
    x = rng.standard_normal((2, 3) + (7,) * rank)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(padding, padding)] * rank,
                constant_values=-np.inf if kind == "max" else 0.0)
    win = sliding_window_view(xp, (window,) * rank, axis=tuple(range(2, 2 + rank)))
    win = win[(slice(None), slice(None)) + (slice(None, None, stride),) * rank]
    axes = tuple(range(-rank, 0))
    ref = win.max(axes) if kind == "max" else win.mean(axes)
    got = ops.pool(kind, rank, window, stride, padding)(x)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    got_last = ops.pool(kind, rank, window, stride, padding, channels_last=True)(np.moveaxis(x, 1, -1))
    np.testing.assert_allclose(np.moveaxis(got_last, -1, 1), ref, rtol=1e-10, atol=1e-12)


def test_matmul_and_batched_matmul():
    a, b = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((7, 3)).astype(np.float32)
    np.testing.assert_allclose(ops.matmul()(a, b), a @ b, rtol=1e-5)
    a, b = rng.standard_normal((4, 5, 7)), rng.standard_normal((4, 7, 3))
    np.testing.assert_allclose(ops.batched_matmul()(a, b), a @ b, rtol=1e-12)


@pytest.mark.parametrize("kind", ["sum", "max", "min", "prod"])
@pytest.mark.parametrize("axes", [(0,), (1, 2), (-1,), (0, 1, 2)])
def test_reductions_over_axes(kind, axes):
    x = rng.standard_normal((3, 4, 5))
    ref = getattr(np, kind)(x, axis=axes)
    np.testing.assert_allclose(ops.reduce(kind, 3, axes)(x), ref, rtol=1e-10, atol=1e-12)


def test_mean():
    x = rng.standard_normal((3, 4, 5))
    np.testing.assert_allclose(ops.mean(x, (0, 2)), x.mean((0, 2)), rtol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_and_log_softmax(axis):
    x = rng.standard_normal((3, 4, 5)) * 5
    e = np.exp(x - x.max(axis, keepdims=True))
    sm = e / e.sum(axis, keepdims=True)
    np.testing.assert_allclose(ops.softmax(3, axis)(x), sm, rtol=1e-12)
    np.testing.assert_allclose(ops.log_softmax(3, axis)(x), np.log(sm), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ops.ACTIVATIONS))
def test_activations(name):
    x = rng.standard_normal((4, 6)) * 2
    refs = {
        "relu": np.maximum(x, 0), "sigmoid": 1 / (1 + np.exp(-x)), "tanh": np.tanh(x), "exp": np.exp(x),
        "log": np.log(np.abs(x) + 0.1), "abs": np.abs(x), "leaky_relu": np.where(x > 0, x, 0.2 * x),
        "elu": np.where(x > 0, x, np.exp(x) - 1), "softplus": np.log1p(np.exp(x)),
        "gelu_tanh": 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))),
        "gelu": 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    }
    arg = np.abs(x) + 0.1 if name == "log" else x
    params = {"slope": 0.2} if name == "leaky_relu" else {}
    np.testing.assert_allclose(ops.activation(name, 2)(arg, **params), refs[name], rtol=1e-12)


def test_capsule_conv_and_votes():
    I = rng.standard_normal((2, 9, 9, 3, 4, 2))
    W = rng.standard_normal((3, 3, 3, 5, 2, 4))
    win = sliding_window_view(I, (3, 3), axis=(1, 2))[:, ::2, ::2]  # n y x ci p q ky kx
    np.testing.assert_allclose(ops.capsule_conv(2)(I, W), np.einsum("nyxcpqab,abcdqr->nyxdpr", win, W), rtol=1e-10)
    np.testing.assert_allclose(ops.capsule_votes(2)(I, W), np.einsum("nyxcpqab,abcdqr->nyxabcdpr", win, W),
                               rtol=1e-10)


def test_dense_votes_and_squash():
    X, W = rng.standard_normal((2, 6, 8)), rng.standard_normal((6, 10, 16, 8))
    U = ops.dense_votes()(X, W)
    np.testing.assert_allclose(U, np.einsum("ijdk,nik->nijd", W, X), rtol=1e-10)
    V = rng.standard_normal((2, 10, 16))
    n2 = (V ** 2).sum(-1, keepdims=True)
    np.testing.assert_allclose(ops.squash(3)(V), V * n2 / ((1 + n2) * np.sqrt(n2 + 1e-9)), rtol=1e-10)
