"""Elementwise temporaries read once are folded into their reader; everything else stays stored."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp.schedule.inline import inline_elementwise

rng = np.random.default_rng(5)


def kernel_statements(op, *arrays, **params):
    return [str(bs.stmt) for bs in inline_elementwise(op.bind(*arrays, **params)).statements]


def test_chain_of_elementwise_temporaries_folds_into_the_reduction_that_reads_it():
    op = tc.op("""
        T[i, j] = A[i, j] * 2.0
        U[j, i] = exp(T[i, j]) + B[j]
        O[i] += U[j, i] * C[j]
    """)
    a, b, c = (rng.standard_normal(s).astype(np.float32) for s in ((5, 7), (7,), (7,)))
    assert kernel_statements(op, a, b, c) == ["O[i] += (exp(A[i, j] * 2.0) + B[j]) * C[j]"]
    want = ((np.exp(a.astype(np.float64) * 2) + b) * c).sum(1)
    np.testing.assert_allclose(op(a, b, c), want, rtol=1e-5)


def test_temporaries_read_twice_broadcast_reduced_or_returned_stay_stored():
    op = tc.op("""
        T[i] = A[i] + 1.0
        O[i] = T[i] * T[i]
        R[i, j] = A[i] * B[i, j]
        P[i, j] = R[i, j] + B[i, j] * 2.0
        S[i] += A[i] * B[i, k]
        Q[i, k] = S[i] * B[i, k]
        E[i] = exp(A[i])
    """)
    a, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    # T is read twice; S is a reduction read for every k; R and P fold (R read once, each element
    # once); E is an output
    assert kernel_statements(op, a, b) == [
        "T[i] = A[i] + 1.0", "O[i] = T[i] * T[i]", "P[i, j] = A[i] * B[i, j] + B[i, j] * 2.0", "S[i] += A[i] * B[i, k]",
        "Q[i, k] = S[i] * B[i, k]", "E[i] = exp(A[i])"]
    o, p, q, e = op(a, b)
    np.testing.assert_allclose(p, a[:, None] * b + 2 * b, rtol=1e-6)
    np.testing.assert_allclose(o, (a + 1) ** 2, rtol=1e-6)
    np.testing.assert_allclose(e, np.exp(a), rtol=1e-6)
    np.testing.assert_allclose(q, (a * b.sum(1))[:, None] * b, rtol=1e-5)


def test_a_temporary_read_on_a_strided_window_stays_stored():
    op = tc.op("""
        T[i] = A[i] * 2.0
        O[i] += T[2*i + k] * W[k]
    """)
    a, w = rng.standard_normal(9).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    assert kernel_statements(op, a, w) == ["T[i] = A[i] * 2.0", "O[i] += T[2*i + k] * W[k]"]
    want = np.array([(2 * a[2 * i:2 * i + 3] * w).sum() for i in range(4)])
    np.testing.assert_allclose(op(a, w), want, rtol=1e-5)


def test_gradient_partials_fold_into_one_sum_and_match_numpy():
    op = tc.op("""
        H[i, j] = tanh(X[i, j])
        O[i, j] = H[i, j] * H[i, j] + X[i, j]
    """)
    g = tc.grad(op, "X")
    x = rng.standard_normal((4, 5))
    d = rng.standard_normal((4, 5))
    dx = g(x, d)
    h = np.tanh(x)
    np.testing.assert_allclose(dx, d * (2 * h * (1 - h * h) + 1), rtol=1e-12)
    stored = [s.split("[")[0] for s in kernel_statements(g, x, d)]
    assert not any("_part" in name for name in stored), stored


def test_schedule_records_number_the_statements_left_after_folding():
    op = tc.op("""
        T[i, k] = A[i, k] * 2.0
        O[i] += T[i, k] * B[i, k]
    """, schedule=(tc.schedule.Reorder(1, ("k", "i")),))
    a, b = np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)
    with pytest.raises(tc.ScheduleError) as e:
        op(a, b)
    assert str(e.value) == (
        "op 'T[i, k] = A[i, k] * 2.0; O[i] += T[i, k] * B[i, k]': Reorder names statement 1, but the kernel runs 1 "
        "(numbered from 0) once temporaries computed elementwise and read once are folded into their readers; "
        "op.loopnest(...) shows them")
    folded = op.with_schedule((tc.schedule.Reorder(0, ("k", "i")),))
    np.testing.assert_allclose(folded(a, b), np.full(4, 6.0))
    assert str(folded.loopnest(a, b)).endswith(
        "for k in range(0, 3):\n  for i in range(0, 4):\n    O[i] += A[i, k] * 2.0 * B[i, k]")


def test_a_copy_is_read_from_its_source_by_every_reader():
    """The gradient of a bias add copies dO into dC; both the weight and the input gradient read dO
    in its place (a copy read twice, on windows, costs nothing to fold)."""
    from tensorcomp.autodiff import grad
    conv = tc.op("C[n, f, y] += I[n, c, y + k] * W[f, c, k]\nO[n, f, y] = C[n, f, y] + B[f]")
    back = grad(conv, ["I", "W", "B"])
    i, w, b = (rng.standard_normal(s) for s in ((2, 3, 8), (4, 3, 3), (4,)))
    d = rng.standard_normal((2, 4, 6))
    assert kernel_statements(back, i, w, b, d) == [
        "dB[f] += dO[n, f, y]", "dI[n, c, k + y] += dO[n, f, y] * W[f, c, k]",
        "dW[f, c, k] += dO[n, f, y] * I[n, c, k + y]"]
    di, dw, db = back(i, w, b, d)
    windows = np.lib.stride_tricks.sliding_window_view(i, 3, axis=2)  # (n, c, y, k)
    np.testing.assert_allclose(dw, np.einsum("nfy,ncyk->fck", d, windows), rtol=1e-12)
    np.testing.assert_allclose(db, d.sum((0, 2)), rtol=1e-12)
    want_di = np.zeros_like(i)
    for k in range(3):
        want_di[:, :, k:k + 6] += np.einsum("nfy,fc->ncy", d, w[:, :, k])
    np.testing.assert_allclose(di, want_di, rtol=1e-12)


def test_an_elementwise_sum_into_a_tensor_written_once_is_an_assignment():
    """A ReLU's gradient ``dX[i, j] += dO[i, j] * where(X[i, j] > 0, 1, 0)`` writes each element of dX
    once: it stores, with no zeroing pass before it; so does a max pool's gradient over windows side by
    side. Overlapping windows, and a sum over an index the target lacks, keep their zeroing and sums."""
    g = tc.grad(tc.op("O[i, j] = relu(X[i, j])"), "X")
    x, d = (np.random.default_rng(3).standard_normal((6, 40)).astype(np.float32) for _ in range(2))
    assert kernel_statements(g, x, d) == ["dX[i, j] = dO[i, j] * where(X[i, j] > 0, 1, 0)"]
    assert str(g.loopnest(x, d)) == ("for i_j in range(0, 240):  # parallel\n"
                                     "  dX[i_j // 40, i_j % 40] = dO[i_j // 40, i_j % 40] * "
                                     "where(X[i_j // 40, i_j % 40] > 0, 1, 0)")
    np.testing.assert_array_equal(g(x, d), d * (x > 0))
    pool = tc.grad(tc.op("O[n, y] = max(X[n, 2*y + k])", ranges={"k": 2}), "X")  # windows side by side
    assert kernel_statements(pool, x, x[:, :20])[-1].startswith("dX[n, k + 2*y] = where(")
    overlapping = tc.grad(tc.op("O[n, y] = max(X[n, y + k])", ranges={"k": 2}), "X")
    assert kernel_statements(overlapping, x[:, :21], x[:, :20])[-1].startswith("dX[n, k + y] += where(")
    rows = tc.op("O[i] += A[i, j]")
    assert kernel_statements(rows, x) == ["O[i] += A[i, j]"] and "O[i] = 0.0" in str(rows.loopnest(x))
    np.testing.assert_allclose(rows(x), x.sum(1), rtol=1e-5, atol=1e-5)
