"""cumsum/cumprod along every axis of rank-3 tensors (inclusive, exclusive, forward, reverse) against numpy,
and their gradients (the reverse scan; cumprod's exact with zero factors) against loop references."""

import itertools

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import ops

rng = np.random.default_rng(6)


def _reference(kind, x, axis, reverse, exclusive):
    y = np.flip(x, axis) if reverse else x
    if exclusive:
        pad = np.zeros_like(np.take(y, [0], axis)) + (0 if kind == "sum" else 1)
        y = np.concatenate([pad, np.delete(y, -1, axis)], axis)
    out = np.cumsum(y, axis) if kind == "sum" else np.cumprod(y, axis)
    return np.flip(out, axis) if reverse else out


@pytest.mark.parametrize("kind", ["sum", "prod"])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("reverse,exclusive", list(itertools.product([False, True], repeat=2)))
def test_values_along_every_axis(kind, axis, reverse, exclusive):
    x = rng.standard_normal((3, 4, 5))
    op = (ops.cumsum if kind == "sum" else ops.cumprod)(3, axis, reverse, exclusive)
    np.testing.assert_allclose(op(x), _reference(kind, x, axis, reverse, exclusive), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reverse,exclusive", list(itertools.product([False, True], repeat=2)))
def test_cumsum_gradient_is_the_reverse_scan(reverse, exclusive):
    x, dc = rng.standard_normal((2, 6)), rng.standard_normal((2, 6))
    dx = tc.grad(ops.cumsum(2, 1, reverse, exclusive), "X")(x, dc)
    np.testing.assert_allclose(dx, _reference("sum", dc, 1, not reverse, exclusive), rtol=1e-12)


def _cumprod_grad(x, dc):
    """d/dx_k of sum_i dc_i * prod_{j <= i} x_j, by products that leave x_k out (exact with zeros)."""
    n = len(x)
    return np.array([sum(dc[i] * np.prod([x[j] for j in range(i + 1) if j != k]) for i in range(k, n))
                     for k in range(n)])


@pytest.mark.parametrize("x", [np.array([2.0, 0.0, 3.0, 0.0, 5.0]), np.array([0.0, 1.5, -2.0, 4.0]),
                               np.array([1.5, -0.5, 2.0, 3.0, 0.25, -1.0])])
def test_cumprod_gradient_is_exact_with_zeros(x):
    dc = rng.standard_normal(x.shape)
    dx = tc.grad(ops.cumprod(1, 0), "X")(x, dc)
    np.testing.assert_allclose(dx, _cumprod_grad(x, dc), rtol=1e-12, atol=1e-14)


def test_bad_axis_is_an_error():
    with pytest.raises(tc.ShapeError, match="scan: axis 3 is out of range for a tensor of rank 3"):
        ops.cumsum(3, 3)
