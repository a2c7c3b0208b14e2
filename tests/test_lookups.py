"""Indexing through index tensors: gathers, label-indexed losses and scatter-adds against numpy (float64),
their derived gradients, repeated indices, the run-time check of every index value, nn.Embedding."""

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import nn

rng = np.random.default_rng(8)


def test_gather_with_repeated_indices_and_its_gradient_the_scatter_add():
    op = tc.op("O[b, d] += E[T[b, l], d]")
    assert op.inputs == ("E", "T")
    e, t = rng.standard_normal((7, 3)), rng.integers(0, 7, (4, 5))
    t[0] = 2  # repeats
    np.testing.assert_allclose(op(e, t), e[t].sum(1), rtol=1e-14)
    do = rng.standard_normal((4, 3))
    de = tc.grad(op, "E")(e, t, do)
    want = np.zeros_like(e)
    np.add.at(want, t, do[:, None, :])
    np.testing.assert_allclose(de, want, rtol=1e-14)


def test_label_indexed_loss_and_its_gradient():
    op = tc.op("L += -X[n, Y[n]]")
    x, y = rng.standard_normal((6, 4)), np.array([0, 3, 3, 1, 2, 0])
    np.testing.assert_allclose(op(x, y), -x[np.arange(6), y].sum(), rtol=1e-14)
    dx = tc.grad(op, "X")(x, y, np.array(1.0))
    want = np.zeros_like(x)
    want[np.arange(6), y] = -1
    np.testing.assert_allclose(dx, want)


def test_scatter_add_with_repeated_indices_and_its_gradient_the_gather():
    op = tc.op("O[T[i], d] += X[i, d] * 2", ranges={"T": 5})
    x, t = rng.standard_normal((8, 3)), rng.integers(0, 5, 8)
    want = np.zeros((5, 3))
    np.add.at(want, t, 2 * x)
    np.testing.assert_allclose(op(x, t), want, rtol=1e-14)
    do = rng.standard_normal((5, 3))
    np.testing.assert_allclose(tc.grad(op, "X")(x, t, do), 2 * do[t], rtol=1e-14)


def test_two_lookups_in_one_access_and_a_lookup_inside_an_expression():
    op = tc.op("O[i] = exp(A[R[i], C[i]]) + 1")
    a, r, c = rng.standard_normal((3, 4)), rng.integers(0, 3, 6), rng.integers(0, 4, 6)
    np.testing.assert_allclose(op(a, r, c), np.exp(a[r, c]) + 1, rtol=1e-14)


@pytest.mark.parametrize("bad", [-1, 7, 2 ** 40])
def test_an_index_value_outside_the_axis_is_an_error_naming_it(bad):
    op = tc.op("O[b, d] += E[T[b, l], d]")
    t = np.zeros((2, 3), np.int64)
    t[1, 2] = bad
    with pytest.raises(tc.IndexRangeError) as e:
        op(np.ones((7, 2)), t)
    assert str(e.value) == (f"op 'O[b, d] += E[T[b, l], d]': index tensor T holds {bad} at position (1, 2), outside "
                            f"axis 0 of E, of extent 7; its values must lie in [0, 7)")
    with pytest.raises(tc.IndexRangeError, match="index tensor T holds"):  # the gradient op checks too
        tc.grad(op, "E")(np.ones((7, 2)), t, np.ones((2, 2)))


def test_fuzzed_index_tensors_never_crash():
    op = tc.op("O[i, d] = E[T[i], d]")
    e = rng.standard_normal((5, 2))
    for _ in range(200):
        t = rng.integers(-8, 13, int(rng.integers(1, 6)))
        if ((t >= 0) & (t < 5)).all():
            np.testing.assert_allclose(op(e, t), e[t])
        else:
            with pytest.raises(tc.IndexRangeError):
                op(e, t)


def test_misuse_is_an_error():
    with pytest.raises(tc.DtypeError) as e:
        tc.op("O[i] = E[T[i]]")(np.ones(3), np.zeros(2, np.float32))
    assert str(e.value) == ("op 'O[i] = E[T[i]]': index tensor T must hold integers (int32 or int64), got float32; "
                            "convert it with .astype(np.int64)")
    with pytest.raises(tc.DtypeError, match=r"index tensor T must hold integers \(int32 or int64\), got uint8"):
        tc.op("O[i] = E[T[i]]")(np.ones(3), np.zeros(2, np.uint8))
    with pytest.raises(tc.RangeError, match=r"O is written through index tensor T, so its extent on that axis is "
                                            r"unknown; give it with ranges=\{'T': n\}"):
        tc.op("O[T[i]] += X[i]")
    with pytest.raises(tc.ParseError, match="is written through an index tensor with '='"):
        tc.op("O[T[i]] = X[i]")
    with pytest.raises(tc.ShapeError):  # the index tensor's rank is checked like any tensor's
        tc.op("O[i] = E[T[i]]")(np.ones(3), np.zeros((2, 2), np.int64))


def test_embedding_layer_and_losses_by_label():
    emb = nn.Embedding(6, 3)
    idx = np.array([[0, 5], [5, 5]])
    out = emb(idx)
    np.testing.assert_allclose(out.data, emb.weight.data[idx])
    out.backward(np.ones((2, 2, 3)))
    np.testing.assert_allclose(emb.weight.grad[:, 0], [1, 0, 0, 0, 0, 3])
    with pytest.raises(tc.IndexRangeError, match="index tensor T holds 6"):
        emb(np.array([6]))
    with pytest.raises(tc.IndexRangeError) as e:
        nn.CrossEntropyLoss()(tc.Tensor(np.ones((3, 4), np.float32)), np.array([0, 4, 1]))
    assert str(e.value) == ("CrossEntropyLoss: target 1 is 4, not a class of the 4 the logits score; targets must lie "
                            "in [0, 4)")
