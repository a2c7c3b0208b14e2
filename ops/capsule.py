"""Capsule-network kernels: capsule convolution, votes, squash.

Poses are matrices of any shape: an input capsule's pose (P x Q) times a
transformation (Q x R) gives a vote (P x R).
"""

from __future__ import annotations

from functools import lru_cache

from tensorcomp.opdef import Op

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


def _squash_lines(s: str, q: str, v: str, lead: str) -> list[str]:
    return [f"{q}[{lead}] += {s}[{lead}, d] * {s}[{lead}, d]",
            f"{v}[{lead}, d] = {s}[{lead}, d] * {q}[{lead}] / ((1 + {q}[{lead}]) * sqrt({q}[{lead}] + 1e-9))"]


def dynamic_routing_source(iterations: int = 3) -> str:
    """Routing by agreement (Sabour et al. 2017) over votes ``U[n, i, j, d]`` -> ``V[n, j, d]``.

    Iteration t: ``c[n, i, :] = softmax(b[n, i, :])``, ``s[n, j] = sum_i c[n, i, j] u[n, i, j]``,
    ``v = squash(s)``, then ``b += u . v``; logits start at 0, so the first coupling is the
    scalar parameter ``inv_j`` (1 / number of output capsules). Unrolled into statements, so the
    gradient flows through every iteration and is derived like any other op's.
    """
    if iterations < 1:
        raise ValueError(f"dynamic routing needs at least one iteration, got {iterations}")
    last = iterations - 1
    name = lambda base, t: "V" if (base == "V" and t == last) else f"{base}{t}"  # noqa: E731
    lines = ["S0[n, j, d] += U[n, i, j, d] * inv_j", *_squash_lines("S0", "Q0", name("V", 0), "n, j")]
    for t in range(1, iterations):
        prev = name("V", t - 1)
        lines.append(f"A{t}[n, i, j] += U[n, i, j, d] * {prev}[n, j, d]")
        logits = f"A{t}[n, i, j]" if t == 1 else f"(B{t - 1}[n, i, j] + A{t}[n, i, j])"
        if t < last:
            lines.append(f"B{t}[n, i, j] = {logits}")
            logits = f"B{t}[n, i, j]"
        lines += [f"M{t}[n, i] = max({logits})",
                  f"E{t}[n, i, j] = exp({logits} - M{t}[n, i])",
                  f"Z{t}[n, i] += E{t}[n, i, j]",
                  f"S{t}[n, j, d] += E{t}[n, i, j] / Z{t}[n, i] * U[n, i, j, d]",
                  *_squash_lines(f"S{t}", f"Q{t}", name("V", t), "n, j")]
    return "\n".join(lines)


@lru_cache(maxsize=None)
def dynamic_routing(iterations: int = 3) -> Op:
    """The routing op of :func:`dynamic_routing_source`: ``op(U, inv_j=1/J)``."""
    return Op(dynamic_routing_source(iterations))


def em_routing_source(iterations: int, out_caps: int) -> str:
    """EM routing (Hinton et al. 2018) of votes ``V[n, i, j, h]`` with activations ``A[n, i]``.

    Per iteration: M-step ``R' = R * a``, ``mu = sum_i R' V / sum_i R'``, ``sigma^2 = sum_i R'
    (V - mu)^2 / sum_i R' + eps``, ``cost_h = (beta_u + log sigma) * sum_i R'``, ``a_out =
    sigmoid(lam * (beta_a - sum_h cost_h))``; E-step (all but the last iteration) ``R =
    softmax_j(log a_out + log N(V; mu, sigma^2))``. ``R`` starts uniform (1 / out_caps).
    The cost is taken per unit of assigned mass (divided by ``sum_i R'``'s mean over j), as
    common implementations do to keep the sigmoid out of saturation. Inputs, in order: A[n, i],
    V, BU[j], BA[j]; outputs: activations ``AO[n, j]`` and poses ``POSE[n, j, h]``; parameter
    ``lam`` (the inverse temperature).
    """
    if iterations < 1:
        raise ValueError(f"EM routing needs at least one iteration, got {iterations}")
    lines = []
    last = iterations - 1
    for t in range(iterations):
        r = repr(1.0 / out_caps) if t == 0 else f"R{t}[n, i, j]"
        mu = f"MU{t}"
        ao = "AO" if t == last else f"AO{t}"
        lines += [
            f"W{t}[n, i, j] = {r} * A[n, i]",
            f"D{t}[n, j] += W{t}[n, i, j]",
            f"K{t}[n] += D{t}[n, j] * {1.0 / out_caps!r}",
            f"{mu}[n, j, h] += W{t}[n, i, j] * V[n, i, j, h] / (D{t}[n, j] + 1e-6)",
            f"G{t}[n, j, h] += W{t}[n, i, j] * (V[n, i, j, h] - {mu}[n, j, h]) ** 2 / (D{t}[n, j] + 1e-6)",
            f"C{t}[n, j] += (BU[j] + 0.5 * log(G{t}[n, j, h] + 1e-4)) * D{t}[n, j] / (K{t}[n] + 1e-6)",
            f"{ao}[n, j] = sigmoid(lam * (BA[j] - C{t}[n, j]))",
        ]
        if t < last:
            lines += [
                f"P{t}[n, i, j] += -(V[n, i, j, h] - {mu}[n, j, h]) ** 2 / (2 * (G{t}[n, j, h] + 1e-4)) "
                f"- 0.5 * log(G{t}[n, j, h] + 1e-4)",
                f"L{t}[n, i, j] = log({ao}[n, j] + 1e-6) + P{t}[n, i, j]",
                f"X{t}[n, i] = max(L{t}[n, i, j])",
                f"Y{t}[n, i, j] = exp(L{t}[n, i, j] - X{t}[n, i])",
                f"Z{t}[n, i] += Y{t}[n, i, j]",
                f"R{t + 1}[n, i, j] = Y{t}[n, i, j] / Z{t}[n, i]",
            ]
    lines.append(f"POSE[n, j, h] = MU{last}[n, j, h]")
    return "\n".join(lines)


@lru_cache(maxsize=None)
def em_routing(iterations: int, out_caps: int) -> Op:
    """The routing op of :func:`em_routing_source`: ``AO, POSE = op(A, V, BU, BA, lam=...)``."""
    return Op(em_routing_source(iterations, out_caps), ranges={"j": out_caps})


@lru_cache(maxsize=None)
def capsule_length() -> Op:
    """``L[n, j] = |V[n, j, :]|`` (the class score of a capsule network with dynamic routing)."""
    return Op("Q[n, j] += V[n, j, d] * V[n, j, d]\nL[n, j] = sqrt(Q[n, j] + 1e-9)")


@lru_cache(maxsize=None)
def margin_loss() -> Op:
    """Sabour et al.'s margin loss on capsule lengths ``L[n, j]`` and integer labels ``T[n]``, mean over n:
    ``T_j relu(m_plus - L_j)^2 + lam (1 - T_j) relu(L_j - m_minus)^2`` summed over j."""
    return Op("Loss += where(T[n] == j, relu(m_plus - L[n, j]) ** 2, lam * relu(L[n, j] - m_minus) ** 2) * inv_n")


@lru_cache(maxsize=None)
def spread_loss() -> Op:
    """Hinton et al.'s spread loss on activations ``A[n, j]`` and labels ``T[n]``, mean over n:
    ``sum_{j != t} relu(margin - (a_t - a_j))^2``."""
    return Op("AT[n] += where(T[n] == j, A[n, j], 0.0)\n"
              "Loss += where(T[n] == j, 0.0, relu(margin - (AT[n] - A[n, j])) ** 2) * inv_n")
