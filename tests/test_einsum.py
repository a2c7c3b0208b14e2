"""Random einsums (ranks up to 6, shared and repeated indices) against numpy.einsum."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import tensorcomp as tc

LETTERS = "abcdefgh"


@st.composite
def einsums(draw):
    n_idx = draw(st.integers(1, 6))
    letters = LETTERS[:n_idx]
    extent = {c: draw(st.integers(1, 4)) for c in letters}
    n_ops = draw(st.integers(1, 3))
    operands = []
    for _ in range(n_ops):
        rank = draw(st.integers(1, 6))
        operands.append("".join(draw(st.lists(st.sampled_from(letters), min_size=rank, max_size=rank))))
    used = sorted(set("".join(operands)))
    out = draw(st.lists(st.sampled_from(used), unique=True, max_size=min(4, len(used))))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    return operands, "".join(out), extent, dtype


@given(einsums(), st.integers(0, 2 ** 16))
def test_random_einsum_matches_numpy(case, seed):
    operands, out, extent, dtype = case
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal([extent[c] for c in spec]).astype(dtype) for spec in operands]
    names = [f"T{k}" for k in range(len(operands))]
    rhs = " * ".join(f"{n}[{', '.join(spec)}]" for n, spec in zip(names, operands))
    target = f"O[{', '.join(out)}]" if out else "O"
    src = f"{target} += {rhs}"
    op = tc.op(src)
    # an operand repeated by name is one input; here every operand has its own name
    got = op(*arrays)
    ref = np.einsum(f"{','.join(operands)}->{out}", *arrays)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max(initial=0))))
    assert got.dtype == ref.dtype
