"""Parameters, ``Module`` (parameters, state dicts, train/eval, devices) and ``Sequential``."""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from ..errors import ArgumentError, ShapeError, TensorcompError
from ..tensor import Tensor, keep_state, read_flag


class Parameter(Tensor):
    """A tensor that a Module owns and an optimizer updates (state: a compiled step reads it and
    writes its new value back)."""

    def __init__(self, data: Any) -> None:
        super().__init__(np.asarray(data, dtype=np.float32), requires_grad=True)
        keep_state(self)


class Buffer(Tensor):
    """A tensor a Module keeps across steps without a gradient (running statistics, counters): in the
    state dict beside the parameters, never updated by an optimizer."""

    def __init__(self, data: Any) -> None:
        super().__init__(data)
        keep_state(self)


class Module:
    """Base class: ``forward``, parameters, train/eval, zero_grad, state dicts."""

    def __init__(self) -> None:
        self.training = True

    @property
    def training(self) -> bool:
        """Whether the module is in training mode (dropout drops, batch norm uses batch statistics). A
        compiled step that read it replays only in the mode it was traced in (another mode: traced
        again)."""
        return read_flag(self, "training", self.__dict__.get("_training", True))

    @training.setter
    def training(self, mode: bool) -> None:
        self.__dict__["_training"] = bool(mode)

    def forward(self, *args: Any) -> Tensor:
        raise NotImplementedError

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if args and not isinstance(args[0], (Tensor, np.ndarray)):
            raise ArgumentError(f"{type(self).__name__}: the input must be a tc.Tensor or a numpy array, got "
                                f"{type(args[0]).__name__}; wrap it: tc.Tensor(np.asarray(x, np.float32))")
        try:
            return self.forward(*args, **kwargs)
        except TypeError as exc:
            if exc.__traceback__ is not None and exc.__traceback__.tb_next is None and \
                    not isinstance(exc, TensorcompError):  # the call itself did not bind: wrong arguments
                raise ArgumentError(f"{type(self).__name__}: {exc}") from None
            raise

    def _named(self, kind: type, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every attribute of type ``kind`` here and in submodules (also in lists), by dotted name."""
        for name, value in vars(self).items():
            if isinstance(value, kind):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value._named(kind, f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)):
                for k, v in enumerate(value):
                    if isinstance(v, Module):
                        yield from v._named(kind, f"{prefix}{name}.{k}.")

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        return self._named(Parameter, prefix)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Buffer]]:
        return self._named(Buffer, prefix)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def children(self) -> Iterator["Module"]:
        for value in vars(self).values():
            if isinstance(value, Module):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, Module))

    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, (bool, np.bool_)):
            raise ArgumentError(f"{type(self).__name__}.train: mode must be True or False, got {mode!r}")
        self.training = bool(mode)
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, device: str) -> "Module":
        """Move every parameter to ``device`` ('cpu' or 'cuda'), in place; returns self."""
        for p in self.parameters():
            p.data = p.to(device).data
            p.grad = None
        return self

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter and buffer (BatchNorm's running statistics) by name, as arrays (copies)."""
        return OrderedDict((name, np.array(p.numpy())) for name, p in self._named_state())

    def _named_state(self) -> list[tuple[str, Tensor]]:
        return [*self.named_parameters(), *self.named_buffers()]

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Set parameters and buffers from ``state`` (as ``state_dict`` gives); with ``strict``, its keys
        must be exactly the module's, else keys missing from it are left as they are and extra ones
        ignored."""
        if not isinstance(state, dict):
            raise ArgumentError(f"load_state_dict: expected a dict of parameter name -> array (as state_dict() "
                                f"gives), got {type(state).__name__}")
        if not isinstance(strict, bool):
            raise ArgumentError(f"load_state_dict: strict must be True or False, got {strict!r}")
        own = dict(self._named_state())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own), key=str)
        if strict and (missing or unexpected):
            raise ArgumentError(f"load_state_dict: missing {missing or 'nothing'}, unexpected "
                                f"{unexpected or 'nothing'}")
        for name, p in own.items():
            if name not in state:
                continue
            value = state[name]
            value = value.numpy() if isinstance(value, Tensor) else value
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                of = f" of {value.dtype}" if hasattr(value, "dtype") else ""
                raise ArgumentError(f"load_state_dict: {name} must be a numeric array, got {type(value).__name__}{of}")
            if value.shape != p.shape:
                raise ShapeError(f"load_state_dict: {name} has shape {value.shape} but the module's is {p.shape}")
            p.data = Tensor(value.astype(p.dtype), device=p.device).data

    def save(self, path: str) -> None:
        """Parameters and buffers to a ``.npz`` file (``load`` reads it back)."""
        if not isinstance(path, (str, os.PathLike)):
            raise ArgumentError(f"Module.save: path must be a str or path, got {type(path).__name__}")
        try:
            np.savez(path, **self.state_dict())
        except OSError as exc:
            raise ArgumentError(f"Module.save: cannot write {path} ({type(exc).__name__}: {exc.strerror or exc}); "
                                f"give a path in a writable directory") from None

    def load(self, path: str) -> None:
        """Parameters from a ``.npz`` file ``save`` wrote (a missing, damaged or foreign file is an error
        naming it)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise ArgumentError(f"Module.load: {path} holds one array, not a state dict; save one with "
                                        f"module.save(path)")
                state = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise ArgumentError(f"Module.load: no file {path}") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ArgumentError(f"Module.load: {path} is not a readable .npz state dict ({type(exc).__name__}: "
                                f"{exc}); save one with module.save(path)") from None
        self.load_state_dict(state)

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
        for k, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise ArgumentError(f"Sequential: layer {k} is a {type(layer).__name__}, not a Module")
        self.layers = list(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def __getitem__(self, k: Any) -> Module:
        """Layer ``k`` (negative counts from the end), or a Sequential of the layers a slice selects."""
        if isinstance(k, slice):
            return Sequential(*self.layers[k])
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ArgumentError(f"Sequential: a layer index must be an int or a slice, got {k!r}")
        if not -len(self.layers) <= k < len(self.layers):
            raise ArgumentError(f"Sequential: layer {k} does not exist; it has {len(self.layers)} layers")
        return self.layers[k]


def _uniform(rng: np.random.Generator, bound: float, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(-bound, bound, shape).astype(np.float32)


_rng = [np.random.default_rng(0)]


def manual_seed(seed: int) -> None:
    """Seed the generator that initialises parameters."""
    _rng[0] = np.random.default_rng(seed)


def positive_int(layer: str, what: str, value: Any) -> int:
    """``value`` as an int >= 1, or an ArgumentError naming the layer and the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ArgumentError(f"{layer}: {what} must be a positive int, got {value!r}")
    return int(value)


def _finite(layer: str, what: str, value: Any) -> float:
    """``value`` as a finite float, or an ArgumentError naming the layer and the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not np.isfinite(value):
        raise ArgumentError(f"{layer}: {what} must be a finite number, got {value!r}")
    return float(value)


def _check_input(layer: str, x: Tensor, rank: int, axis: int, size: int) -> None:
    if x.ndim != rank:
        raise ShapeError(f"{layer}: expected an input of rank {rank}, got shape {x.shape}")
    if x.shape[axis] != size:
        raise ShapeError(f"{layer}: expected {size} features on axis {axis}, got shape {x.shape}")
