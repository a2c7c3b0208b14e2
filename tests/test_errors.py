"""Bad input gives one kind of error, with exact, helpful text."""

import numpy as np
import pytest

import tensorcomp as tc

z = np.zeros

CASES = [
    # (source, arrays or None for "at construction", params, error class, exact message)
    ("O[i] += A[i, j]", (z(3),), {}, tc.ShapeError,
     "op 'O[i] += A[i, j]': tensor A is indexed with 2 indices but the array passed has rank 1 (shape (3,))"),
    ("C[i, j] += A[i, k] * B[k, j]", (z((2, 3)), z((4, 5))), {}, tc.ShapeError,
     "op 'C[i, j] += A[i, k] * B[k, j]': index 'k' has extent 3 in A (axis 1, shape (2, 3)) but 4 in B "
     "(axis 0, shape (4, 5)) on line 1"),
    ("O[i] = A[i, i]", (z((3, 4)),), {}, tc.ShapeError,
     "op 'O[i] = A[i, i]': index 'i' has extent 3 in A (axis 0, shape (3, 4)) but 4 in A (axis 1, shape (3, 4)) "
     "on line 1"),
    ("O[i, j] = A[i]", (z(3),), {}, tc.RangeError,
     "op 'O[i, j] = A[i]': index 'j' of O has no upper bound on line 1: it appears only on the written side; "
     "bound it with ranges={'j': n}"),
    ("O[i] = A[i, j]", None, {}, tc.ParseError,
     "op 'O[i] = A[i, j]': index 'j' appears only on the right side of '=' on line 1; write '+=' or a reduction "
     "such as sum(...) or max(...) to reduce over it"),
    ("O[i] += A[i]\nP[i] = foo(O[i])", None, {}, tc.UnknownNameError,
     "op 'O[i] += A[i]; P[i] = foo(O[i])': unknown function 'foo' on line 2 ('P[i] = foo(O[i])'); did you mean "
     "'floor'? known functions: abs, argmax, argmin, atan2, ceil, cos, erf, erfc, exp, expm1, floor, log, log1p, "
     "max, min, pow, prod, relu, rsqrt, sigmoid, sign, sin, softplus, sqrt, sum, tanh, where"),
    ("O[i] += A[i", None, {}, tc.ParseError,
     "op 'O[i] += A[i': syntax error on line 1 ('O[i] += A[i'): '[' was never closed"),
    ("O[i] += A[i]\nP[i] = O[i] +* 2", None, {}, tc.ParseError,
     "op 'O[i] += A[i]; P[i] = O[i] +* 2': syntax error on line 2 ('P[i] = O[i] +* 2'): invalid syntax"),
    ("C[i, j] += A[i, k] * B[k, j]", (z((2, 3)),), {}, tc.ArgumentError,
     "op 'C[i, j] += A[i, k] * B[k, j]': takes 2 input tensors (A, B) but 1 was given; missing: B"),
    ("O[i] = A[i] * s", (z(3),), {}, tc.ArgumentError,
     "op 'O[i] = A[i] * s': scalar parameter 's' was not given; pass it as a keyword, op(..., s=value)"),
    ("O[i] = A[i] * s", (z(3),), {"s": 1.0, "t": 2}, tc.UnknownNameError,
     "op 'O[i] = A[i] * s': unexpected keyword argument 't'; the op's scalar parameters are: s"),
    ("O[i] = A[i] * s", (z(3),), {"s": "x"}, tc.DtypeError,
     "op 'O[i] = A[i] * s': scalar parameter 's' must be a real number, got str ('x')"),
    ("O[i] = A[i]", (z(3, np.float16),), {}, tc.DtypeError,
     "op 'O[i] = A[i]': tensor A has dtype float16, which is not supported; supported dtypes are float32, "
     "float64, int32, int64 and bool (convert with .astype(numpy.float32))"),
    ("O[i] = A[i] + 1", (np.arange(3, dtype=">f4"),), {}, tc.DtypeError,
     "op 'O[i] = A[i] + 1': tensor A has non-native byte order (>f4); convert it with .astype(float32)"),
    ("O[i] = A[i]", (np.array(["a", "b"]),), {}, tc.DtypeError,
     "op 'O[i] = A[i]': tensor A has dtype <U1, which is not supported; supported dtypes are float32, float64, "
     "int32, int64 and bool (convert with .astype(numpy.float32))"),
    ("O[i] += A[i + j]", (z(3),), {}, tc.RangeError,
     "op 'O[i] += A[i + j]': index 'j' on line 1 has no lower bound; it must index a tensor axis on its own or "
     "be bounded with ranges={'j': n}"),
    ("O[y] += I[y + k] * K[k]", (z(2), z(3)), {}, tc.RangeError,
     "op 'O[y] += I[y + k] * K[k]': index 'y' of O has an empty range on line 1: no value keeps every read in "
     "bounds; check the shapes (I: (2,), K: (3,))"),
    ("O[i] = A[i * j]", None, {}, tc.ParseError,
     "op 'O[i] = A[i * j]': index expression 'i * j' is not affine (a product of two indices) on line 1 "
     "('O[i] = A[i * j]'); index expressions may multiply indices by integer constants only"),
    ("O[i] = A[i]\nO[i] = B[i]", None, {}, tc.ParseError,
     "op 'O[i] = A[i]; O[i] = B[i]': tensor O is written on line 1 and again on line 2; each tensor is written "
     "by one statement"),
    ("O[i // 2] = A[i]", (z(4),), {}, tc.RangeError,
     "op 'O[i // 2] = A[i]': statement on line 1 writes some elements of O more than once with '='; use '+=' "
     "or a reduction such as max(...) to combine them"),
    ("O[i] = exp(A[i], 2)", None, {}, tc.ParseError,
     "op 'O[i] = exp(A[i], 2)': function 'exp' takes 1 argument but 2 were given on line 1 "
     "('O[i] = exp(A[i], 2)')"),
    ("O[i] = A[B[i] * 2]", None, {}, tc.ParseError,
     "op 'O[i] = A[B[i] * 2]': index 'B[i] * 2' mixes a tensor read into arithmetic on line 1 "
     "('O[i] = A[B[i] * 2]'); an index through an index tensor must be the read alone, e.g. E[T[i], d]"),
    ("O[i] = A[:, i]", None, {}, tc.ParseError,
     "op 'O[i] = A[:, i]': slices are not supported in an index on line 1 ('O[i] = A[:, i]'); name every axis "
     "with an index, e.g. A[i, j]"),
    ("X[i] = X[i] + 1", None, {}, tc.ParseError,
     "op 'X[i] = X[i] + 1': tensor X is both read and written on line 1; recurrences are not supported, write "
     "the result to a new tensor"),
    ("A[i, j] += B[i] * B[j]\nC[i] = A[i]", None, {}, tc.ParseError,
     "op 'A[i, j] += B[i] * B[j]; C[i] = A[i]': tensor A is indexed with 2 indices on line 1 but 1 on line 2"),
    ("O[i] = exp(sum(A[i, j]))", None, {}, tc.ParseError,
     "op 'O[i] = exp(sum(A[i, j]))': reduction sum(...) must be the whole right-hand side on line 1 "
     "('O[i] = exp(sum(A[i, j]))'); write it as a statement of its own, e.g. S[i] = sum(A[i, j])"),
    ("O[i] = A[i / 2]", None, {}, tc.ParseError,
     "op 'O[i] = A[i / 2]': index expression 'i / 2' is not affine on line 1 ('O[i] = A[i / 2]'); use +, -, * "
     "by a constant, and // or % by a positive constant"),
    ("O[i] = A[i] + i\nP[j] = O[j] * i", None, {}, tc.ParseError,
     "op 'O[i] = A[i] + i; P[j] = O[j] * i': 'i' is an index on line 1 and a scalar parameter on line 2; "
     "rename one of them"),
    ("", None, {}, tc.ParseError, "op '': the source has no statements; write e.g. 'O[i] = A[i]'"),
    ("A[i] + 1", None, {}, tc.ParseError,
     "op 'A[i] + 1': a statement must write a tensor on line 1 ('A[i] + 1'); write e.g. O[i] = A[i]"),
]


@pytest.mark.parametrize("src,arrays,params,cls,message", CASES, ids=[c[4][:50] for c in CASES])
def test_error_message(src, arrays, params, cls, message):
    with pytest.raises(cls) as info:
        op = tc.op(src)
        op(*arrays, **params)
    assert str(info.value) == message
    assert isinstance(info.value, tc.TensorcompError)


def test_errors_are_also_builtin_exceptions():
    assert issubclass(tc.ParseError, SyntaxError)
    assert issubclass(tc.ShapeError, ValueError)
    assert issubclass(tc.DtypeError, TypeError)
    assert issubclass(tc.UnknownNameError, NameError)
    with pytest.raises(SyntaxError) as info:
        tc.op("O[i] = A[i]\nO[i] +=")
    assert info.value.lineno == 2


def test_bad_options():
    with pytest.raises(tc.UnknownNameError, match=r"ranges names 'q', which is not an index of the op; its "
                                                  r"indices are: i, j"):
        tc.op("O[i] += A[i, j]", ranges={"q": 3})
    with pytest.raises(tc.ArgumentError, match=r"range of index 'i' is empty: \(3, 3\)"):
        tc.op("O[i] = A[i]", ranges={"i": (3, 3)})
    with pytest.raises(tc.ArgumentError, match=r"range of index 'i' must be an int n"):
        tc.op("O[i] = A[i]", ranges={"i": "all"})
    with pytest.raises(tc.UnknownNameError, match=r"pad names 'O', which is not an input of the op"):
        tc.op("O[i] = A[i]", pad={"O": 1})
    with pytest.raises(tc.ArgumentError, match=r"pad of A must be given as numpy.pad's pad_width"):
        tc.op("O[i] = A[i]", pad={"A": (1, 2, 3)})
    with pytest.raises(tc.ArgumentError, match=r"pad of A must not be negative"):
        tc.op("O[i] = A[i]", pad={"A": -1})
    with pytest.raises(tc.ArgumentError, match=r"unknown target 'tpu'; available targets: cpu"):
        tc.op("O[i] = A[i]").code(np.zeros(2), target="tpu")
    with pytest.raises(tc.ArgumentError, match=r"tc.op expects the source text as a string, got int"):
        tc.op(3)
