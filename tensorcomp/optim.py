"""Optimizers whose updates are fused index-expression kernels."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .errors import ArgumentError
from .opdef import Op
from .tensor import _zeros_like


@lru_cache(maxsize=None)
def _adam_op() -> Op:
    # one pass over each parameter: new moments and the updated value (bias correction folded into lr_t)
    return Op("""
        M2[i] = b1 * M[i] + (1 - b1) * G[i]
        V2[i] = b2 * V[i] + (1 - b2) * G[i] * G[i]
        P2[i] = P[i] * (1 - wd) - lr_t * (b1 * M[i] + (1 - b1) * G[i]) / (sqrt(b2 * V[i] + (1 - b2) * G[i] * G[i]) + eps_t)
    """)


@lru_cache(maxsize=None)
def _sgd_op() -> Op:
    # buf <- momentum*buf + g' with g' = g + wd*p; step along buf, or along g' + momentum*buf (Nesterov)
    return Op("""
        B2[i] = momentum * B[i] + G[i] + wd * P[i]
        P2[i] = P[i] - lr * where(nesterov > 0, G[i] + wd * P[i] + momentum * (momentum * B[i] + G[i] + wd * P[i]), momentum * B[i] + G[i] + wd * P[i])
    """)


def _check(name: str, value: float, lo: float, hi: float | None = None, open_lo: bool = False) -> float:
    v = float(value)
    bad = v < lo or (open_lo and v == lo) or (hi is not None and v >= hi)
    if bad or v != v:
        rng = f"({lo}, {hi})" if hi is not None else f"{'>' if open_lo else '>='} {lo}"
        raise ArgumentError(f"{name} must be {rng}, got {value!r}")
    return v


def _state(p) -> Any:
    """A flat zero buffer beside parameter ``p`` (on its device)."""
    return _zeros_like(p.data.reshape(-1))


class Adam:
    """Adam (and AdamW with ``decoupled=True``); one fused kernel per parameter and step."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False) -> None:
        self.params = list(params)
        if not self.params:
            raise ArgumentError("Adam: got an empty parameter list")
        self.lr = _check("Adam: lr", lr, 0.0, open_lo=True)
        self.b1 = _check("Adam: betas[0]", betas[0], 0.0, 1.0)
        self.b2 = _check("Adam: betas[1]", betas[1], 0.0, 1.0)
        self.eps = _check("Adam: eps", eps, 0.0)
        self.wd = _check("Adam: weight_decay", weight_decay, 0.0)
        self.decoupled = decoupled
        self.t = 0
        self.m = [_state(p) for p in self.params]
        self.v = [_state(p) for p in self.params]

    def step(self) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        lr_t = self.lr * np.sqrt(c2) / c1
        eps_t = self.eps * np.sqrt(c2)
        op = _adam_op()
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.reshape(-1)
            if self.wd and not self.decoupled:
                g = g + self.wd * p.data.reshape(-1)
            wd = self.lr * self.wd if self.decoupled else 0.0
            m2, v2, p2 = op(self.m[k], g, self.v[k], p.data.reshape(-1), b1=self.b1, b2=self.b2, lr_t=lr_t,
                            eps_t=eps_t, wd=wd)
            self.m[k], self.v[k] = m2, v2
            p.data = p2.reshape(p.shape)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def AdamW(params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> Adam:
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""
    return Adam(params, lr, betas, eps, weight_decay, decoupled=True)


class SGD:
    """SGD with momentum, Nesterov momentum and weight decay (PyTorch's formulation)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        self.params = list(params)
        if not self.params:
            raise ArgumentError("SGD: got an empty parameter list")
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
            b2, p2 = op(self.buf[k], p.grad.reshape(-1), p.data.reshape(-1), momentum=self.momentum, wd=self.wd,
                        lr=self.lr, nesterov=1.0 if self.nesterov else 0.0)
            self.buf[k] = b2
            p.data = p2.reshape(p.shape)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
