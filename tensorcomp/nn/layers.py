"""The layers, losses and activations: each forward an index expression, each backward derived."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from .. import ops
from ..errors import ArgumentError, IndexRangeError, ShapeError
from ..opdef import Op
from ..recurrence import op as recurrence_op
from ..tensor import Tensor, apply, drawn, no_grad, read_flag
from .module import Buffer, Module, Parameter, _check_input, _rng, _uniform, positive_int


@lru_cache(maxsize=None)
def _linear_op(bias: bool = True) -> Op:
    return Op("Y[n, o] += X[n, i] * W[o, i]\nZ[n, o] = Y[n, o] + B[o]" if bias else "Y[n, o] += X[n, i] * W[o, i]")


class Linear(Module):
    """``y = x W^T + b``, W of shape (out, in) as in PyTorch (Kaiming-uniform init)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        name = f"Linear({in_features!r}, {out_features!r})"
        self.in_features = positive_int(name, "in_features", in_features)
        self.out_features = positive_int(name, "out_features", out_features)
        if not isinstance(bias, (bool, np.bool_)):
            raise ArgumentError(f"{name}: bias must be True or False, got {bias!r}")
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(_rng[0], bound, (out_features, in_features)))
        self.bias = Parameter(_uniform(_rng[0], bound, (out_features,))) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        _check_input(f"Linear({self.in_features}, {self.out_features})", x, 2, 1, self.in_features)
        if self.bias is None:
            return apply(_linear_op(False), x, self.weight)
        return apply(_linear_op(), x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


@lru_cache(maxsize=None)
def _conv_op(rank: int, stride: tuple, padding: tuple, dilation: tuple, groups: int, channels_last: bool,
             in_channels: int, out_channels: int) -> Op:
    conv = ops.conv(rank, stride=stride, dilation=dilation, padding=padding, groups=groups,
                    channels_last=channels_last, in_channels=in_channels, out_channels=out_channels)
    ys = ", ".join(f"y{k}" for k in range(rank))
    out = f"n, {ys}, f" if channels_last else f"n, f, {ys}"
    src = conv.source.replace("O[", "C[", 1) + f"\nO[{out}] = C[{out}] + B[f]"
    return Op(src, pad=conv.pad_widths or None)


def _per_axis(value: Any, rank: int, what: str, layer: str, minimum: int = 1) -> tuple[int, ...]:
    """One int per spatial axis (``value``: an int for all, or ``rank`` ints), each >= ``minimum``."""
    out = (value,) * rank if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(out) != rank or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ArgumentError(f"{layer}: {what} must be an int or {rank} ints, got {value!r}")
    if any(v < minimum for v in out):
        raise ArgumentError(f"{layer}: {what} must be {'positive' if minimum else 'non-negative'}, got {value!r}")
    return out


class Conv(Module):
    """Convolution of any rank: input (N, C, spatial...) or, with ``channels_last``, (N, spatial..., C).

    Weight (F, C/groups, k...) as in PyTorch, or (k..., C/groups, F) with ``channels_last`` (the
    layout its kernel reads contiguously); stride, padding (zeros), dilation and groups per axis
    or for all. Kaiming-uniform initialisation as PyTorch's.
    """

    def __init__(self, rank: int, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, channels_last: bool = False) -> None:
        super().__init__()
        name = f"Conv{rank}d({in_channels!r}, {out_channels!r})"
        in_channels = positive_int(name, "in_channels", in_channels)
        out_channels = positive_int(name, "out_channels", out_channels)
        groups = positive_int(name, "groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ArgumentError(f"{name}: in_channels and out_channels must be divisible by groups={groups}")
        self.rank, self.in_channels, self.out_channels, self.groups = rank, in_channels, out_channels, groups
        self.kernel_size = _per_axis(kernel_size, rank, "kernel_size", name)
        self.stride = _per_axis(stride, rank, "stride", name)
        self.padding = _per_axis(padding, rank, "padding", name, minimum=0)
        self.dilation = _per_axis(dilation, rank, "dilation", name)
        self.channels_last = channels_last
        fan_in = in_channels // groups * int(np.prod(self.kernel_size))
        bound = 1 / math.sqrt(fan_in)
        shape = ((*self.kernel_size, in_channels // groups, out_channels) if channels_last
                 else (out_channels, in_channels // groups, *self.kernel_size))
        self.weight = Parameter(_uniform(_rng[0], bound, shape))
        self.bias = Parameter(_uniform(_rng[0], bound, (out_channels,)))

    def forward(self, x: Tensor) -> Tensor:
        axis = -1 if self.channels_last else 1
        _check_input(f"Conv{self.rank}d({self.in_channels}, {self.out_channels})", x, self.rank + 2,
                     axis % (self.rank + 2), self.in_channels)
        op = _conv_op(self.rank, self.stride, self.padding, self.dilation, self.groups, self.channels_last,
                      self.in_channels, self.out_channels)
        return apply(op, x, self.weight, self.bias)

    def extra_repr(self) -> str:
        k = self.kernel_size if self.rank > 1 else self.kernel_size[0]
        extra = "".join(f", {n}={v}" for n, v, d in (("stride", self.stride, 1), ("padding", self.padding, 0),
                                                     ("dilation", self.dilation, 1)) if any(x != d for x in v))
        extra += f", groups={self.groups}" if self.groups != 1 else ""
        extra += ", channels_last=True" if self.channels_last else ""
        return f"{self.in_channels}, {self.out_channels}, kernel_size={k}{extra}"


class Conv1d(Conv):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(1, *args, **kwargs)


class Conv2d(Conv):
    """2-D convolution over (N, C, H, W) input, weight (F, C, k, k) (PyTorch layouts), or channels-last."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(2, *args, **kwargs)

    def extra_repr(self) -> str:
        k = self.kernel_size[0] if len(set(self.kernel_size)) == 1 else self.kernel_size
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={self.stride[0]}, "
                f"padding={self.padding[0]}") if not (self.groups != 1 or self.channels_last or
                                                       any(d != 1 for d in self.dilation)) else super().extra_repr()


class Conv3d(Conv):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(3, *args, **kwargs)


class _Pool(Module):
    kind = "max"

    def __init__(self, rank: int, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 channels_last: bool = False) -> None:
        super().__init__()
        name = f"{type(self).__name__}"
        self.rank = rank
        self.kernel_size = _per_axis(kernel_size, rank, "kernel_size", name)
        self.stride = _per_axis(stride if stride is not None else kernel_size, rank, "stride", name)
        self.padding = _per_axis(padding, rank, "padding", name, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ArgumentError(f"{name}: padding {padding!r} is more than half of kernel_size {kernel_size!r}; a "
                                f"window could then hold padding only")
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.rank + 2:
            layout = "(N, spatial..., C)" if self.channels_last else "(N, C, spatial...)"
            raise ShapeError(f"{type(self).__name__}: expected an input of rank {self.rank + 2} {layout}, got "
                             f"shape {x.shape}")
        return apply(ops.pool(self.kind, self.rank, self.kernel_size, self.stride, self.padding,
                              self.channels_last), x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size[0] if self.rank == 1 else self.kernel_size}, stride={self.stride}"


class MaxPool(_Pool):
    """Max pooling of any rank (``rank`` first, then as PyTorch's MaxPoolNd)."""


class AvgPool(_Pool):
    """Average pooling of any rank (padding counts toward the window, as PyTorch's default)."""

    kind = "avg"


class MaxPool1d(MaxPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(1, *args, **kwargs)


class MaxPool2d(MaxPool):
    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, channels_last: bool = False) -> None:
        super().__init__(2, kernel_size, stride, padding, channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ShapeError(f"MaxPool2d: expected an input of rank 4 (N, C, H, W), got shape {x.shape}")
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size[0]}, stride={self.stride[0]}"


class MaxPool3d(MaxPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(3, *args, **kwargs)


class AvgPool1d(AvgPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(1, *args, **kwargs)


class AvgPool2d(AvgPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(2, *args, **kwargs)


class AvgPool3d(AvgPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(3, *args, **kwargs)


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


@lru_cache(maxsize=None)
def _embedding_op(rank: int) -> Op:
    i = ", ".join(f"i{k}" for k in range(rank))
    return Op(f"O[{i}, d] = W[T[{i}], d]")


class Embedding(Module):
    """A lookup table: integer indices of any shape -> their rows of ``weight`` (num, dim), N(0, 1)
    initialised as PyTorch's. Every index is checked (0 <= index < num); the weight's gradient is
    the scatter-add of the output's."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        for what, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ArgumentError(f"Embedding: {what} must be a positive int, got {v!r}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = Parameter(_rng[0].standard_normal((self.num_embeddings, self.embedding_dim)))

    def forward(self, indices: Any) -> Tensor:
        t = indices if isinstance(indices, Tensor) else Tensor(np.asarray(indices))
        if t.ndim == 0:
            return self.forward(t.reshape(1)).reshape(self.embedding_dim)
        return apply(_embedding_op(t.ndim), self.weight, t)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


@lru_cache(maxsize=None)
def _rnn_ops():
    # a recurrence (tensorcomp.recurrence): the initial state from H0, then one step per t, tanh of the
    # input and hidden projections; PyTorch's layouts (weight_ih (hidden, input), weight_hh (hidden, hidden))
    from ..recurrence import op as recurrence_op
    rnn = recurrence_op("""
        P0[n, j] += X[0, n, i] * Wih[j, i]
        Q0[n, j] += H0[n, k] * Whh[j, k]
        H[0, n, j] = tanh(P0[n, j] + Q0[n, j] + Bih[j] + Bhh[j])
        P[t, n, j] += X[t, n, i] * Wih[j, i]
        S[t, n, j] += H[t - 1, n, k] * Whh[j, k]
        H[t, n, j] = tanh(P[t, n, j] + S[t, n, j] + Bih[j] + Bhh[j])
    """)
    last = Op("HN[z, n, j] += where(t == last, H[t, n, j], 0.0)", ranges={"z": 1})
    return rnn, last


class RNN(Module):
    """An Elman RNN layer with tanh, PyTorch-shaped: input (T, N, input_size) and an initial state
    (N, hidden_size) or (1, N, hidden_size) (zeros when not given) -> (output (T, N, hidden_size), every
    step's state; h_n (1, N, hidden_size), the last). Weights and init as PyTorch's. It is one
    recurrence op, differentiated by back-propagation through the steps."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = positive_int("RNN", "input_size", input_size)
        self.hidden_size = positive_int("RNN", "hidden_size", hidden_size)
        bound = 1 / math.sqrt(self.hidden_size)
        self.weight_ih = Parameter(_uniform(_rng[0], bound, (self.hidden_size, self.input_size)))
        self.weight_hh = Parameter(_uniform(_rng[0], bound, (self.hidden_size, self.hidden_size)))
        self.bias_ih = Parameter(_uniform(_rng[0], bound, (self.hidden_size,)))
        self.bias_hh = Parameter(_uniform(_rng[0], bound, (self.hidden_size,)))

    def forward(self, x: Tensor, h0: Any = None) -> tuple[Tensor, Tensor]:
        name = f"RNN({self.input_size}, {self.hidden_size})"
        _check_input(name, x, 3, 2, self.input_size)
        n = x.shape[1]
        if h0 is None:
            h0 = Tensor(np.zeros((n, self.hidden_size), x.dtype))
        h0 = h0 if isinstance(h0, Tensor) else Tensor(h0)
        if h0.ndim == 3:
            h0 = h0.reshape(h0.shape[1:])
        if h0.shape != (n, self.hidden_size):
            raise ShapeError(f"{name}: the initial state must have shape ({n}, {self.hidden_size}) or (1, {n}, "
                             f"{self.hidden_size}), got {h0.shape}")
        rnn, last = _rnn_ops()
        out = apply(rnn, x, self.weight_ih, h0, self.weight_hh, self.bias_ih, self.bias_hh)
        return out, apply(last, out, last=x.shape[0] - 1)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class Flatten(Module):
    def forward(self, x: Tensor) -> Tensor:
        return apply(_flatten_op(tuple(x.shape[1:])), x)


class LogSoftmax(Module):
    def forward(self, x: Tensor) -> Tensor:
        return apply(ops.log_softmax(x.ndim, -1), x)


@lru_cache(maxsize=None)
def _nll_op() -> Op:
    # the log-probability at each label, looked up through the labels (each checked: 0 <= T[n] < C)
    return Op("L += -Y[n, T[n]] * inv_n")


class CrossEntropyLoss(Module):
    """Mean cross entropy of logits (N, C) against integer class targets (N,)."""

    def forward(self, logits: Tensor, target: Any) -> Tensor:
        t = _class_targets("CrossEntropyLoss", logits, target, "logits")
        logp = apply(ops.log_softmax(2, -1), logits)
        return apply(_nll_op(), logp, t, inv_n=1.0 / logits.shape[0])



class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return apply(ops.activation("sigmoid", x.ndim), x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return apply(ops.activation("tanh", x.ndim), x)


class Softmax(Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 0 or not -x.ndim <= self.dim < x.ndim:
            raise ShapeError(f"Softmax(dim={self.dim}): no axis {self.dim} in an input of shape {x.shape}")
        return apply(ops.softmax(x.ndim, self.dim), x)


class NLLLoss(Module):
    """Mean negative log-likelihood of log-probabilities (N, C) at integer targets (N,)."""

    def forward(self, logp: Tensor, target: Any) -> Tensor:
        t = _class_targets("NLLLoss", logp, target, "log-probabilities")
        return apply(_nll_op(), logp, t, inv_n=1.0 / logp.shape[0])


@lru_cache(maxsize=None)
def _mse_op(rank: int) -> Op:
    i = ", ".join(f"i{k}" for k in range(rank))
    return Op(f"L += (A[{i}] - B[{i}]) ** 2 * inv_count")


class MSELoss(Module):
    """Mean squared error over every element of two tensors of one shape."""

    def forward(self, prediction: Tensor, target: Any) -> Tensor:
        t = target if isinstance(target, Tensor) else Tensor(target, device=prediction.device)
        if t.shape != prediction.shape:
            raise ShapeError(f"MSELoss: prediction has shape {prediction.shape} but target has shape {t.shape}")
        return apply(_mse_op(prediction.ndim), prediction, t, inv_count=1.0 / max(1, int(np.prod(t.shape))))


def _class_targets(loss: str, scores: Tensor, target: Any, what: str = "scores") -> np.ndarray:
    """Integer class targets (N,) for scores (N, C), checked."""
    t = np.asarray(target.data if isinstance(target, Tensor) else target)
    if scores.ndim != 2:
        raise ShapeError(f"{loss}: expected {what} of rank 2 (N, C), got shape {scores.shape}")
    if t.shape != (scores.shape[0],) or t.dtype.kind not in "iu":
        raise ShapeError(f"{loss}: expected integer targets of shape ({scores.shape[0]},), got {t.dtype} of shape "
                         f"{t.shape}")
    classes = scores.shape[1]
    if t.size and (t.min() < 0 or t.max() >= classes):  # (a compiled step: the loss op checks them again)
        k = int(np.argmax((t < 0) | (t >= classes)))
        raise IndexRangeError(f"{loss}: target {k} is {int(t[k])}, not a class of the {classes} the {what} score; "
                              f"targets must lie in [0, {classes})")
    return t if t.dtype == np.int64 else t.astype(np.int64)


@lru_cache(maxsize=None)
def _dropout_op(rank: int) -> Op:
    i = ", ".join(f"i{k}" for k in range(rank))
    return Op(f"Y[{i}] = X[{i}] * M[{i}] * scale")


def _dropout_mask(shape: tuple[int, ...], p: float) -> np.ndarray:
    """1 where an element is kept (probability 1 - p), from the generator ``nn.manual_seed`` seeds."""
    return (_rng[0].random(shape) >= p).astype(np.float32)


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training (scaling the rest by 1/(1-p)); identity in
    eval. The mask comes from the generator that ``nn.manual_seed`` seeds."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p < 1:
            raise ArgumentError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        p = read_flag(self, "p", self.p)  # (a compiled step guards on it: p set later is traced again)
        if not self.training or p == 0:
            return x
        mask = Tensor(drawn(_dropout_mask, x.shape, p), device=x.device)  # (a compiled step draws anew)
        return apply(_dropout_op(x.ndim), x, mask, scale=1.0 / (1.0 - p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


@lru_cache(maxsize=None)
def _batchnorm_ops(rank: int, channels_last: bool) -> tuple[Op, Op, Op]:
    """(training forward with batch statistics out, eval forward, running-statistics update)."""
    idx = [f"i{k}" for k in range(rank)]
    axis = rank - 1 if channels_last else 1
    idx[axis] = "c"
    i = ", ".join(idx)
    train = Op(f"""
        M[c] += X[{i}] * inv_m
        V[c] += (X[{i}] - M[c]) ** 2 * inv_m
        Y[{i}] = (X[{i}] - M[c]) / sqrt(V[c] + eps) * G[c] + B[c]
        MEAN[c] = M[c]
        VAR[c] = V[c]
    """)
    evaluate = Op(f"Y[{i}] = (X[{i}] - RM[c]) / sqrt(RV[c] + eps) * G[c] + B[c]")
    update = Op("""
        RM2[c] = (1 - momentum) * RM[c] + momentum * MEAN[c]
        RV2[c] = (1 - momentum) * RV[c] + momentum * VAR[c] * unbias
    """)
    return train, evaluate, update


class BatchNorm(Module):
    """Batch normalisation over every axis but the channels (axis 1, or the last with ``channels_last``):
    batch statistics in training (running estimates updated with ``momentum``, the variance unbiased
    as PyTorch's), running estimates in eval; affine weight 1 and bias 0 at start."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, channels_last: bool = False) -> None:
        super().__init__()
        num_features = positive_int("BatchNorm", "num_features", num_features)
        for what, value, ok in (("eps", eps, lambda v: v > 0), ("momentum", momentum, lambda v: 0 <= v <= 1)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
                    not math.isfinite(value) or not ok(value):
                want = "a finite number > 0" if what == "eps" else "a number in [0, 1]"
                raise ArgumentError(f"BatchNorm: {what} must be {want}, got {value!r}")
        self.num_features, self.eps, self.momentum, self.channels_last = num_features, eps, momentum, channels_last
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.running_mean = Buffer(np.zeros(num_features, np.float32))
        self.running_var = Buffer(np.ones(num_features, np.float32))

    def forward(self, x: Tensor) -> Tensor:
        axis = x.ndim - 1 if self.channels_last else 1
        if x.ndim < 2 or x.shape[axis] != self.num_features:
            raise ShapeError(f"BatchNorm({self.num_features}): expected {self.num_features} channels on axis {axis}, "
                             f"got shape {x.shape}")
        train, evaluate, update = _batchnorm_ops(x.ndim, self.channels_last)
        eps, momentum = read_flag(self, "eps", self.eps), read_flag(self, "momentum", self.momentum)
        if not self.training:
            rm, rv = self.running_mean.to(x.device), self.running_var.to(x.device)
            return apply(evaluate, x, rm, rv, self.weight, self.bias, eps=eps)
        m = int(np.prod(x.shape)) // self.num_features
        if m == 0:
            raise ShapeError(f"BatchNorm({self.num_features}): cannot take batch statistics of an empty batch "
                             f"(input shape {x.shape})")
        if m == 1:
            raise ShapeError(f"BatchNorm({self.num_features}): expected more than 1 value per channel in training, "
                             f"got input shape {x.shape} (every output would be 0); use a larger batch or eval()")
        y, mean, var = apply(train, x, self.weight, self.bias, inv_m=1.0 / m, eps=eps)
        with no_grad():
            rm, rv = apply(update, self.running_mean.to(x.device), mean.detach(), self.running_var.to(x.device),
                           var.detach(), momentum=momentum, unbias=m / max(m - 1, 1))
        self.running_mean.data, self.running_var.data = rm.data, rv.data  # (the same state tensors)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(BatchNorm):
    pass


class BatchNorm2d(BatchNorm):
    pass


class BatchNorm3d(BatchNorm):
    pass
