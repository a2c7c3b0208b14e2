"""Gradients by transposition, checked with central differences in float64."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcomp as tc
from tensorcomp import ops

rng = np.random.default_rng(7)


def directional_check(op, inputs, wrt=None, params=None, eps=1e-6, rtol=1e-6):
    """<grad_X, v> == d/de sum(op(X + e v) * dO) for random dO and v, for each X in wrt."""
    params = params or {}
    wrt = list(wrt or op.inputs)
    outs = op(*inputs, **params)
    outs = outs if isinstance(outs, tuple) else (outs,)
    d_outs = [rng.standard_normal(o.shape) for o in outs]
    g = tc.grad(op, wrt)
    grads = g(*inputs, *d_outs, **params)
    grads = grads if isinstance(grads, tuple) else (grads,)

    def loss(args):
        res = op(*args, **params)
        res = res if isinstance(res, tuple) else (res,)
        return sum(float((r * d).sum()) for r, d in zip(res, d_outs))

    for name, gx in zip(wrt, grads):
        k = op.inputs.index(name)
        assert gx.shape == inputs[k].shape and gx.dtype == inputs[k].dtype
        v = rng.standard_normal(inputs[k].shape)
        plus = list(inputs)
        minus = list(inputs)
        plus[k] = inputs[k] + eps * v
        minus[k] = inputs[k] - eps * v
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = float((gx * v).sum())
        assert abs(numeric - analytic) <= rtol * max(1.0, abs(numeric)) + 1e-7, (name, numeric, analytic, g.source)
    return g


def r(*shape):
    return rng.standard_normal(shape)


CASES = [
    ("matmul", "C[i, j] += A[i, k] * B[k, j]", lambda: (r(3, 4), r(4, 5)), None),
    ("strided capsule conv", "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]",
     lambda: (r(2, 7, 7, 3, 2, 3), r(3, 3, 3, 2, 3, 2)), None),
    ("dilated conv2d", "O[n, f, y, x] += I[n, c, y + 2*ky, x + 2*kx] * W[f, c, ky, kx]",
     lambda: (r(2, 3, 9, 8), r(4, 3, 3, 3)), None),
    ("max pool stride != window", "O[n, y, x] = max(I[n, 2*y + ky, 2*x + kx])",
     lambda: (r(2, 9, 9),), {"ranges": {"ky": 3, "kx": 3}}),
    ("softmax in four statements", "M[n] = max(X[n, c])\nE[n, c] = exp(X[n, c] - M[n])\nS[n] += E[n, c]\n"
     "Y[n, c] = E[n, c] / S[n]", lambda: (r(4, 6),), None),
    ("three-operand product", "O[i, l] += A[i, j] * B[j, k] * C[k, l]", lambda: (r(3, 4), r(4, 5), r(5, 2)), None),
    ("squash", "S[n, i] += V[n, i, d] * V[n, i, d]\n"
     "O[n, i, d] = V[n, i, d] * S[n, i] / ((1 + S[n, i]) * sqrt(S[n, i] + 1e-9))", lambda: (r(2, 5, 4),), None),
    ("scatter written side, wrt kernel", "O[n, 2*y + ky] += I[n, y] * K[ky]", lambda: (r(3, 5), r(3)), None),
    ("elementwise functions", "O[i] = exp(A[i]) * tanh(B[i]) + sigmoid(A[i]) / (2 + sin(B[i])) - cos(A[i]) "
     "+ log(1 + A[i] ** 2) + sqrt(1 + B[i] * B[i]) + abs(A[i]) + relu(B[i]) + pow(1.5 + sin(A[i]), B[i]) "
     "+ max(A[i], B[i]) + min(A[i], 0.3) + where(A[i] > B[i], A[i] * B[i], -B[i])", lambda: (r(9), r(9)), None),
    ("prod reduction", "O[i] = prod(A[i, j])", lambda: (r(3, 4),), None),
    ("min reduction", "O[i] = min(A[i, j] * B[j])", lambda: (r(3, 4), r(4)), None),
    ("repeated index and use twice", "O[i] += A[i, i] * A[i, j] + A[j, i]", lambda: (r(4, 4),), None),
    ("same conv with zero padding", "O[y, x] += I[y + ky, x + kx] * K[ky, kx]", lambda: (r(5, 6), r(3, 3)),
     {"pad": {"I": 1}}),
    ("reads that shrink the domain", "O[i] += A[i] + B[i - 1] * A[i]", lambda: (r(6), r(6)), None),
    ("causal conv", "O[i] += A[i - j] * K[j]", lambda: (r(10), r(3)), None),
    ("scalar parameters", "O[i] = A[i] * alpha + B[i] ** 2 * beta", lambda: (r(5), r(5)), "params"),
    ("floor division index", "O[i // 2] += A[i] * B[i % 2]", lambda: (r(8), r(2)), None),
]


@pytest.mark.parametrize("name,src,make,opts", CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(name, src, make, opts):
    params = {}
    kwargs = {}
    if opts == "params":
        params = {"alpha": 0.7, "beta": -1.3}
    elif opts:
        kwargs = opts
    op = tc.op(src, **kwargs)
    directional_check(op, make(), params=params)


def test_min_reduction_tie_rule_shares_the_gradient():
    op = tc.op("O[i] = min(A[i, j])")
    a = np.array([[1.0, 1.0, 2.0], [0.5, 3.0, 0.5]])
    g = tc.grad(op, "A")(a, np.ones(2))
    np.testing.assert_allclose(g, [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])


def test_prod_gradient_with_zero_factors_is_exact():
    op = tc.op("O[i] = prod(A[i, j])")
    a = np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 4.0], [1.0, 2.0, 3.0]])
    g = tc.grad(op, "A")(a, np.ones(3))
    np.testing.assert_allclose(g, [[0, 6, 0], [0, 0, 0], [6, 3, 2]])


def test_unused_input_gets_zeros_and_float32_stays_float32():
    op = tc.op("O[i] = where(B[i] > 0, A[i], 0.0)")
    a, b = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    assert op.inputs == ("B", "A")  # order of first appearance
    ga, gb = tc.grad(op, ["A", "B"])(b, a, np.ones(5, np.float32))
    assert ga.dtype == np.float32 and gb.dtype == np.float32
    np.testing.assert_array_equal(ga, (b > 0).astype(np.float32))
    np.testing.assert_array_equal(gb, np.zeros(5, np.float32))


@pytest.mark.parametrize("make_op,shapes", [
    (lambda: ops.matmul(), [(3, 4), (4, 2)]),
    (lambda: ops.batched_matmul(), [(2, 3, 4), (2, 4, 2)]),
    (lambda: ops.conv(1, stride=2, dilation=2, padding=1), [(2, 3, 11), (4, 3, 3)]),
    (lambda: ops.conv(2, stride=2, padding=1, channels_last=True), [(2, 7, 6, 3), (3, 3, 3, 4)]),
    (lambda: ops.conv(2, groups=2, in_channels=4, out_channels=6), [(1, 4, 5, 5), (6, 2, 3, 3)]),
    (lambda: ops.conv(3, stride=(1, 2, 1)), [(1, 2, 4, 5, 4), (2, 2, 2, 3, 2)]),
    (lambda: ops.pool("max", 2, 3, 2, padding=1), [(2, 3, 7, 7)]),
    (lambda: ops.pool("avg", 1, 2, 2), [(2, 3, 8)]),
    (lambda: ops.softmax(3, 1), [(2, 4, 3)]),
    (lambda: ops.log_softmax(2), [(3, 5)]),
    (lambda: ops.reduce("max", 3, (1,)), [(3, 4, 5)]),
    (lambda: ops.reduce("sum", 3, (0, 2)), [(3, 4, 5)]),
    (lambda: ops.activation("gelu_tanh", 2), [(3, 4)]),
    (lambda: ops.activation("elu", 1), [(7,)]),
    (lambda: ops.capsule_conv(2), [(2, 7, 7, 2, 4, 4), (3, 3, 2, 3, 4, 4)]),
    (lambda: ops.capsule_votes(1), [(1, 5, 5, 2, 2, 3), (3, 3, 2, 2, 3, 2)]),
    (lambda: ops.dense_votes(), [(2, 3, 4), (3, 2, 5, 4)]),
    (lambda: ops.squash(3), [(2, 3, 4)]),
])
def test_every_library_op(make_op, shapes):
    directional_check(make_op(), [rng.standard_normal(s) for s in shapes])


def test_golden_sources():
    conv = ops.conv(2, stride=2)
    assert tc.grad(conv, "I").source == "dI[n, c, k0 + 2*y0, k1 + 2*y1] += dO[n, f, y0, y1] * W[f, c, k0, k1]"
    mm = ops.matmul()
    assert tc.grad(mm, ["A", "B"]).source == "dA[i, k] += dC[i, j] * B[k, j]\ndB[k, j] += dC[i, j] * A[i, k]"
    pool = tc.op("O[n, y] = max(I[n, 2*y + k])", ranges={"k": 3})
    assert tc.grad(pool, "I").source == (  # a masked gather of dO, ties sharing it
        "O[n, y] = max(I[n, k + 2*y])\n"
        "nO[n, y] += where(I[n, k + 2*y] == O[n, y], 1, 0)\n"
        "dI[n, k + 2*y] += where(I[n, k + 2*y] == O[n, y], dO[n, y] / nO[n, y], 0)"
    )
    multiplicity = tc.op("O[i] += A[i] + B[j]")
    assert tc.grad(multiplicity, "A").source == "dA[i] += dO[i]  # also over j (the domain of line 1)"
    np.testing.assert_allclose(tc.grad(multiplicity, "A")(np.ones(3), np.ones(4), np.ones(3)), [4, 4, 4])


def test_second_derivatives_hessian_vector_products():
    """grad(grad(op)) against finite differences of the gradient."""
    op = tc.op("O[i] += exp(A[i, j] * B[j]) * A[i, j]")
    a, b = r(3, 4), r(4)
    g = tc.grad(op, "A")  # inputs A, B, dO -> dA
    directional_check(g, [a, b, r(3)], wrt=["A", "B"])
    h = tc.grad(tc.grad(op, "A"), "B")
    assert isinstance(h, tc.Op)
    conv = tc.op("O[y] += I[2*y + k] * K[k] * K[k]")
    directional_check(tc.grad(conv, "K"), [r(9), r(3), r(4)], wrt=["I", "K"])


def test_bad_requests():
    op = tc.op("O[i] = A[i] * s")
    with pytest.raises(tc.UnknownNameError) as info:
        tc.grad(op, "Z")
    assert str(info.value) == "tc.grad: op 'O[i] = A[i] * s': op has no input 'Z'; its inputs are: A"
    with pytest.raises(tc.ArgumentError) as info:
        tc.grad(op, "s")
    assert str(info.value) == ("tc.grad: op 'O[i] = A[i] * s': 's' is a scalar parameter; gradients are taken "
                               "with respect to input tensors (A)")
    with pytest.raises(tc.ArgumentError) as info:
        tc.grad(op, "O")
    assert str(info.value) == "tc.grad: op 'O[i] = A[i] * s': 'O' is written by the op, not an input; its inputs are: A"
    with pytest.raises(tc.ArgumentError, match="expects an op made by tc.op"):
        tc.grad("O[i] = A[i]", "A")
    g = tc.grad(tc.op("O[i] = A[i] * 2"), "A")
    with pytest.raises(tc.DtypeError) as info:
        g(np.arange(3, dtype=np.int64), np.ones(3))
    assert str(info.value) == ("op 'dA[i] += dO[i] * 2': tensor A has dtype int64; only float32 and float64 tensors "
                               "have gradients")
    with pytest.raises(tc.ShapeError) as info:
        g(np.ones(3), np.ones(4))
    assert str(info.value) == "op 'dA[i] += dO[i] * 2': gradient input dO has shape (4,) but O has shape (3,)"


def test_colliding_scatter_without_batch_index_is_scheduled_as_a_gather():
    """dI of a strided 1-D conv has no plain written index: it loops over dI's elements outermost
    (parallel, no atomics). With a batch index the scatter order is kept (n is the parallel loop)."""
    from tensorcomp.schedule import For
    conv = tc.op("O[y] += I[2*y + k] * W[k]")
    g = tc.grad(conv, "I")
    assert g.source == "dI[k + 2*y] += dO[y] * W[k]"
    I, W, dO = r(9), r(3), r(4)
    compute_nest = g.loopnest(I, W, dO).body[-1]
    assert isinstance(compute_nest, For) and compute_nest.var == "di0" and compute_nest.kind == "parallel"
    ref = np.zeros(9)
    for y in range(4):
        for k in range(3):
            ref[2 * y + k] += dO[y] * W[k]
    np.testing.assert_allclose(g(I, W, dO), ref, rtol=1e-12)
    batched = tc.grad(tc.op("O[n, y] += I[n, 2*y + k] * W[k]"), "I")
    outer = batched.loopnest(r(2, 9), W, r(2, 4)).body[-1]
    assert outer.var == "n" and outer.kind == "parallel" and outer.body[0].var != "di1"
    # on the GPU the gather form is always used: every written coordinate becomes a thread (the plain
    # mapping), or the default keeps the plain written index n in a register tile inside the reductions
    from tensorcomp.schedule import Block
    assert "// launch kernel_stage1<<<1, 256>>>: 18 parallel iterations" in batched.with_schedule((Block(256),)).code(
        r(2, 9), W, r(2, 4), target="cuda")
    default = batched.code(r(2, 9), W, r(2, 4), target="cuda")
    assert "// launch kernel_stage1<<<1, 128>>>: 9 parallel iterations" in default
    assert "{  // register tile: 2 elements of dI" in default
    # an injective scatter keeps its scatter order
    split = tc.op("O[i // 2, i % 2] = A[i]")
    assert split.loopnest(np.zeros(6)).body[-1].var == "i"


@st.composite
def einsum_ops(draw):
    letters = "abcde"[:draw(st.integers(1, 5))]
    extent = {c: draw(st.integers(1, 3)) for c in letters}
    specs = ["".join(draw(st.lists(st.sampled_from(letters), min_size=1, max_size=4)))
             for _ in range(draw(st.integers(1, 3)))]
    used = sorted(set("".join(specs)))
    out = "".join(draw(st.lists(st.sampled_from(used), unique=True, max_size=3)))
    return specs, out, extent


@settings(max_examples=25)
@given(einsum_ops(), st.integers(0, 2 ** 16))
def test_random_einsum_gradients(case, seed):
    specs, out, extent = case
    names = [f"T{k}" for k in range(len(specs))]
    rhs = " * ".join(f"{n}[{', '.join(s)}]" for n, s in zip(names, specs))
    target = f"O[{', '.join(out)}]" if out else "O"
    op = tc.op(f"{target} += {rhs}")
    local = np.random.default_rng(seed)
    directional_check(op, [local.standard_normal([extent[c] for c in s]) for s in specs])


def test_wrt_list_returns_a_tuple_even_of_one():
    op = tc.op("O[i] = A[i] * B[i]")
    a, b, d = r(3), r(3), r(3)
    single = tc.grad(op, "A")(a, b, d)
    listed = tc.grad(op, ["A"])(a, b, d)
    assert isinstance(single, np.ndarray) and isinstance(listed, tuple) and len(listed) == 1
    np.testing.assert_allclose(listed[0], single)
    np.testing.assert_allclose(single, b * d)
