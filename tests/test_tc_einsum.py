"""tc.einsum against numpy.einsum: explicit and implicit output, ellipsis, size-1 broadcasting, repeated
subscripts, 0-d operands, the interleaved form, dtypes, errors, tensors and their gradients."""

import numpy as np
import pytest

import tensorcomp as tc

rng = np.random.default_rng(11)

EQUATIONS = [
    ("ij,jk->ik", [(2, 3), (3, 4)]), ("ij,jk", [(2, 3), (3, 4)]), ("ii->i", [(3, 3)]), ("ii", [(3, 3)]),
    ("ij->ji", [(2, 3)]), ("ij", [(2, 3)]), ("ji", [(2, 3)]), ("i->", [(4,)]), ("i", [(4,)]),
    ("...ij,...jk->...ik", [(5, 1, 2, 3), (4, 3, 2)]), ("...ij,...jk", [(5, 1, 2, 3), (4, 3, 2)]),
    ("i,i", [(3,), (3,)]), ("i,j->ij", [(3,), (4,)]), ("i,j", [(3,), (4,)]), ("ij,ij->ij", [(3, 1), (3, 4)]),
    ("ij,jk", [(2, 1), (3, 4)]), ("", [()]), (",i->i", [(), (3,)]), (",", [(), ()]), ("i...->...", [(3,)]),
    ("bA,cB", [(2, 3), (4, 5)]), ("iij->j", [(2, 2, 3)]), ("ijk,ikl->ijl", [(2, 3, 4), (2, 4, 5)]),
    ("a...,a...", [(3, 2), (3, 2)]), ("...", [(2, 3)]), ("ij...,jk...->ik...", [(2, 3, 4), (3, 5, 4)]),
    ("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)]), ("iji->j", [(3, 2, 3)]), ("i,i,i->i", [(4,), (1,), (4,)]),
    ("...i,...i->...", [(2, 1, 3), (4, 3)]), ("i...j,j...->...", [(2, 3, 4), (4, 3)]), ("ijkl->lkji", [(1, 2, 3, 2)]),
    ("ij,kl->ijkl", [(2, 1), (1, 3)]), ("iii->i", [(2, 2, 2)]), ("ba,ab->", [(2, 3), (3, 2)]),
    ("...ii->...i", [(4, 3, 3)]), ("i...i", [(3, 2, 3)]), ("Ab,bA->A", [(2, 3), (3, 2)]), ("abc,cde,efa->bdf", [(2, 2, 3), (3, 2, 2), (2, 1, 2)]),
]


@pytest.mark.parametrize("subscripts,shapes", EQUATIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32, np.bool_])
def test_matches_numpy(subscripts, shapes, dtype):
    operands = [rng.integers(-3, 4, s).astype(dtype) for s in shapes]
    want = np.einsum(subscripts, *operands)
    got = tc.einsum(subscripts, *operands)
    assert got.shape == np.shape(want) and got.dtype == np.asarray(want).dtype
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_random_equations_with_broadcasting_and_ellipsis():
    letters = "abcdef"
    for _ in range(60):
        n_ops = int(rng.integers(1, 4))
        size = {c: int(rng.integers(1, 4)) for c in letters}
        terms, shapes = [], []
        for _ in range(n_ops):
            labels = list(rng.choice(list(letters), int(rng.integers(0, 4))))
            ell = int(rng.integers(0, 3)) if rng.random() < 0.4 else None
            shape = [size[c] if rng.random() < 0.8 else 1 for c in labels]
            term = "".join(labels)
            if ell is not None:
                k = int(rng.integers(0, len(labels) + 1))
                term = term[:k] + "..." + term[k:]
                shape = shape[:k] + [int(rng.choice([1, 2]))] * ell + shape[k:]
            terms.append(term)
            shapes.append(tuple(shape))
        operands = [rng.standard_normal(s) for s in shapes]
        sub = ",".join(terms)
        try:
            want = np.einsum(sub, *operands)
        except ValueError:
            with pytest.raises(tc.TensorcompError):
                tc.einsum(sub, *operands)
            continue
        np.testing.assert_allclose(tc.einsum(sub, *operands), want, rtol=1e-10, atol=1e-12, err_msg=sub)


def test_interleaved_form_empty_axes_and_mixed_dtypes():
    a, b = rng.standard_normal((2, 3)), rng.standard_normal(3)
    np.testing.assert_allclose(tc.einsum(a, [0, 1], b, [1], [0]), np.einsum(a, [0, 1], b, [1], [0]))
    np.testing.assert_allclose(tc.einsum(a, [Ellipsis, 1], b, [1]), np.einsum(a, [Ellipsis, 1], b, [1]))
    z = tc.einsum("ij,jk->ik", np.ones((2, 0)), np.ones((0, 4)))
    assert z.shape == (2, 4) and not z.any()
    mixed = tc.einsum("ij,jk", np.ones((2, 3), np.float32), np.ones((3, 4), np.int64))
    assert mixed.dtype == np.float64
    wrapped = tc.einsum("i,i", np.full(3, 200, np.uint8), np.ones(3, np.uint8))
    assert wrapped.dtype == np.uint8 and wrapped == np.einsum("i,i", np.full(3, 200, np.uint8), np.ones(3, np.uint8))


@pytest.mark.parametrize("subscripts,shapes,message", [
    ("ij,jk->ik,", [(2, 2)], "tc.einsum: fewer operands provided (1) than the subscripts 'ij,jk->ik,' specify (2)"),
    ("ij", [(2, 2), (2, 2)], "tc.einsum: more operands provided (2) than the subscripts 'ij' specify (1)"),
    ("ij->jj", [(2, 2)], "tc.einsum: the output subscripts of 'ij->jj' name 'j' more than once"),
    ("ij->k", [(2, 2)], "tc.einsum: output subscript 'k' of 'ij->k' does not appear in any input"),
    ("i$", [(2, 2)], "tc.einsum: invalid subscript '$' in the subscripts 'i$'; subscripts must be letters (a-z, A-Z)"),
    ("ijk", [(2, 2)], "tc.einsum: the subscripts 'ijk' of operand 0 name 3 axes but it has 2 (shape (2, 2))"),
    ("i", [(2, 2)], "tc.einsum: operand 0 has 2 axes (shape (2, 2)) but its subscripts 'i' name 1, and there is no "
                    "'...' to broadcast the others"),
    ("ii->i", [(3, 2)], "tc.einsum: operand 0 repeats subscript 'i' over axes of extents 3 and 2; a repeated "
                        "subscript takes a diagonal of equal axes"),
    ("ij,ij->ij", [(3, 2), (3, 4)], "tc.einsum: subscript 'j' has extent 4 in operand 1 but 2 in an earlier operand "
                                    "(shapes (3, 2), (3, 4)); extents must match or be 1"),
    ("...i->i", [(2, 3)], "tc.einsum: the operands of '...i->i' have 1 broadcast ('...') axes but the output "
                          "subscripts have no '...' to put them in"),
    ("i.j", [(2, 2)], "tc.einsum: subscripts 'i.j' contain a '.' that is not part of an '...'"),
    ("i->i->i", [(2,)], "tc.einsum: subscripts 'i->i->i' contain more than one '->'"),
])
def test_errors_name_the_subscripts_and_operand(subscripts, shapes, message):
    with pytest.raises(tc.TensorcompError) as e:
        tc.einsum(subscripts, *[np.ones(s) for s in shapes])
    assert str(e.value) == message
    with pytest.raises(ValueError):  # numpy refuses the same
        np.einsum(subscripts, *[np.ones(s) for s in shapes])


def test_strings_are_refused_with_the_dtype_named():
    with pytest.raises(tc.DtypeError, match="operand 0 has dtype <U1"):
        tc.einsum("i", np.array(["a"]))


def test_on_tensors_it_records_gradients():
    a = tc.Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    b = tc.Tensor(rng.standard_normal((4, 3, 5)), requires_grad=True)
    out = tc.einsum("ij,...jk->...ik", a, b)
    assert isinstance(out, tc.Tensor) and out.shape == (4, 2, 5)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    np.testing.assert_allclose(a.grad, np.einsum("xik,xjk->ij", g, b.data), rtol=1e-10)
    np.testing.assert_allclose(b.grad, np.einsum("ij,xik->xjk", a.data, g), rtol=1e-10)


def test_numpy_keywords():
    a, b = np.arange(6).reshape(2, 3), np.arange(3)
    np.testing.assert_array_equal(tc.einsum("ij,j->i", a, b, optimize="greedy"), np.einsum("ij,j->i", a, b))
    got = tc.einsum("ij,j->i", a, b, dtype=np.float64)
    assert got.dtype == np.float64 and list(got) == [5.0, 14.0]
    out = np.zeros(2)
    assert tc.einsum("ij,j->i", a * 1.0, b, out=out) is out and list(out) == [5.0, 14.0]
    with pytest.raises(tc.DtypeError, match="cannot be cast to int32 under casting='safe'"):
        tc.einsum("i", np.ones(2), dtype=np.int32)
