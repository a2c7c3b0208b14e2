"""argmax/argmin: positions as numpy gives them (ties and NaN: the first; several axes: flat C order),
inside multi-statement ops, with zero gradient, and the errors for misuse."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import ops

rng = np.random.default_rng(4)


@pytest.mark.parametrize("kind", ["argmax", "argmin"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_one_axis_of_a_rank3_tensor_with_ties(kind, dtype, axis):
    x = rng.integers(0, 3, (4, 5, 6)).astype(dtype)  # many ties
    got = ops.reduce(kind, 3, (axis,))(x)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, getattr(np, kind)(x, axis))


@pytest.mark.parametrize("kind", ["argmax", "argmin"])
def test_several_axes_give_the_flat_position(kind):
    x = rng.integers(0, 4, (3, 4, 5)).astype(np.float64)
    got = ops.reduce(kind, 3, (1, 2))(x)
    np.testing.assert_array_equal(got, getattr(np, kind)(x.reshape(3, -1), 1))
    whole = tc.op(f"I = {kind}(X[a, b, c])")(x)
    assert int(whole) == getattr(np, kind)(x)


@pytest.mark.parametrize("kind", ["argmax", "argmin"])
def test_nan_gives_the_first_nan_as_numpy(kind):
    x = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 2.0, -1.0, 7.0], [np.nan, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(ops.reduce(kind, 2, (1,))(x), getattr(np, kind)(x, 1))


def test_in_a_multi_statement_op_with_zero_gradient():
    op = tc.op("I[n] = argmax(X[n, c] * W[c])\nY[n] += X[n, c] * W[c]")
    x, w = rng.standard_normal((5, 7)), rng.standard_normal(7)
    i, y = op(x, w)
    np.testing.assert_array_equal(i, np.argmax(x * w, 1))
    np.testing.assert_allclose(y, x @ w)
    dx = tc.grad(op, "X")(x, w, np.ones(5), np.ones(5))
    np.testing.assert_allclose(dx, np.tile(w, (5, 1)))  # only Y's gradient: argmax contributes none


def test_misuse_is_an_error():
    with pytest.raises(tc.ParseError, match=r"argmax\(\.\.\.\) must be the whole right-hand side"):
        tc.op("I[n] = argmax(X[n, c]) + 1")
    with pytest.raises(tc.ParseError, match=r"argmin\(\.\.\.\) on line 1 reduces over no index"):
        tc.op("I[n] = argmin(X[n])")
    with pytest.raises(tc.ParseError, match="argmax takes one argument and writes one tensor"):
        tc.op("I[n] = argmax(X[n, c], X[n, c])")
