"""Optimizers whose updates are fused index-expression kernels."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import ArgumentError, ShapeError
from .opdef import Op
from .tensor import Tensor, _zeros_like, count_up, keep_state, reshape_array


@lru_cache(maxsize=None)
def _adam_op() -> Op:
    # one pass over each parameter: new moments and the updated value. The gradient is G + gwd * P
    # (L2 weight decay; AdamW decays P by wd instead); T is the step count (this step included), from
    # which the bias corrections are computed, so the step count lives in a tensor like the moments.
    # So do the hyperparameters, H = (b1, b2, lr, eps, wd, gwd): a compiled step reads them anew on
    # each call, and a new learning rate set between steps takes effect (see ``_Hyper``)
    return Op("""
        M2[i] = H[0] * M[i] + (1 - H[0]) * (G[i] + H[5] * P[i])
        V2[i] = H[1] * V[i] + (1 - H[1]) * (G[i] + H[5] * P[i]) * (G[i] + H[5] * P[i])
        P2[i] = P[i] * (1 - H[4]) - H[2] * sqrt(1 - H[1] ** T[0]) / (1 - H[0] ** T[0]) * (H[0] * M[i] + (1 - H[0]) * (G[i] + H[5] * P[i])) / (sqrt(H[1] * V[i] + (1 - H[1]) * (G[i] + H[5] * P[i]) * (G[i] + H[5] * P[i])) + H[3] * sqrt(1 - H[1] ** T[0]))
    """)


@lru_cache(maxsize=None)
def _sgd_op() -> Op:
    # buf <- momentum*buf + g' with g' = g + wd*p; step along buf, or along g' + momentum*buf (Nesterov);
    # H = (momentum, wd, lr, nesterov) in a tensor, as Adam's
    return Op("""
        B2[i] = H[0] * B[i] + G[i] + H[1] * P[i]
        P2[i] = P[i] - H[2] * where(H[3] > 0, G[i] + H[1] * P[i] + H[0] * (H[0] * B[i] + G[i] + H[1] * P[i]), H[0] * B[i] + G[i] + H[1] * P[i])
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
    for p in out:
        keep_state(p)  # (a tensor an optimizer updates lives across steps: a compiled step writes it back)
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
    """A zero buffer of parameter ``p``'s shape (on its device), kept as state. The update kernels
    read it, the parameter and its gradient as flat arrays, element ``i`` of each the same element
    of the parameter: in a compiled step all of them may live in another axis order together
    (``state_layouts``), so the moments have the parameter's shape, not a flat one."""
    return keep_state(Tensor(_zeros_like(p.data)))


def _flat(a: Any) -> Any:
    return reshape_array(a, (-1,))


class _Hyper:
    """A hyperparameter (``lr``, ``momentum``, ...): checked when set, and kept, with the optimizer's
    others, in a small tensor its update kernel reads (``_Optimizer.hyper``). A compiled step reads
    that tensor anew on each call, so a value set between steps (a learning-rate schedule) takes
    effect at the next step, compiled or not; a plain scalar would be a constant of the program."""

    def __init__(self, label: str, lo: float, hi: float | None = None, open_lo: bool = False) -> None:
        self.label, self.lo, self.hi, self.open_lo = label, lo, hi, open_lo

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else obj._values[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj._values[self.name] = _check(f"{obj._name}: {self.label}", value, self.lo, self.hi, self.open_lo)
        obj._refresh()


class _Flag(_Hyper):
    """A yes/no hyperparameter (AdamW's decoupled decay, Nesterov momentum), kept as ``_Hyper``."""

    def __init__(self) -> None:
        pass

    def __set__(self, obj: Any, value: Any) -> None:
        if not isinstance(value, (bool, np.bool_, int, np.integer)) or value not in (0, 1):
            raise ArgumentError(f"{obj._name}: {self.name} must be True or False, got {value!r}")
        obj._values[self.name] = bool(value)
        obj._refresh()


class _Optimizer:
    """What every optimizer shares: clearing gradients and its state as a dict of arrays."""

    params: list
    _name = "optimizer"

    def _named_state(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _vector(self) -> list[float]:
        """The hyperparameters in the order the update op reads them (``H[k]``)."""
        raise NotImplementedError

    def _setup(self, params: Any) -> None:
        self.params = _parameters(self._name, params)
        self._values: dict[str, Any] = {}
        self._hyper: dict[np.dtype, Tensor] = {}

    def _refresh(self) -> None:
        """Write the hyperparameters into the tensors the updates read (one per parameter dtype), once
        every one is set."""
        try:
            values = self._vector()
        except KeyError:  # (still being set up)
            return
        for p in self.params:
            t = self._hyper.get(p.dtype)
            if t is None:
                t = self._hyper[p.dtype] = keep_state(Tensor(np.zeros(len(values), p.dtype), device=p.device))
            t.data = Tensor(np.asarray(values, p.dtype), device=t.device).data

    def hyper(self, p: Tensor) -> Any:
        """The hyperparameter tensor's data for parameter ``p``'s dtype."""
        return self._hyper[p.dtype].data

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (or, with ``set_to_none=False``, set it to zeros)."""
        if not isinstance(set_to_none, (bool, np.bool_)):
            raise ArgumentError(f"{type(self).__name__}.zero_grad: set_to_none must be True or False, got "
                                f"{set_to_none!r}")
        for p in self.params:
            p.grad = None if set_to_none or p.grad is None else _zeros_like(p.grad)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's state (moments, step count) by name, as arrays (copies)."""
        return {name: np.array(t.numpy()) for name, t in self._named_state().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the state from ``state`` (as ``state_dict`` gives, for the same parameters)."""
        name = type(self).__name__
        if not isinstance(state, dict):
            raise ArgumentError(f"{name}.load_state_dict: expected a dict of name -> array (as state_dict() gives), "
                                f"got {type(state).__name__}")
        own = self._named_state()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own), key=str)
        if missing or unexpected:
            raise ArgumentError(f"{name}.load_state_dict: missing {missing or 'nothing'}, unexpected "
                                f"{unexpected or 'nothing'} (a state dict of an optimizer over other parameters?)")
        for key, t in own.items():
            value = state[key].numpy() if isinstance(state[key], Tensor) else state[key]
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                raise ArgumentError(f"{name}.load_state_dict: {key} must be a numeric array, got "
                                    f"{type(value).__name__}")
            if value.shape != t.shape:
                raise ShapeError(f"{name}.load_state_dict: {key} has shape {value.shape} but the optimizer's is "
                                 f"{t.shape}")
        for key, t in own.items():
            t.data = Tensor(np.asarray(state[key].numpy() if isinstance(state[key], Tensor) else state[key],
                                       t.dtype), device=t.device).data


class Adam(_Optimizer):
    """Adam (and AdamW with ``decoupled=True``); one fused kernel per parameter and step."""

    _name = "Adam"
    lr = _Hyper("lr", 0.0, open_lo=True)
    b1 = _Hyper("betas[0]", 0.0, 1.0)
    b2 = _Hyper("betas[1]", 0.0, 1.0)
    eps = _Hyper("eps", 0.0)
    wd = _Hyper("weight_decay", 0.0)
    decoupled = _Flag()

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False) -> None:
        self._setup(params)
        self.decoupled = decoupled
        self.lr = lr
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ArgumentError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.b1, self.b2 = betas
        self.eps = eps
        self.wd = weight_decay
        self.steps = keep_state(Tensor(np.zeros(1, np.float32)))  # steps taken (a tensor: see _adam_op)
        self.m = [_state(p) for p in self.params]
        self.v = [_state(p) for p in self.params]

    def _vector(self) -> list[float]:
        v = self._values
        wd = v["lr"] * v["wd"] if v["decoupled"] else 0.0  # (AdamW: the parameter decays by lr * wd)
        return [v["b1"], v["b2"], v["lr"], v["eps"], wd, 0.0 if v["decoupled"] else v["wd"]]

    @property
    def t(self) -> int:
        return int(self.steps.data[0])

    def _named_state(self) -> dict[str, Tensor]:
        out = {"steps": self.steps}
        for k, (m, v) in enumerate(zip(self.m, self.v)):
            out[f"exp_avg.{k}"], out[f"exp_avg_sq.{k}"] = m, v
        return out

    def step(self) -> None:
        count_up(self.steps)
        op = _adam_op()
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            m, v = self.m[k], self.v[k]
            m2, v2, p2 = op(self.hyper(p), _flat(m.data), _gradient("Adam", k, p), _flat(p.data), _flat(v.data),
                            self.steps.data)
            m.data, v.data, p.data = (reshape_array(a, p.shape) for a in (m2, v2, p2))



def AdamW(params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> Adam:
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""
    return Adam(params, lr, betas, eps, weight_decay, decoupled=True)


class SGD(_Optimizer):
    """SGD with momentum, Nesterov momentum and weight decay (PyTorch's formulation)."""

    _name = "SGD"
    lr = _Hyper("lr", 0.0, open_lo=True)
    momentum = _Hyper("momentum", 0.0)
    wd = _Hyper("weight_decay", 0.0)
    nesterov = _Flag()

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        self._setup(params)
        self.lr, self.momentum, self.wd = lr, momentum, weight_decay
        if nesterov and self.momentum == 0:
            raise ArgumentError("SGD: nesterov=True needs a momentum > 0")
        self.nesterov = nesterov
        self.buf = [_state(p) for p in self.params]

    def _vector(self) -> list[float]:
        v = self._values
        return [v["momentum"], v["wd"], v["lr"], 1.0 if v["nesterov"] else 0.0]

    def _named_state(self) -> dict[str, Tensor]:
        return {f"momentum_buffer.{k}": b for k, b in enumerate(self.buf)}

    def step(self) -> None:
        op = _sgd_op()
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            buf = self.buf[k]
            b2, p2 = op(self.hyper(p), _flat(buf.data), _gradient("SGD", k, p), _flat(p.data))
            buf.data, p.data = reshape_array(b2, p.shape), reshape_array(p2, p.shape)

