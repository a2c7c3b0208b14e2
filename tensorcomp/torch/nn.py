"""Capsule layers as ``torch.nn.Module``s whose forward (and derived backward) are tensorcomp ops.

A PyTorch CapsNet swaps its capsule layers for these in two lines::

    from tensorcomp.torch.nn import DenseCapsules, Squash
    self.digits = DenseCapsules(in_caps=1152, in_dim=8, out_caps=10, out_dim=16)   # votes + routing

The ops are those of ``tensorcomp.ops.capsule`` and ``tensorcomp.nn.capsule``, registered as torch
custom operators (``tensorcomp.torch``), so the layers train with torch's optimizers and run under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import torch

from .. import ops
from ..errors import ShapeError
from ..nn.capsule import window_votes_op
from . import wrap


class Squash(torch.nn.Module):
    """``v |v|² / ((1 + |v|²) |v|)`` over the last axis (Sabour et al. 2017) of a rank-``rank`` tensor."""

    def __init__(self, rank: int = 3) -> None:
        super().__init__()
        self.rank = rank
        self.op = wrap(ops.squash(rank))  # made here, not in forward: torch.compile traces forward only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.rank:
            raise ShapeError(f"Squash(rank={self.rank}): expected a rank-{self.rank} tensor, got shape "
                             f"{tuple(x.shape)}")
        return self.op(x)

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


class DenseCapsules(torch.nn.Module):
    """Fully connected capsules routed by agreement (Sabour et al. 2017): votes
    ``U[n, i, j, d] = W[i, j, d, :] · X[n, i, :]``, then ``iterations`` rounds of dynamic routing and
    squash: (N, in_caps, in_dim) -> (N, out_caps, out_dim)."""

    def __init__(self, in_caps: int, in_dim: int, out_caps: int, out_dim: int, iterations: int = 3) -> None:
        super().__init__()
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = in_caps, in_dim, out_caps, out_dim
        self.iterations = iterations
        self.weight = torch.nn.Parameter(0.05 * torch.randn(in_caps, out_caps, out_dim, in_dim))
        self.votes = wrap(ops.dense_votes())
        self.route = wrap(ops.capsule.dynamic_routing(iterations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.in_caps, self.in_dim):
            raise ShapeError(f"DenseCapsules: expected input capsules of shape (N, {self.in_caps}, {self.in_dim}), "
                             f"got {tuple(x.shape)}")
        return self.route(self.votes(x, self.weight), inv_j=1.0 / self.out_caps)

    def extra_repr(self) -> str:
        return f"{self.in_caps}x{self.in_dim} -> {self.out_caps}x{self.out_dim}, iterations={self.iterations}"


class ConvCapsules(torch.nn.Module):
    """Convolutional matrix capsules with EM routing (Hinton et al. 2018): poses (N, H, W, ci, 4, 4) and
    activations (N, H, W, ci) -> poses (N, OH, OW, co, 4, 4) and activations (N, OH, OW, co); each
    output position routes the capsules of its own window."""

    def __init__(self, in_types: int, out_types: int, kernel_size: int = 3, stride: int = 1,
                 iterations: int = 3, lam: float = 0.01) -> None:
        super().__init__()
        self.in_types, self.out_types, self.kernel_size, self.stride = in_types, out_types, kernel_size, stride
        self.iterations, self.lam = iterations, lam
        self.weight = torch.nn.Parameter(0.5 * torch.randn(kernel_size, kernel_size, in_types, out_types, 4, 4))
        self.beta_u = torch.nn.Parameter(torch.zeros(out_types))
        self.beta_a = torch.nn.Parameter(torch.zeros(out_types))
        self.votes = wrap(window_votes_op(kernel_size, stride))
        self.route = wrap(ops.capsule.em_routing(iterations, out_types))

    def forward(self, poses: torch.Tensor, activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if poses.ndim != 6 or tuple(poses.shape[3:]) != (self.in_types, 4, 4) or \
                tuple(activations.shape) != tuple(poses.shape[:4]):
            raise ShapeError(f"ConvCapsules: expected poses (N, H, W, {self.in_types}, 4, 4) and activations "
                             f"(N, H, W, {self.in_types}), got {tuple(poses.shape)} and {tuple(activations.shape)}")
        votes, acts = self.votes(poses, self.weight, activations)
        n, oh, ow = votes.shape[:3]
        k = self.kernel_size * self.kernel_size * self.in_types
        out_a, out_p = self.route(acts.reshape(n * oh * ow, k), votes.reshape(n * oh * ow, k, self.out_types, 16),
                             self.beta_u, self.beta_a, lam=self.lam)
        return out_p.reshape(n, oh, ow, self.out_types, 4, 4), out_a.reshape(n, oh, ow, self.out_types)

    def extra_repr(self) -> str:
        return (f"{self.in_types}, {self.out_types}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"iterations={self.iterations}")
