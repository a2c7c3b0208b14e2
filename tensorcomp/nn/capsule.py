"""Capsule layers: primary capsules, dense capsules with dynamic routing, convolutional matrix
capsules with EM routing, and their losses. Every forward is an index-expression op (see
``tensorcomp.ops.capsule``); every backward is derived by ``tc.grad``.

A new capsule variant is a few lines of index expressions: for example votes shared across
positions with coordinate addition, routed by agreement::

    votes = tc.op("U[n, i, j, d] += X[n, i, k] * W[i % 8, j, d, k]")
    routed = tensorcomp.ops.capsule.dynamic_routing(3)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from .. import ops
from ..errors import ShapeError
from ..opdef import Op
from ..tensor import Tensor, apply, count_up
from .layers import Conv, _class_targets
from .module import Buffer, Module, Parameter, _check_input, _finite, _rng, _uniform, positive_int


@lru_cache(maxsize=None)
def _capsules_op(types: int, dim: int, oh: int, ow: int, channels_last: bool) -> Op:
    """Feature maps -> ``types`` squashed capsules of ``dim`` numbers per position."""
    chan = f"C[n, y, x, {dim}*t + d]" if channels_last else f"C[n, {dim}*t + d, y, x]"
    return Op(f"""
        U[n, {oh * ow}*t + {ow}*y + x, d] = {chan}
        S[n, i] += U[n, i, d] * U[n, i, d]
        O[n, i, d] = U[n, i, d] * S[n, i] / ((1 + S[n, i]) * sqrt(S[n, i] + 1e-9))
    """, ranges={"t": types, "d": dim})


class PrimaryCaps(Module):
    """A convolution whose ``types * dim`` output channels are read as ``types`` capsules of ``dim``
    numbers at every position, squashed: (N, C, H, W) -> (N, types * OH * OW, dim); with
    ``channels_last``, (N, H, W, C) in (the faster layout on a CPU: channels are contiguous)."""

    def __init__(self, in_channels: int, types: int, dim: int, kernel_size: int, stride: int = 1,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.in_channels, self.types, self.dim = in_channels, types, dim
        self.kernel_size, self.stride, self.channels_last = kernel_size, stride, channels_last
        self.conv = Conv(2, in_channels, types * dim, kernel_size, stride, channels_last=channels_last)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(f"PrimaryCaps({self.in_channels}, {self.types}x{self.dim})", x, 4,
                     3 if self.channels_last else 1, self.in_channels)
        spatial = x.shape[1:3] if self.channels_last else x.shape[2:]
        oh, ow = ((n - self.kernel_size) // self.stride + 1 for n in spatial)
        if oh < 1 or ow < 1:
            raise ShapeError(f"PrimaryCaps: input of shape {x.shape} is smaller than the {self.kernel_size}x"
                             f"{self.kernel_size} kernel")
        return apply(_capsules_op(self.types, self.dim, oh, ow, self.channels_last), self.conv(x))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, types={self.types}, dim={self.dim}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}" + (", channels_last=True" if self.channels_last else ""))


class DenseCaps(Module):
    """Fully connected capsules routed by agreement (Sabour et al. 2017):
    (N, in_caps, in_dim) -> (N, out_caps, out_dim)."""

    def __init__(self, in_caps: int, in_dim: int, out_caps: int, out_dim: int, iterations: int = 3) -> None:
        super().__init__()
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = in_caps, in_dim, out_caps, out_dim
        self.iterations = iterations
        self.weight = Parameter(0.05 * _rng[0].standard_normal((in_caps, out_caps, out_dim, in_dim)))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[1:] != (self.in_caps, self.in_dim):
            raise ShapeError(f"DenseCaps: expected input capsules of shape (N, {self.in_caps}, {self.in_dim}), "
                             f"got {x.shape}")
        votes = apply(ops.dense_votes(), x, self.weight)
        return apply(ops.capsule.dynamic_routing(self.iterations), votes, inv_j=1.0 / self.out_caps)

    def extra_repr(self) -> str:
        return (f"in_caps={self.in_caps}, in_dim={self.in_dim}, out_caps={self.out_caps}, out_dim={self.out_dim}, "
                f"iterations={self.iterations}")


class Squash(Module):
    """``v |v|^2 / ((1 + |v|^2) |v|)`` over the last axis."""

    def forward(self, x: Tensor) -> Tensor:
        return apply(ops.squash(x.ndim), x)


class Length(Module):
    """Capsule lengths over the last axis: (N, J, D) -> (N, J), the class scores."""

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3:
            raise ShapeError(f"Length: expected capsules of shape (N, J, D), got {x.shape}")
        return apply(ops.capsule.capsule_length(), x)


class MarginLoss(Module):
    """Sabour et al.'s margin loss on capsule lengths (N, C) and integer targets (N,), mean over N."""

    def __init__(self, m_plus: float = 0.9, m_minus: float = 0.1, lam: float = 0.5) -> None:
        super().__init__()
        for what, v in (("m_plus", m_plus), ("m_minus", m_minus), ("lam", lam)):
            _finite("MarginLoss", what, v)
        self.m_plus, self.m_minus, self.lam = m_plus, m_minus, lam

    def forward(self, lengths: Tensor, target: Any) -> Tensor:
        t = _class_targets("MarginLoss", lengths, target, "lengths")
        return apply(ops.capsule.margin_loss(), t, lengths, m_plus=self.m_plus, m_minus=self.m_minus, lam=self.lam,
                     inv_n=1.0 / lengths.shape[0])


@lru_cache(maxsize=None)
def _scheduled_spread_loss() -> Op:
    """``ops.capsule.spread_loss`` with the margin computed from the step counter S."""
    return Op("AT[n] += where(T[n] == j, A[n, j], 0.0)\n"
              "Loss += where(T[n] == j, 0.0, relu(m_min + (m_max - m_min) * min(1.0, S[0] * inv_steps) - "
              "(AT[n] - A[n, j])) ** 2) * inv_n")


class SpreadLoss(Module):
    """Hinton et al.'s spread loss on activations (N, C) and integer targets (N,), mean over N; the
    margin grows from ``m_min`` to ``m_max`` as ``step`` goes to ``steps`` (the steps counted in a
    tensor, so a compiled step counts them too)."""

    def __init__(self, m_min: float = 0.2, m_max: float = 0.9, steps: int = 1000) -> None:
        super().__init__()
        for what, v in (("m_min", m_min), ("m_max", m_max)):
            _finite("SpreadLoss", what, v)
        steps = positive_int("SpreadLoss", "steps", steps)
        self.m_min, self.m_max, self.steps = m_min, m_max, steps
        self.counter = Buffer(np.zeros(1, np.float32))

    @property
    def step(self) -> int:
        return int(self.counter.data[0])

    def margin(self) -> float:
        return self.m_min + (self.m_max - self.m_min) * min(1.0, self.step / max(self.steps, 1))

    def forward(self, activations: Tensor, target: Any) -> Tensor:
        t = _class_targets("SpreadLoss", activations, target, "activations")
        loss = apply(_scheduled_spread_loss(), t, activations, self.counter, m_min=self.m_min, m_max=self.m_max,
                     inv_steps=1.0 / max(self.steps, 1), inv_n=1.0 / activations.shape[0])
        if self.training:
            count_up(self.counter)
        return loss


@lru_cache(maxsize=None)
def _em_primary_op(types: int) -> Op:
    """1x1 convolution to ``types`` 4x4 poses and activations, channels-last capsules out."""
    return Op("""
        P[n, y, x, t, p, q] += I[n, c, y, x] * WP[t, p, q, c]
        Q[n, y, x, t, p, q] = P[n, y, x, t, p, q] + BP[t, p, q]
        G[n, y, x, t] += I[n, c, y, x] * WA[t, c]
        A[n, y, x, t] = sigmoid(G[n, y, x, t] + BA[t])
    """, ranges={"t": types})


class EMPrimaryCaps(Module):
    """Matrix capsules from feature maps: (N, C, H, W) -> poses (N, H, W, types, 4, 4) and
    activations (N, H, W, types)."""

    def __init__(self, in_channels: int, types: int) -> None:
        super().__init__()
        self.in_channels, self.types = in_channels, types
        bound = 1 / math.sqrt(in_channels)
        self.weight_pose = Parameter(_uniform(_rng[0], bound, (types, 4, 4, in_channels)))
        self.bias_pose = Parameter(_uniform(_rng[0], bound, (types, 4, 4)))
        self.weight_act = Parameter(_uniform(_rng[0], bound, (types, in_channels)))
        self.bias_act = Parameter(_uniform(_rng[0], bound, (types,)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_input(f"EMPrimaryCaps({self.in_channels}, {self.types})", x, 4, 1, self.in_channels)
        return apply(_em_primary_op(self.types), x, self.weight_pose, self.bias_pose, self.weight_act, self.bias_act)


@lru_cache(maxsize=None)
def window_votes_op(kernel: int, stride: int) -> Op:
    """Votes of each input capsule of a window for each output type, windows flattened:
    V[(n, y, x), (ky, kx, ci), co, (p, r)] and the matching input activations."""
    return Op(f"""
        V[n, y, x, ky, kx, ci, co, p, r] += I[n, {stride}*y + ky, {stride}*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]
        AW[n, y, x, ky, kx, ci] = A[n, {stride}*y + ky, {stride}*x + kx, ci]
    """, ranges={"ky": kernel, "kx": kernel})


class ConvCaps(Module):
    """Convolutional matrix capsules with EM routing (Hinton et al. 2018): poses (N, H, W, ci, 4, 4)
    and activations (N, H, W, ci) -> (N, OH, OW, co, 4, 4) and (N, OH, OW, co).

    Each output position routes the ``kernel*kernel*ci`` capsules of its own window (windows that
    overlap route independently, as most implementations do)."""

    def __init__(self, in_types: int, out_types: int, kernel_size: int = 3, stride: int = 1,
                 iterations: int = 3, lam: float = 0.01) -> None:
        super().__init__()
        self.in_types, self.out_types, self.kernel_size, self.stride = in_types, out_types, kernel_size, stride
        self.iterations, self.lam = iterations, lam
        self.weight = Parameter(0.5 * _rng[0].standard_normal((kernel_size, kernel_size, in_types, out_types, 4, 4)))
        self.beta_u = Parameter(np.zeros(out_types))
        self.beta_a = Parameter(np.zeros(out_types))

    def forward(self, poses: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        if poses.ndim != 6 or poses.shape[3:] != (self.in_types, 4, 4) or activations.shape != poses.shape[:4]:
            raise ShapeError(f"ConvCaps: expected poses (N, H, W, {self.in_types}, 4, 4) and activations "
                             f"(N, H, W, {self.in_types}), got {poses.shape} and {activations.shape}")
        votes, acts = apply(window_votes_op(self.kernel_size, self.stride), poses, self.weight, activations)
        n, oh, ow = votes.shape[:3]
        k = self.kernel_size * self.kernel_size * self.in_types
        v = votes.reshape(n * oh * ow, k, self.out_types, 16)
        a = acts.reshape(n * oh * ow, k)
        out_a, out_p = em_route(v, a, self.beta_u, self.beta_a, self.iterations, self.lam)
        return out_p.reshape(n, oh, ow, self.out_types, 4, 4), out_a.reshape(n, oh, ow, self.out_types)

    def extra_repr(self) -> str:
        return (f"{self.in_types}, {self.out_types}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"iterations={self.iterations}")


def em_route(votes: Tensor, activations: Tensor, beta_u: Tensor, beta_a: Tensor, iterations: int,
             lam: float = 0.01) -> tuple[Tensor, Tensor]:
    """EM routing of votes (B, I, J, 16) weighted by activations (B, I): (activations, poses) out."""
    op = ops.capsule.em_routing(iterations, votes.shape[2])
    return apply(op, activations, votes, beta_u, beta_a, lam=lam)


@lru_cache(maxsize=None)
def _class_votes_op(h: int, w: int) -> Op:
    """Class capsules: one transformation per input type shared across positions, with the scaled
    position added to the first two pose entries (coordinate addition)."""
    return Op(f"""
        V[n, y, x, ci, co, p, r] += I[n, y, x, ci, p, q] * W[ci, co, q, r]
        VC[n, {w}*{h}*ci + {w}*y + x, co, 4*p + r] = V[n, y, x, ci, co, p, r] + where(p == 0 and r == 3, (y + 0.5) / {h}, 0.0) + where(p == 1 and r == 3, (x + 0.5) / {w}, 0.0)
        AC[n, {w}*{h}*ci + {w}*y + x] = A[n, y, x, ci]
    """)


class ClassCaps(Module):
    """Class capsules over every position (N, H, W, ci, 4, 4) -> activations (N, classes), poses
    (N, classes, 4, 4), with transformations shared across positions and coordinate addition."""

    def __init__(self, in_types: int, classes: int, iterations: int = 3, lam: float = 0.01) -> None:
        super().__init__()
        self.in_types, self.classes, self.iterations, self.lam = in_types, classes, iterations, lam
        self.weight = Parameter(0.5 * _rng[0].standard_normal((in_types, classes, 4, 4)))
        self.beta_u = Parameter(np.zeros(classes))
        self.beta_a = Parameter(np.zeros(classes))

    def forward(self, poses: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        if poses.ndim != 6 or poses.shape[3:] != (self.in_types, 4, 4):
            raise ShapeError(f"ClassCaps: expected poses (N, H, W, {self.in_types}, 4, 4), got {poses.shape}")
        n, h, w = poses.shape[:3]
        votes, acts = apply(_class_votes_op(h, w), poses, self.weight, activations)
        out_a, out_p = em_route(votes, acts, self.beta_u, self.beta_a, self.iterations, self.lam)
        return out_a, out_p.reshape(n, self.classes, 4, 4)

    def extra_repr(self) -> str:
        return f"{self.in_types}, classes={self.classes}, iterations={self.iterations}"
