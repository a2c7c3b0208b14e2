"""erf, erfc, expm1, log1p, sign, atan2, rsqrt, softplus: values against Python's math module (float64 and
float32), derived gradients against central differences, exact GELU, and the language's error for misuse."""

import math

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import ops

X = np.linspace(-5.5, 5.5, 67)
REFERENCE = {
    "erf": math.erf, "erfc": math.erfc, "expm1": math.expm1, "log1p": math.log1p,
    "sign": lambda v: float(np.sign(v)), "rsqrt": lambda v: 1 / math.sqrt(v),
    "softplus": lambda v: max(v, 0.0) + math.log1p(math.exp(-abs(v))),
}
DOMAIN = {"log1p": np.abs(X) + 1e-3, "rsqrt": np.abs(X) + 0.05}


@pytest.mark.parametrize("fn", sorted(REFERENCE))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_values_match_the_math_module(fn, dtype):
    x = DOMAIN.get(fn, X).astype(dtype)
    got = tc.op(f"O[i] = {fn}(X[i])")(x)
    want = np.array([REFERENCE[fn](float(v)) for v in x])
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=1e-14 if dtype == np.float64 else 3e-6, atol=1e-300)


@pytest.mark.parametrize("fn", sorted(set(REFERENCE) - {"sign"}))
def test_gradients_match_central_differences(fn):
    op = tc.op(f"O[i] = {fn}(X[i]) * X[i]")
    x = DOMAIN.get(fn, X)
    dx = tc.grad(op, "X")(x, np.ones_like(x))
    h = 1e-6
    numeric = (op(x + h) - op(x - h)) / (2 * h)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_atan2_values_and_gradients():
    y, x = np.linspace(-3, 4, 31), np.linspace(2, -5, 31)
    op = tc.op("O[i] = atan2(Y[i], X[i])")
    np.testing.assert_allclose(op(y, x), np.arctan2(y, x), rtol=1e-15)
    dy, dx = tc.grad(op, ["Y", "X"])(y, x, np.ones_like(x))
    np.testing.assert_allclose(dy, x / (x * x + y * y), rtol=1e-14)
    np.testing.assert_allclose(dx, -y / (x * x + y * y), rtol=1e-14)
    assert op(np.array([1.0], np.float32), np.array([1.0], np.float32)).dtype == np.float32


def test_sign_keeps_nan_and_integers_and_has_zero_gradient():
    op = tc.op("O[i] = sign(X[i])")
    np.testing.assert_array_equal(op(np.array([np.nan, -2.5, 0.0, 3.0])), [np.nan, -1, 0, 1])
    ints = op(np.array([-7, 0, 9]))
    assert ints.dtype == np.int64 and list(ints) == [-1, 0, 1]
    np.testing.assert_array_equal(tc.grad(tc.op("O[i] = sign(X[i]) * 2"), "X")(X, np.ones_like(X)), 0 * X)


def test_softplus_does_not_overflow_and_exact_gelu():
    np.testing.assert_allclose(ops.activation("softplus", 1)(np.array([1000.0, -1000.0, 0.0])),
                               [1000.0, 0.0, math.log(2)], rtol=1e-15)
    gelu = ops.activation("gelu", 1)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in X])
    np.testing.assert_allclose(gelu(X), want, rtol=1e-14, atol=1e-300)
    d = tc.grad(gelu, "X")(X, np.ones_like(X))
    pdf = np.exp(-X * X / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(d, 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in X])) + X * pdf, rtol=1e-13)


def test_wrong_arity_is_an_error_naming_the_function():
    with pytest.raises(tc.ParseError) as e:
        tc.op("O[i] = atan2(X[i])")
    assert "function 'atan2' takes 2 arguments but 1 were given" in str(e.value)
    with pytest.raises(tc.UnknownNameError, match="unknown function 'erfx'"):
        tc.op("O[i] = erfx(X[i])")


def test_float32_exp_is_inline_arithmetic_within_an_ulp_of_the_true_value():
    """float32 ``exp`` is written out in the kernel (no call per element, so its loops vectorize): within
    one ulp of the float64 value over the normal range, subnormal results within one subnormal step,
    overflow to inf, 0 far below, NaN kept."""
    op = tc.op("O[i] = exp(X[i])")
    x = np.linspace(-110, 95, 400_001, dtype=np.float32)
    got = op(x)
    exact = np.exp(x.astype(np.float64))
    with np.errstate(over="ignore"):
        rounded = exact.astype(np.float32)
    normal = np.isfinite(rounded) & (rounded >= np.finfo(np.float32).tiny)
    ulps = np.abs(got[normal] - exact[normal]) / np.spacing(rounded[normal])
    assert ulps.max() <= 1.0
    subnormal = np.isfinite(rounded) & ~normal
    assert subnormal.any() and np.abs(got[subnormal] - rounded[subnormal]).max() <= 1.5e-45
    assert np.array_equal(np.isinf(got), np.isinf(rounded))
    special = op(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.72283, 88.7229], np.float32))
    assert np.isnan(special[0]) and list(special[1:5]) == [np.inf, 0.0, 1.0, 1.0] and np.isinf(special[6])
    assert np.isfinite(special[5])
    code = op.code(x, optimized=True)
    assert "@expf" not in code and "@llvm.exp" not in code and "x float>" in code
    assert "@llvm.exp.f64" in op.code(x.astype(np.float64), optimized=True)  # float64: the math library
