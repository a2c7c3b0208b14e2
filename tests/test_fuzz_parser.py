"""Random and mutated sources only ever raise tensorcomp's own errors, never crash."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import tensorcomp as tc

SEEDS = [
    "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]",
    "M[n] = max(X[n, c])\nE[n, c] = exp(X[n, c] - M[n])\nS[n] += E[n, c]\nY[n, c] = E[n, c] / S[n]",
    "O[i // 2, i % 3] = where(A[i] > 0, A[i], -A[i] ** 2) * alpha",
    "O[2*y + ky] += A[y] * K[ky]",
]
TOKENS = ["[", "]", "(", ")", ",", "+", "-", "*", "/", "//", "%", "**", "=", "+=", "*=", "\n", " ", "i", "j",
          "A", "O", "max", "sum", "exp", "where", "0", "2", "1.5", ">", "==", "and", "not", ":", "lambda", "'s'",
          "if", "else", "..."]


def run(src: str) -> None:
    try:
        op = tc.op(src)
    except tc.TensorcompError:
        return
    arrays = [np.ones((3,) * op.program.rank(name)) for name in op.inputs]
    params = {p: 1.0 for p in op.params}
    try:
        op(*arrays, **params)
    except tc.TensorcompError:
        pass


@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.sampled_from(TOKENS + ["DEL"])),
                                        max_size=4))
def test_mutated_sources(seed, edits):
    src = seed
    for pos, tok in edits:
        pos %= len(src) + 1
        src = src[:pos] + src[pos + 1:] if tok == "DEL" else src[:pos] + tok + src[pos:]
    run(src)


@given(st.lists(st.sampled_from(TOKENS), max_size=14))
def test_random_token_soup(tokens):
    run("".join(tokens))


@given(st.text(max_size=30))
def test_random_text(text):
    run(text)
