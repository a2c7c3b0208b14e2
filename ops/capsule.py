"""Capsule-network kernels: capsule convolution, votes, squash.

Poses are matrices of any shape: an input capsule's pose (P x Q) times a
transformation (Q x R) gives a vote (P x R).
"""

from __future__ import annotations

from functools import lru_cache

from tensorcomp.op import Op

from ._util import affine


@lru_cache(maxsize=None)
def capsule_conv(stride: int = 2, dilation: int = 1) -> Op:
    """Capsule convolution summed over the receptive field and input types.

    ``O[n, y, x, co, p, r] += I[n, s*y + ky, s*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]``
    """
    ty, tx = affine(stride, "y", dilation, "ky"), affine(stride, "x", dilation, "kx")
    return Op(f"O[n, y, x, co, p, r] += I[n, {ty}, {tx}, ci, p, q] * W[ky, kx, ci, co, q, r]")


@lru_cache(maxsize=None)
def capsule_votes(stride: int = 2) -> Op:
    """Votes of every input capsule in each window for every output type (not summed; for routing).

    ``V[n, y, x, ky, kx, ci, co, p, r] += I[n, s*y + ky, s*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]``
    """
    ty, tx = affine(stride, "y", 1, "ky"), affine(stride, "x", 1, "kx")
    return Op(f"V[n, y, x, ky, kx, ci, co, p, r] += I[n, {ty}, {tx}, ci, p, q] * W[ky, kx, ci, co, q, r]")


@lru_cache(maxsize=None)
def dense_votes() -> Op:
    """Fully connected capsule votes (Sabour et al.): ``U[n, i, j, d] += X[n, i, k] * W[i, j, d, k]``."""
    return Op("U[n, i, j, d] += X[n, i, k] * W[i, j, d, k]")


@lru_cache(maxsize=None)
def squash(rank: int = 3) -> Op:
    """``v * |v|^2 / ((1 + |v|^2) |v|)`` over the last axis of a rank-``rank`` tensor V."""
    lead = ", ".join(f"i{k}" for k in range(rank - 1))
    return Op(f"""
        S[{lead}] += V[{lead}, d] * V[{lead}, d]
        O[{lead}, d] = V[{lead}, d] * S[{lead}] / ((1 + S[{lead}]) * sqrt(S[{lead}] + 1e-9))
    """)
