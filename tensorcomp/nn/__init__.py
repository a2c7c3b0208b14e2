"""A thin, PyTorch-shaped layer over ``tc.op`` and ``tc.grad``.

Every layer's forward is an index expression (from ``tensorcomp.ops`` or written here); every
backward is derived. Parameters are initialised as PyTorch initialises them by default.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache
from typing import Any, Iterator

import numpy as np

from .. import ops
from ..errors import ArgumentError, ShapeError
from ..op import Op
from ..tensor import Tensor, apply


class Parameter(Tensor):
    """A tensor that a Module owns and an optimizer updates."""

    def __init__(self, data: Any) -> None:
        super().__init__(np.asarray(data, dtype=np.float32), requires_grad=True)


class Module:
    """Base class: ``forward``, parameters, train/eval, zero_grad, state dicts."""

    def __init__(self) -> None:
        self.training = True

    def forward(self, *args: Any) -> Tensor:
        raise NotImplementedError

    def __call__(self, *args: Any) -> Tensor:
        return self.forward(*args)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)):
                for k, v in enumerate(value):
                    if isinstance(v, Module):
                        yield from v.named_parameters(f"{prefix}{name}.{k}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def children(self) -> Iterator["Module"]:
        for value in vars(self).values():
            if isinstance(value, Module):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, Module))

    def train(self, mode: bool = True) -> "Module":
        self.training = mode
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ArgumentError(f"load_state_dict: missing {missing or 'nothing'}, unexpected "
                                f"{unexpected or 'nothing'}")
        for name, p in own.items():
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ShapeError(f"load_state_dict: {name} has shape {value.shape} but the module's is {p.shape}")
            p.data = value.astype(p.dtype).copy()

    def save(self, path: str) -> None:
        np.savez(path, **self.state_dict())

    def load(self, path: str) -> None:
        with np.load(path) as z:
            self.load_state_dict({k: z[k] for k in z.files})

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        kids = [f"  ({name}): {repr(m).replace(chr(10), chr(10) + '  ')}" for name, m in vars(self).items()
                if isinstance(m, Module)]
        if isinstance(getattr(self, "layers", None), list):
            kids += [f"  ({k}): {repr(m).replace(chr(10), chr(10) + '  ')}" for k, m in enumerate(self.layers)]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(kids) + "\n)" if kids else ")")


class Sequential(Module):
    def __init__(self, *layers: Module) -> None:
        super().__init__()
        self.layers = list(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _uniform(rng: np.random.Generator, bound: float, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(-bound, bound, shape).astype(np.float32)


_rng = [np.random.default_rng(0)]


def manual_seed(seed: int) -> None:
    """Seed the generator that initialises parameters."""
    _rng[0] = np.random.default_rng(seed)


def _check_input(layer: str, x: Tensor, rank: int, axis: int, size: int) -> None:
    if x.ndim != rank:
        raise ShapeError(f"{layer}: expected an input of rank {rank}, got shape {x.shape}")
    if x.shape[axis] != size:
        raise ShapeError(f"{layer}: expected {size} features on axis {axis}, got shape {x.shape}")


@lru_cache(maxsize=None)
def _linear_op() -> Op:
    return Op("Y[n, o] += X[n, i] * W[o, i]\nZ[n, o] = Y[n, o] + B[o]")


class Linear(Module):
    """``y = x W^T + b``, W of shape (out, in) as in PyTorch (Kaiming-uniform init)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(_rng[0], bound, (out_features, in_features)))
        self.bias = Parameter(_uniform(_rng[0], bound, (out_features,)))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(f"Linear({self.in_features}, {self.out_features})", x, 2, 1, self.in_features)
        return apply(_linear_op(), x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


@lru_cache(maxsize=None)
def _conv_op(stride: int, padding: int) -> Op:
    conv = ops.conv(2, stride=stride)
    src = conv.source.replace("O[", "C[", 1) + "\nO[n, f, y0, y1] = C[n, f, y0, y1] + B[f]"
    pad = {"I": ((0, 0), (0, 0), (padding, padding), (padding, padding))} if padding else None
    return Op(src, pad=pad)


class Conv2d(Module):
    """2-D convolution over (N, C, H, W) input, weight (F, C, k, k) (channels-first, PyTorch layouts)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = Parameter(_uniform(_rng[0], bound, (out_channels, in_channels, kernel_size, kernel_size)))
        self.bias = Parameter(_uniform(_rng[0], bound, (out_channels,)))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(f"Conv2d({self.in_channels}, {self.out_channels})", x, 4, 1, self.in_channels)
        return apply(_conv_op(self.stride, self.padding), x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class MaxPool2d(Module):
    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride or kernel_size

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ShapeError(f"MaxPool2d: expected an input of rank 4 (N, C, H, W), got shape {x.shape}")
        return apply(ops.pool("max", 2, self.kernel_size, self.stride), x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return apply(ops.activation("relu", x.ndim), x)


@lru_cache(maxsize=None)
def _flatten_op(shape: tuple[int, ...]) -> Op:
    """(N, d1, d2, ...) -> (N, d1*d2*...) as an index expression (its gradient is the scatter back)."""
    idx = [f"i{k}" for k in range(len(shape))]
    flat, stride = [], 1
    for k in reversed(range(len(shape))):
        flat.append(idx[k] if stride == 1 else f"{stride}*{idx[k]}")
        stride *= shape[k]
    return Op(f"O[n, {' + '.join(reversed(flat))}] = X[n, {', '.join(idx)}]")


class Flatten(Module):
    def forward(self, x: Tensor) -> Tensor:
        return apply(_flatten_op(tuple(x.shape[1:])), x)


class LogSoftmax(Module):
    def forward(self, x: Tensor) -> Tensor:
        return apply(ops.log_softmax(x.ndim, -1), x)


@lru_cache(maxsize=None)
def _nll_op() -> Op:
    return Op("L += where(T[n] == c, -Y[n, c], 0.0) * inv_n")


class CrossEntropyLoss(Module):
    """Mean cross entropy of logits (N, C) against integer class targets (N,)."""

    def forward(self, logits: Tensor, target: Any) -> Tensor:
        t = np.asarray(target.data if isinstance(target, Tensor) else target)
        if logits.ndim != 2:
            raise ShapeError(f"CrossEntropyLoss: expected logits of rank 2 (N, C), got shape {logits.shape}")
        if t.shape != (logits.shape[0],) or t.dtype.kind not in "iu":
            raise ShapeError(f"CrossEntropyLoss: expected integer targets of shape ({logits.shape[0]},), got "
                             f"{t.dtype} of shape {t.shape}")
        logp = apply(ops.log_softmax(2, -1), logits)
        return apply(_nll_op(), t.astype(np.int64), logp, inv_n=1.0 / logits.shape[0])


from .capsule import (  # noqa: E402 - the capsule layers build on the classes above
    ClassCaps, ConvCaps, DenseCaps, EMPrimaryCaps, Length, MarginLoss, PrimaryCaps, SpreadLoss, Squash, em_route,
)
