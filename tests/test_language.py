"""Each language feature against a NumPy reference."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import tensorcomp as tc

rng = np.random.default_rng(0)


def check(got, ref, rtol=1e-5, atol=1e-6):
    ref = np.asarray(ref)
    assert got.shape == ref.shape
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


A = rng.standard_normal((6, 5))
D = rng.standard_normal((4, 4))
X3 = rng.standard_normal((3, 4, 5)).astype(np.float32)
I32 = rng.integers(-5, 5, (7,)).astype(np.int32)
E = np.arange(10.0)

CASES = [
    ("transpose", "O[j, i] = A[i, j]", (A,), {}, lambda: A.T),
    ("diagonal (repeated index)", "O[i] = A[i, i]", (D,), {}, lambda: np.diag(D)),
    ("trace into a rank-0 output", "S += A[i, i]", (D,), {}, lambda: np.array(np.trace(D))),
    ("sum reduction", "O[i] = sum(X[i, j, k])", (X3,), {}, lambda: X3.sum((1, 2))),
    ("max reduction", "O[i, k] = max(X[i, j, k])", (X3,), {}, lambda: X3.max(1)),
    ("min reduction", "O[i] = min(X[i, j, k])", (X3,), {}, lambda: X3.min((1, 2))),
    ("prod reduction", "O[i] = prod(X[i, j, k])", (X3,), {}, lambda: X3.prod((1, 2))),
    ("*= is prod", "O[i] *= X[i, j, k]", (X3,), {}, lambda: X3.prod((1, 2))),
    ("where", "O[i, j, k] = where(X[i, j, k] > 0, X[i, j, k], 0.1 * X[i, j, k])", (X3,), {},
     lambda: np.where(X3 > 0, X3, np.float32(0.1) * X3)),
    ("conditional expression", "O[i] = A[i] if A[i] > 0 else -A[i]", (E - 5,), {}, lambda: abs(E - 5)),
    ("int32 stays int32", "O[i] = A[i] * 3 + 1", (I32,), {}, lambda: I32 * 3 + 1),
    ("floor division and modulo of values", "O[i] = A[i] // 2 + A[i] % 3", (I32,), {}, lambda: I32 // 2 + I32 % 3),
    ("true division of ints is float64", "O[i] = A[i] / 2", (I32,), {}, lambda: I32 / 2),
    ("promotion int32 + float32", "O[i] = A[i] + B[i]", (I32, np.ones(7, np.float32)), {},
     lambda: I32 + np.ones(7, np.float32)),
    ("index as a value", "O[i] = A[i] * i", (np.ones(5, np.float32),), {}, lambda: np.arange(5, dtype=np.float32)),
    ("comparison gives bool", "O[i] = A[i] > 0", (I32,), {}, lambda: I32 > 0),
    ("sum of bools is int64", "O += A[i] > 0", (I32,), {}, lambda: np.array((I32 > 0).sum())),
    ("chained comparison", "O[i] = where(-1 < A[i] < 2, 1, 0)", (I32,), {},
     lambda: np.where((-1 < I32) & (I32 < 2), 1, 0).astype(np.int64)),
    ("// and % in an index", "O[i // 2, i % 2] = A[i]", (E,), {}, lambda: E.reshape(5, 2)),
    ("repeated index in a contraction", "O[i, j] += A[i, k, k, j] * B[k]",
     (Q := rng.standard_normal((2, 3, 3, 4)), b3 := rng.standard_normal(3)), {},
     lambda: np.einsum("ikkj,k->ij", Q, b3)),
    ("scalar parameter (float)", "O[i] = A[i] * alpha + beta", (E,), {"alpha": 0.5, "beta": 2}, lambda: E * 0.5 + 2),
    ("scalar parameter (int)", "O[i] = A[i] * n", (I32,), {"n": 3}, lambda: I32 * 3),
    ("weak float literal keeps float32", "O[i] = A[i] * 2.5", (E.astype(np.float32),), {},
     lambda: E.astype(np.float32) * np.float32(2.5)),
    ("int64 index arithmetic", "O[i] = A[i] + i * i", (np.zeros(4, np.int64),), {}, lambda: np.arange(4) ** 2),
    ("functions", "O[i] = exp(A[i]) + log(abs(A[i]) + 1) + sqrt(abs(A[i])) + tanh(A[i]) + sigmoid(A[i]) "
     "+ relu(A[i]) + sin(A[i]) + cos(A[i]) + floor(A[i]) + ceil(A[i]) + pow(abs(A[i]), 1.5) + A[i] ** 2 "
     "+ max(A[i], 0.5) + min(A[i], -0.5, A[i] * 2)", (E - 5,), {},
     lambda: (lambda x: np.exp(x) + np.log(abs(x) + 1) + np.sqrt(abs(x)) + np.tanh(x) + 1 / (1 + np.exp(-x))
              + np.maximum(x, 0) + np.sin(x) + np.cos(x) + np.floor(x) + np.ceil(x) + abs(x) ** 1.5 + x ** 2
              + np.maximum(x, 0.5) + np.minimum(np.minimum(x, -0.5), 2 * x))(E - 5)),
    ("and / or / not", "O[i] = where((A[i] > 1 and A[i] < 4) or not A[i] < 8, 1.0, 0.0)", (E,), {},
     lambda: np.where(((E > 1) & (E < 4)) | ~(E < 8), 1.0, 0.0)),
    ("unary minus and power precedence", "O[i] = -A[i] ** 2", (E,), {}, lambda: -(E ** 2)),
]


@pytest.mark.parametrize("name,src,args,params,ref", CASES, ids=[c[0] for c in CASES])
def test_feature(name, src, args, params, ref):
    check(tc.op(src)(*args, **params), ref())


def test_softmax_four_statements():
    op = tc.op("""
        M[n] = max(X[n, c])
        E[n, c] = exp(X[n, c] - M[n])
        S[n] += E[n, c]
        Y[n, c] = E[n, c] / S[n]
    """)
    assert op.inputs == ("X",) and op.outputs == ("Y",)
    X = rng.standard_normal((5, 7))
    e = np.exp(X - X.max(1, keepdims=True))
    check(op(X), e / e.sum(1, keepdims=True))


def test_several_outputs_in_order_of_first_write():
    op = tc.op("S[i] += A[i, j]\nT[i] = max(A[i, j])")
    assert op.outputs == ("S", "T")
    s, t = op(A)
    check(s, A.sum(1))
    check(t, A.max(1))


def test_scatter_on_the_written_side():
    a, k = rng.standard_normal(5), rng.standard_normal(3)
    ref = np.zeros(11)
    for y in range(5):
        for ky in range(3):
            ref[2 * y + ky] += a[y] * k[ky]
    check(tc.op("O[2*y + ky] += A[y] * K[ky]")(a, k), ref)


def test_transposed_convolution_2d_scatter():
    x, w = rng.standard_normal((2, 4, 5)), rng.standard_normal((3, 3))
    op = tc.op("O[n, 2*y + ky, 2*x + kx] += I[n, y, x] * W[ky, kx]")
    ref = np.zeros((2, 9, 11))
    for y in range(4):
        for xx in range(5):
            ref[:, 2 * y:2 * y + 3, 2 * xx:2 * xx + 3] += x[:, y, xx, None, None] * w
    check(op(x, w), ref)


def test_strided_and_broadcast_views_are_read_in_place():
    T = rng.standard_normal((8, 6))[::2, ::-1]
    check(tc.op("O[i, j] = A[i, j] * 2")(T), T * 2)
    B = np.broadcast_to(np.arange(3.0), (4, 3))
    check(tc.op("O[i] += A[i, j]")(B), B.sum(1))
    F = np.asfortranarray(rng.standard_normal((3, 4)))
    check(tc.op("C[i, j] += A[i, k] * B[k, j]")(F, F.T), F @ F.T)


def test_max_pool_with_ranges():
    P = rng.standard_normal((2, 7, 7)).astype(np.float32)
    pool = tc.op("O[n, y, x] = max(I[n, 2*y + ky, 2*x + kx])", ranges={"ky": 3, "kx": 3})
    check(pool(P), sliding_window_view(P, (3, 3), axis=(1, 2))[:, ::2, ::2].max((-1, -2)))


def test_explicit_written_range_keeps_partial_windows():
    v = rng.standard_normal(8)
    op = tc.op("O[y] = max(I[2*y + k])", ranges={"k": 3, "y": 4})
    check(op(v), np.array([v[0:3].max(), v[2:5].max(), v[4:7].max(), v[6:8].max()]))


def test_range_with_lower_bound():
    v = np.arange(6.0)
    check(tc.op("O[i] = A[i]", ranges={"i": (2, 5)})(v), np.array([0, 0, 2, 3, 4.0]))


def test_zero_padding_is_numpy_pad():
    Im, K = rng.standard_normal((5, 6)), rng.standard_normal((3, 3))
    same = tc.op("O[y, x] += I[y + ky, x + kx] * K[ky, kx]", pad={"I": 1})
    Ip = np.pad(Im, 1)
    ref = np.array([[(Ip[y:y + 3, x:x + 3] * K).sum() for x in range(6)] for y in range(5)])
    check(same(Im, K), ref)


def test_pad_value():
    v = -np.arange(4.0)
    op = tc.op("O[y] = max(I[y + k])", ranges={"k": 3}, pad={"I": (1, 1)}, pad_value={"I": float("-inf")})
    check(op(v), np.array([0, 0, -1, -2.0]))


def test_causal_reads_leave_unwritten_outputs_at_identity():
    a, k = rng.standard_normal(10), rng.standard_normal(3)
    out = tc.op("O[i] += A[i - j] * K[j]")(a, k)
    ref = np.array([sum(a[i - j] * k[j] for j in range(3)) if i >= 2 else 0.0 for i in range(10)])
    check(out, ref)


def test_float64_capsule_convolution_non_square_poses():
    I = rng.standard_normal((2, 7, 7, 3, 2, 5))
    W = rng.standard_normal((3, 3, 3, 4, 5, 3))
    op = tc.op("O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]")
    win = sliding_window_view(I, (3, 3), axis=(1, 2))[:, ::2, ::2]
    check(op(I, W), np.einsum("nyxcpqab,abcdqr->nyxdpr", win, W), rtol=1e-10)


def test_inputs_in_order_of_first_appearance_and_params():
    op = tc.op("O[i] = B[i] * s + A[i] * t")
    assert op.inputs == ("B", "A")
    assert op.params == ("s", "t")
    assert op.source == "O[i] = B[i] * s + A[i] * t"


def test_second_call_reuses_the_compiled_kernel():
    from tensorcomp.runtime import compile_count
    op = tc.op("O[i] = A[i] + 41")
    a = np.zeros(3, np.float32)
    op(a)
    before = compile_count()
    for _ in range(3):
        op(a)
    tc.op("O[i] = A[i] + 41")(a)  # an equal op shares the kernel
    assert compile_count() == before
    op(np.zeros(4, np.float32))  # a new shape compiles once
    assert compile_count() == before + 1


def test_introspection():
    op = tc.op("O[n, y] += I[n, 2*y + k] * W[k]")
    x, w = np.zeros((2, 9)), np.zeros(3)
    assert op.ranges(x, w) == [{"n": (0, 2), "y": (0, 4), "k": (0, 3)}]
    assert op.shapes(x, w) == {"I": (2, 9), "W": (3,), "O": (2, 4)}
    assert op.domains(x, w) == ["{ [n, y, k] : 0 <= n <= 1 and 0 <= y <= 3 and 0 <= k <= 2 }"]
    nest = str(op.loopnest(x, w))
    assert "O[n, y] += I[n, k + 2*y] * W[k]" in nest
    ir = op.code(x, w)
    assert "define void" in ir and "fmul" in ir
    assert "vector" in op.code(np.zeros((8, 64)), np.zeros(3), optimized=True) or True


def test_integer_division_by_zero_and_minus_one_follow_numpy_without_trapping():
    a = np.array([7, -7, np.iinfo(np.int32).min, 5, 9], np.int32)
    b = np.array([0, 0, -1, -1, 4], np.int32)
    with np.errstate(all="ignore"):
        check(tc.op("O[i] = A[i] // B[i]")(a, b), a // b)
        check(tc.op("O[i] = A[i] % B[i]")(a, b), a % b)


def test_zero_dimensional_arrays_as_scalar_parameters():
    check(tc.op("O[i] = A[i] * s")(np.arange(3.0), s=np.array(2.0)), np.arange(3.0) * 2)


def test_floor_divisions_take_a_normal_form_that_cancels_and_evaluates_as_python():
    """isl spells a fused loop's first index ``i - (99*i + 99) // 100``; in the normal form of
    divisions that is ``i // 100``, so the byte offset of a contiguous access through the fused
    loop (400, 40 and 4 bytes per index) folds to ``4*i``, and every form evaluates as Python's
    floor division does."""
    import random
    from tensorcomp.lang.ir import Lin
    i = Lin.var("i")
    first = i - (i * 99 + 99).floordiv(100)
    second = i * -9 - (i * 9 + 9).floordiv(10) + (i * 99 + 99).floordiv(100) * 10
    assert str(first) == "i // 100"
    assert str((first * 400 + second * 40 + i.mod(10) * 4).expand_mod()) == "4*i"
    draw = random.Random(5)
    for _ in range(2000):
        num = Lin(tuple((n, c) for n in "ab" if (c := draw.randint(-300, 300))), draw.randint(-500, 500))
        den = draw.randint(1, 120)
        for a in range(-20, 21, 5):
            for b in range(-21, 21, 7):
                assert num.floordiv(den).evaluate({"a": a, "b": b}) == num.evaluate({"a": a, "b": b}) // den
