"""Optimizers whose updates are fused index-expression kernels."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import ArgumentError
from .opdef import Op
from .tensor import Tensor, _zeros_like, count_up, keep_state, reshape_array


@lru_cache(maxsize=None)
def _adam_op() -> Op:
    # one pass over each parameter: new moments and the updated value. The gradient is G + gwd * P
    # (L2 weight decay; AdamW decays P by wd instead); T is the step count (this step included), from
    # which the bias corrections are computed, so the step count lives in a tensor like the moments
    return Op("""
        M2[i] = b1 * M[i] + (1 - b1) * (G[i] + gwd * P[i])
        V2[i] = b2 * V[i] + (1 - b2) * (G[i] + gwd * P[i]) * (G[i] + gwd * P[i])
        P2[i] = P[i] * (1 - wd) - lr * sqrt(1 - b2 ** T[0]) / (1 - b1 ** T[0]) * (b1 * M[i] + (1 - b1) * (G[i] + gwd * P[i])) / (sqrt(b2 * V[i] + (1 - b2) * (G[i] + gwd * P[i]) * (G[i] + gwd * P[i])) + eps * sqrt(1 - b2 ** T[0]))
    """)


@lru_cache(maxsize=None)
def _sgd_op() -> Op:
    # buf <- momentum*buf + g' with g' = g + wd*p; step along buf, or along g' + momentum*buf (Nesterov)
    return Op("""
        B2[i] = momentum * B[i] + G[i] + wd * P[i]
        P2[i] = P[i] - lr * where(nesterov > 0, G[i] + wd * P[i] + momentum * (momentum * B[i] + G[i] + wd * P[i]), momentum * B[i] + G[i] + wd * P[i])
    """)


def _check(name: str, value: float, lo: float, hi: float | None = None, open_lo: bool = False) -> float:
    """A finite real hyperparameter in [lo, hi) (or (lo, ...) with ``open_lo``)."""
    rng = f"[{lo}, {hi})" if hi is not None else f"{'>' if open_lo else '>='} {lo}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentError(f"{name} must be a finite real number {rng}, got {value!r}")
    v = float(value)
    bad = v < lo or (open_lo and v == lo) or (hi is not None and v >= hi)
    if bad or not math.isfinite(v):
        raise ArgumentError(f"{name} must be a finite real number {rng}, got {value!r}")
    return v


def _parameters(optimizer: str, params: Any) -> list:
    """The parameters as a non-empty list of tensors that need gradients."""
    if isinstance(params, (Tensor, np.ndarray, dict, str)) or params is None or not hasattr(params, "__iter__"):
        raise ArgumentError(f"{optimizer}: params must be an iterable of parameters (model.parameters()), got "
                            f"{type(params).__name__}")
    out = list(params)
    if not out:
        raise ArgumentError(f"{optimizer}: got an empty parameter list")
    for k, p in enumerate(out):
        if not isinstance(p, Tensor):
            raise ArgumentError(f"{optimizer}: parameter {k} is a {type(p).__name__}, not a tensor; pass "
                                f"model.parameters() or tc.Tensor(..., requires_grad=True)")
        if p.dtype.kind != "f":
            raise ArgumentError(f"{optimizer}: parameter {k} has dtype {p.dtype}; parameters are floating point")
        first = next(j for j, q in enumerate(out) if q is p)
        if first != k:
            raise ArgumentError(f"{optimizer}: parameter {k} is parameter {first} again; each parameter is listed "
                                f"once (it would be updated twice per step)")
    return out


def _gradient(optimizer: str, k: int, p: Tensor) -> Any:
    """Parameter ``k``'s gradient, flat, of its dtype and shape (else an error: a parameter's dtype never
    changes under an update)."""
    g = p.grad
    if not hasattr(g, "shape") or not hasattr(g, "dtype"):
        raise ArgumentError(f"{optimizer}: the gradient of parameter {k} is a {type(g).__name__}; gradients are "
                            f"arrays of the parameter's dtype and shape (as backward() leaves them)")
    if tuple(g.shape) != tuple(p.shape) or g.dtype != p.dtype:
        raise ArgumentError(f"{optimizer}: the gradient of parameter {k} is {g.dtype} of shape {tuple(g.shape)} but "
                            f"the parameter is {p.dtype} of shape {tuple(p.shape)}")
    return reshape_array(g, (-1,))


def _state(p) -> Tensor:
    """A flat zero buffer beside parameter ``p`` (on its device), kept as state."""
    return keep_state(Tensor(_zeros_like(reshape_array(p.data, (-1,)))))


class Adam:
    """Adam (and AdamW with ``decoupled=True``); one fused kernel per parameter and step."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False) -> None:
        self.params = _parameters("Adam", params)
        self.lr = _check("Adam: lr", lr, 0.0, open_lo=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ArgumentError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.b1 = _check("Adam: betas[0]", betas[0], 0.0, 1.0)
        self.b2 = _check("Adam: betas[1]", betas[1], 0.0, 1.0)
        self.eps = _check("Adam: eps", eps, 0.0)
        self.wd = _check("Adam: weight_decay", weight_decay, 0.0)
        self.decoupled = decoupled
        self.steps = keep_state(Tensor(np.zeros(1, np.float32)))  # steps taken (a tensor: see _adam_op)
        self.m = [_state(p) for p in self.params]
        self.v = [_state(p) for p in self.params]

    @property
    def t(self) -> int:
        return int(self.steps.data[0])

    def step(self) -> None:
        count_up(self.steps)
        op = _adam_op()
        gwd = 0.0 if self.decoupled else self.wd
        wd = self.lr * self.wd if self.decoupled else 0.0
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            m, v = self.m[k], self.v[k]
            m.data, v.data, p2 = op(m.data, _gradient("Adam", k, p), reshape_array(p.data, (-1,)), v.data,
                                    self.steps.data, b1=self.b1, b2=self.b2, lr=self.lr, eps=self.eps, wd=wd, gwd=gwd)
            p.data = reshape_array(p2, p.shape)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def AdamW(params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> Adam:
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""
    return Adam(params, lr, betas, eps, weight_decay, decoupled=True)


class SGD:
    """SGD with momentum, Nesterov momentum and weight decay (PyTorch's formulation)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        self.params = _parameters("SGD", params)
        self.lr = _check("SGD: lr", lr, 0.0, open_lo=True)
        self.momentum = _check("SGD: momentum", momentum, 0.0)
        self.wd = _check("SGD: weight_decay", weight_decay, 0.0)
        if nesterov and self.momentum == 0:
            raise ArgumentError("SGD: nesterov=True needs a momentum > 0")
        self.nesterov = nesterov
        self.buf = [_state(p) for p in self.params]

    def step(self) -> None:
        op = _sgd_op()
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            buf = self.buf[k]
            buf.data, p2 = op(buf.data, _gradient("SGD", k, p), reshape_array(p.data, (-1,)), momentum=self.momentum,
                              wd=self.wd, lr=self.lr, nesterov=1.0 if self.nesterov else 0.0)
            p.data = reshape_array(p2, p.shape)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
