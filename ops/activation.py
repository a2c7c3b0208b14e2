"""Elementwise activations and softmax."""

from __future__ import annotations

from functools import lru_cache

from tensorcomp.opdef import Op

from ._util import join, names

ACTIVATIONS = {
    "relu": "relu(X[{i}])",
    "sigmoid": "sigmoid(X[{i}])",
    "tanh": "tanh(X[{i}])",
    "exp": "exp(X[{i}])",
    "log": "log(X[{i}])",
    "abs": "abs(X[{i}])",
    "leaky_relu": "where(X[{i}] > 0, X[{i}], slope * X[{i}])",
    "elu": "where(X[{i}] > 0, X[{i}], exp(X[{i}]) - 1)",
    "softplus": "softplus(X[{i}])",
    "gelu": "0.5 * X[{i}] * (1 + erf(X[{i}] * 0.7071067811865476))",
    "gelu_tanh": "0.5 * X[{i}] * (1 + tanh(0.7978845608028654 * (X[{i}] + 0.044715 * X[{i}] ** 3)))",
}


@lru_cache(maxsize=None)
def activation(name: str, rank: int) -> Op:
    """Elementwise activation ``name`` on a rank-``rank`` tensor X (leaky_relu takes ``slope=``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(sorted(ACTIVATIONS))}")
    i = join(names("i", rank))
    return Op(f"O[{i}] = {ACTIVATIONS[name].format(i=i)}")


def _axis_indices(rank: int, axis: int) -> tuple[str, str]:
    axis %= rank
    idx = names("i", rank)
    kept = [x for k, x in enumerate(idx) if k != axis]
    return join(idx), join(kept)


@lru_cache(maxsize=None)
def softmax(rank: int, axis: int = -1) -> Op:
    """Numerically stable softmax along ``axis``, written as four statements."""
    full, kept = _axis_indices(rank, axis)
    return Op(f"""
        M[{kept}] = max(X[{full}])
        E[{full}] = exp(X[{full}] - M[{kept}])
        S[{kept}] += E[{full}]
        Y[{full}] = E[{full}] / S[{kept}]
    """)


@lru_cache(maxsize=None)
def log_softmax(rank: int, axis: int = -1) -> Op:
    """Log-softmax along ``axis``: ``x - max - log(sum(exp(x - max)))``."""
    full, kept = _axis_indices(rank, axis)
    return Op(f"""
        M[{kept}] = max(X[{full}])
        S[{kept}] += exp(X[{full}] - M[{kept}])
        Y[{full}] = X[{full}] - M[{kept}] - log(S[{kept}])
    """)
