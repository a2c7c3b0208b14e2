"""Loop fusion across the statements of one op (``schedule/fusion.py``): which statements share
their outer loops, the nests that result, and that the values do not change."""

from __future__ import annotations

import numpy as np

import tensorcomp as tc
from tensorcomp import autodiff, ops

rng = np.random.default_rng(7)


def _top_level(nest) -> int:
    return sum(1 for line in str(nest).splitlines() if line.startswith("for "))


def test_a_row_normalisation_runs_as_one_nest_over_the_rows():
    op = tc.op("S[i] += A[i, k]\nO[i, k] = A[i, k] / S[i]")
    a = rng.random((6, 5)).astype(np.float32)
    assert str(op.loopnest(a)) == """\
for i in range(0, 6):  # parallel
  S[i] = 0.0
  # scalar tile: 1 element of S in registers
  for k in range(0, 5):
    S[i] += A[i, k]
  for k in range(0, 5):
    O[i, k] = A[i, k] / S[i]"""
    np.testing.assert_allclose(op(a), a / a.sum(1, keepdims=True), rtol=1e-6)


def test_a_read_of_a_neighbouring_row_keeps_the_nests_apart():
    """``S[i + 1]`` is written at another point of ``i``: sharing the loop over ``i`` would read it
    before it is written."""
    op = tc.op("S[i] += A[i, k]\nO[i] = S[i] * S[i + 1]")
    a = rng.random((6, 5)).astype(np.float32)
    assert _top_level(op.loopnest(a)) == 2
    s = a.sum(1)
    np.testing.assert_allclose(op(a), s[:-1] * s[1:], rtol=1e-6)


def test_a_reduction_over_the_shared_index_is_not_fused():
    """``B[j] += T[i, j]`` sums over ``i``: its writes at different ``i`` meet, so it runs alone."""
    op = tc.op("T[i, j] = exp(A[i, j])\nB[j] += T[i, j] * A[i, j]\nC[i, j] = T[i, j] + 1")
    a = rng.random((8, 16)).astype(np.float32)
    b, c = op(a)
    np.testing.assert_allclose(b, (np.exp(a) * a).sum(0), rtol=1e-5)
    np.testing.assert_allclose(c, np.exp(a) + 1, rtol=1e-6)
    assert _top_level(op.loopnest(a)) >= 2


def test_the_max_pool_gradient_runs_as_one_nest_over_n_and_c():
    """Six nests before fusion (the maximum, the tie count, the gradient, each initialised): one
    now, each (n, c) plane's maximum and ties still in cache when the gradient reads them."""
    grad = autodiff.grad(ops.pool("max", 2, 2, 2, 0), "X")
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, :2] = 5.0  # a tie: the gradient is split between the two
    d = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    nest = str(grad.loopnest(x, d))
    assert _top_level(nest) == 1
    assert nest.splitlines()[:2] == ["for n in range(0, 4):  # parallel", "  for c in range(0, 3):  # parallel"]
    w = x.reshape(4, 3, 4, 2, 4, 2)
    m = w.max(axis=(3, 5), keepdims=True)
    hit = w == m
    want = (hit * (d[:, :, :, None, :, None] / hit.sum(axis=(3, 5), keepdims=True))).reshape(x.shape)
    np.testing.assert_allclose(grad(x, d), want, rtol=1e-6)


def test_fused_and_unfused_nests_agree_on_random_multi_statement_ops():
    """Softmax, a layer norm and a gated product, each through the fused nest and against numpy."""
    x = rng.standard_normal((5, 7, 9)).astype(np.float64)
    softmax = tc.op("M[a, b] = max(X[a, b, k])\nE[a, b, k] = exp(X[a, b, k] - M[a, b])\n"
                    "S[a, b] += E[a, b, k]\nY[a, b, k] = E[a, b, k] / S[a, b]")
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(softmax(x), e / e.sum(-1, keepdims=True), rtol=1e-12)
    norm = tc.op("U[a] += X[a, b, k] / 63\nV[a] += (X[a, b, k] - U[a]) ** 2 / 63\n"
                 "Y[a, b, k] = (X[a, b, k] - U[a]) / sqrt(V[a] + 1e-5)")
    u = x.mean((1, 2), keepdims=True)
    v = ((x - u) ** 2).mean((1, 2), keepdims=True)
    np.testing.assert_allclose(norm(x), (x - u) / np.sqrt(v + 1e-5), rtol=1e-10)
    gate = tc.op("G[a, b, k] = 1 / (1 + exp(-X[a, b, k]))\nY[a, b] += G[a, b, k] * X[a, b, k]")
    np.testing.assert_allclose(gate(x), (x / (1 + np.exp(-x))).sum(-1), rtol=1e-12)


def test_statements_share_loops_by_position_whatever_their_index_names():
    """``E[i0, i1] = ...`` after statements over ``n, i`` shares their loops: the loops are matched by
    position (and range), each statement's own index at that position; the shared loops take the first
    statement's names."""
    op = tc.op("S[n, i] += A[n, i, j]\nE[i0, i1, i2] = A[i0, i1, i2] / S[i0, i1]\n"
               "T[n, i] += E[n, i, j] * E[n, i, j]")
    a = rng.random((4, 5, 6)).astype(np.float64)
    nest = str(op.loopnest(a))
    assert _top_level(nest) == 1 and nest.splitlines()[:2] == [
        "for n in range(0, 4):  # parallel", "  for i in range(0, 5):  # parallel"]
    e = a / a.sum(-1, keepdims=True)
    np.testing.assert_allclose(op(a), (e * e).sum(-1), rtol=1e-12)


def test_an_inner_loop_named_as_a_shared_one_keeps_the_nests_apart():
    """The second statement's first loop ``k`` could share the first statement's loop, named ``n``;
    but the second statement's own inner loop is also ``n``, which would hide the shared one inside
    it: the nests stay apart and the values are right."""
    op = tc.op("S[n] += A[n, j]\nO[k, n] = A[k, n] * S[k]")
    a = rng.random((6, 6)).astype(np.float64)
    assert _top_level(op.loopnest(a)) == 2
    np.testing.assert_allclose(op(a), a * a.sum(1)[:, None], rtol=1e-12)


def _random_program(r: np.random.Generator) -> str:
    """A few statements over A[a, b, c] and B[a, b] and each other: elementwise maps, reductions,
    broadcasts, reads shifted by one and transposed writes."""
    shapes = {"A": ["a", "b", "c"], "B": ["a", "b"]}
    lines = []
    for k in range(int(r.integers(2, 6))):
        src = str(r.choice(list(shapes)))
        ix = shapes[src]
        kind = str(r.choice(["map", "reduce", "broadcast", "shift", "transpose"]))
        if kind == "reduce" and len(ix) > 1:
            out, rhs, op = ix[:-1], f"{src}[{', '.join(ix)}] * 2", "+="
        elif kind == "broadcast":
            other = str(r.choice(list(shapes)))
            out = list(dict.fromkeys(ix + shapes[other]))
            rhs, op = f"{src}[{', '.join(ix)}] * {other}[{', '.join(shapes[other])}]", "="
        elif kind == "shift":
            shifted = [f"{ix[0]} + 1", *ix[1:]]
            out, rhs, op = ix, f"{src}[{', '.join(shifted)}] - {src}[{', '.join(ix)}]", "="
        elif kind == "transpose" and len(ix) > 1:
            out, rhs, op = ix[::-1], f"{src}[{', '.join(ix)}] + 0.5", "="
        else:
            out, rhs, op = ix, f"exp({src}[{', '.join(ix)}] * 0.1) + 1", "="
        lines.append(f"T{k}[{', '.join(out)}] {op} {rhs}")
        shapes[f"T{k}"] = list(out)
    return "\n".join(lines)


def test_fused_nests_compute_what_unfused_ones_do_on_random_programs(monkeypatch):
    from tensorcomp import compiler
    monkeypatch.setenv("TENSORCOMP_OBJECT_CACHE", "0")  # (no kernel manifests: each build is fresh)
    plain = compiler.lower
    r = np.random.default_rng(11)
    arrays = {"A": r.standard_normal((4, 5, 6)), "B": r.standard_normal((4, 5))}
    for _ in range(25):
        source = _random_program(r)
        results = []
        for fuse in (True, False):
            monkeypatch.setattr(compiler, "lower", lambda *a, fuse=fuse, **k: plain(*a, fuse=fuse))
            op = tc.op(source)
            op.forget_kernels()
            try:
                out = op(*[arrays[t] for t in op.inputs])
            except tc.TensorcompError as exc:  # (axes that do not match: the same error either way)
                out = str(exc)
            results.append(out if isinstance(out, tuple) else (out,))
        assert len(results[0]) == len(results[1])
        for fused, unfused in zip(*results):
            if isinstance(fused, str):
                assert fused == unfused
            else:
                np.testing.assert_allclose(fused, unfused, rtol=1e-12, atol=1e-12, err_msg=source)
