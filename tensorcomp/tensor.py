"""``tc.Tensor``: an array with a gradient tape built only from ``tc.op`` and ``tc.grad``.

Every operation on tensors is an op (index expressions); applying it records a tape node. The
backward pass walks the tape in reverse and runs the *derived* gradient op of each node
(``tc.grad(op, wrt)``): no backward is written by hand anywhere.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from . import ops, opdef
from .autodiff import grad as derive
from .errors import ArgumentError, DeviceError, DtypeError, ShapeError
from .opdef import UPLOADS, Op
from .runtime import cuda

_grad_enabled = [True]
_grad_ops: dict[tuple[int, tuple[str, ...]], Op] = {}
# tensors whose data lives across steps (parameters, running statistics, optimizer state): a traced
# step (``tensorcomp.trace``) reads them as inputs and writes their new values back
# state tensors in the order they were marked (a trace lists them so: the same program text in every
# process, which the disk caches of ``tc.compile`` key on)
_STATE: "weakref.WeakKeyDictionary[Tensor, None]" = weakref.WeakKeyDictionary()
# while a step is traced: called with (tensor, what) before Python reads a tensor's value; raises
# when the value is one the trace computes (it would be a constant in the compiled step)
_VALUE_GUARDS: list = []
# while a step is traced: called with (array, make, args) when ``drawn`` makes random numbers
_DRAW_HOOKS: list = []
# while a step is traced: called with a tensor whose ``data`` is about to be replaced
_DATA_HOOKS: list = []
# while a step is traced: called with (owner, name, value) when Python reads a setting that selects the
# ops a step runs or their scalars (``Module.training``, Dropout's p, BatchNorm's eps and momentum): the
# compiled program replays only while the setting has that value
_FLAG_HOOKS: list = []


def read_flag(owner: Any, name: str, value: Any) -> Any:
    """``value``, the setting ``name`` of ``owner`` that Python is reading (a traced step guards on it)."""
    for hook in _FLAG_HOOKS:
        hook(owner, name, value)
    return value


def drawn(make: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
    """``make(*args)``: random numbers an op will read (a dropout mask). A traced step records how the
    array was made, not its values: each replay calls ``make(*args)`` again, drawing from the same
    generator in the same order as the eager step would. ``make`` is a module-level function (a
    compiled step stored on disk names it)."""
    if not callable(make):
        raise ArgumentError(f"tc.tensor.drawn: make must be a function returning an array, got "
                            f"{type(make).__name__}")
    a = make(*args)
    if not isinstance(a, np.ndarray):
        raise ArgumentError(f"tc.tensor.drawn: {getattr(make, '__qualname__', make)!s} returned a "
                            f"{type(a).__name__}; it must return a numpy array")
    for hook in _DRAW_HOOKS:
        hook(a, make, args)
    return a


def keep_state(t: "Tensor") -> "Tensor":
    """Mark ``t`` as state that lives across steps (a traced step reads and writes it back)."""
    _STATE.setdefault(t, None)
    return t


def state_tensors() -> list["Tensor"]:
    return list(_STATE.keys())


@functools.lru_cache(maxsize=None)
def _count_op() -> Op:
    return Op("C2[k] = C[k] + 1")


def count_up(counter: "Tensor") -> None:
    """Add one to a counter kept as state (an op, so a compiled step counts too)."""
    counter.data = _count_op()(counter.data)


def _read_value(t: "Tensor", what: str) -> None:
    if _VALUE_GUARDS:
        _VALUE_GUARDS[-1](t, what)


@functools.lru_cache(maxsize=None)
def _add_op(rank: int) -> Op:
    i = [f"i{k}" for k in range(rank)]
    return Op(f"{_access('O', i)} = {_access('A', i)} + {_access('B', i)}")


@functools.lru_cache(maxsize=None)
def _copy_op(rank: int) -> Op:
    i = [f"i{k}" for k in range(rank)]
    return Op(f"{_access('O', i)} = {_access('A', i)}")


def _sum(a: Any, b: Any) -> Any:
    """``a + b`` for two gradients of one tensor (an op while a step is traced, so the trace sees it)."""
    if opdef.recording() and a.ndim:
        return _add_op(a.ndim)(a, b)
    return a + b


def reshape_array(a: Any, shape: tuple) -> Any:
    """``a.reshape(shape)``; while a step is traced, a layout numpy can only reshape by copying is
    copied by an op first (so the trace sees the copy)."""
    if opdef.recording() and isinstance(a, np.ndarray) and a.ndim and not a.flags.c_contiguous:
        out = a.reshape(shape)
        if out.size and not np.may_share_memory(out, a):
            return _copy_op(a.ndim)(a).reshape(shape)
        return out
    return a.reshape(shape)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Run ops without recording them on the tape (evaluation, optimizer updates)."""
    _grad_enabled.append(False)
    try:
        yield
    finally:
        _grad_enabled.pop()


@dataclass(eq=False)
class _Node:
    op: Op
    inputs: tuple["Tensor", ...]
    params: dict[str, Any]
    outputs: list  # the op's output tensors (index = output position)
    view_back: Any = None  # for views (reshape, transpose): maps the output's gradient to the input's


def _on_device(a: Any) -> bool:
    return not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__")


def _to(a: Any, device: str, dtype: Any = None):
    """``a`` as an array on ``device`` ('cpu': numpy; 'cuda': a pycuda GPUArray)."""
    if device == "cuda":
        if _on_device(a) and (dtype is None or np.dtype(dtype) == a.dtype):
            return cuda.as_device(a)
        host = cuda.to_host(cuda.as_device(a)) if _on_device(a) else a
        dev = cuda.as_device(host := np.asarray(host, dtype=dtype))
        if UPLOADS:  # a traced step: a copy on each replay
            UPLOADS[-1](host, dev)
        return dev
    if device != "cpu":
        raise DeviceError(f"unknown device '{device}'; devices: cpu, cuda")
    if _on_device(a):
        a = cuda.to_host(cuda.as_device(a))
    return np.asarray(a, dtype=dtype)


def _zeros_like(a: Any):
    if _on_device(a):
        out = cuda.empty(tuple(a.shape), a.dtype)
        out.fill(0)
        return out
    return np.zeros_like(a)


def _ones_like(a: Any):
    if _on_device(a):
        out = cuda.empty(tuple(a.shape), a.dtype)
        out.fill(1)
        return out
    return np.ones_like(a)


class Tensor:
    """An array with ``requires_grad``, ``.grad`` and ``.backward()``: numpy on the CPU, or device
    memory with ``device="cuda"`` (then every op runs on the GPU and the data stays there)."""

    __array_priority__ = 100
    records_gradients = True  # an op called on a Tensor returns Tensors and records the call (``apply``)

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None, device: str | None = None) -> None:
        arr = data.data if isinstance(data, Tensor) else data
        if device is None:
            device = "cuda" if _on_device(arr) else "cpu"
        self.data = _to(arr, device, dtype)
        if self.data.dtype.kind not in "biuf":
            raise DtypeError(f"tc.Tensor: data of dtype {self.data.dtype} ({type(arr).__name__}); tensors hold bool, "
                             f"integer or floating-point numbers")
        if requires_grad and self.data.dtype.kind != "f":
            raise DtypeError(f"tc.Tensor: only floating-point tensors can require gradients, got {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad: Any = None
        self._node: _Node | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "data" and _DATA_HOOKS:
            _DATA_HOOKS[-1](self)
        object.__setattr__(self, name, value)

    @property
    def device(self) -> str:
        return "cuda" if _on_device(self.data) else "cpu"

    def __getstate__(self) -> dict:
        """(copy, deepcopy, pickle) The tensor's attributes and whether it is state: a copy of a
        parameter (``copy.deepcopy(model)``) is state too, which a compiled step reads and writes back."""
        return {**self.__dict__, "_kept": self in _STATE}

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        kept = state.pop("_kept", False)
        self.__dict__.update(state)
        if kept:
            keep_state(self)

    def to(self, device: str) -> "Tensor":
        """A copy on ``device`` ('cpu' or 'cuda'), or self when it is there already."""
        if device == self.device:
            return self
        return Tensor(_to(self.data, device), requires_grad=self.requires_grad)

    # -- numpy interop -------------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The data as a numpy array (copied from the device for CUDA tensors)."""
        _read_value(self, ".numpy()")
        return _to(self.data, "cpu") if _on_device(self.data) else self.data

    def __array__(self, dtype=None, copy=None):
        _read_value(self, "numpy.asarray()")
        data = _to(self.data, "cpu") if _on_device(self.data) else self.data
        return data if dtype is None else data.astype(dtype)

    def __dlpack__(self, *args, **kwargs):
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def _scalar(self, what: str) -> np.ndarray:
        _read_value(self, what)
        if self.data.size != 1:
            raise ShapeError(f"{what}: a tensor of shape {self.shape} ({self.data.size} elements) is not one number; "
                             f"reduce it first (.sum(), .mean()) or read it with .numpy()")
        return self.numpy()

    def item(self) -> float:
        return self._scalar(".item()").item()

    def __bool__(self) -> bool:
        return bool(self._scalar("bool()"))

    def __float__(self) -> float:
        return float(self._scalar("float()").reshape(()))

    def __int__(self) -> int:
        return int(self._scalar("int()").reshape(()))

    def _compare(self, other: Any, how: str) -> np.ndarray:
        _read_value(self, f"a comparison ({how})")
        if isinstance(other, Tensor):
            _read_value(other, f"a comparison ({how})")
            other = other.numpy()
        if not isinstance(other, (bool, int, float, np.number, np.bool_, np.ndarray)) or \
                (isinstance(other, np.ndarray) and other.dtype.kind not in "biuf"):
            raise ArgumentError(f"tc.Tensor comparison ({how.strip('_')}): cannot compare with a "
                                f"{type(other).__name__}; compare with a number, an array or a tensor")
        try:
            return getattr(self.numpy(), how)(other)
        except ValueError as exc:
            raise ShapeError(f"tc.Tensor comparison ({how.strip('_')}): shapes {self.shape} and "
                             f"{np.shape(other)} do not broadcast") from exc

    def __lt__(self, other: Any) -> np.ndarray:
        return self._compare(other, "__lt__")

    def __le__(self, other: Any) -> np.ndarray:
        return self._compare(other, "__le__")

    def __gt__(self, other: Any) -> np.ndarray:
        return self._compare(other, "__gt__")

    def __ge__(self, other: Any) -> np.ndarray:
        return self._compare(other, "__ge__")

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = ", device='cuda'" if self.device == "cuda" else ""
        _read_value(self, "repr()")
        return f"tc.Tensor({np.array2string(self.numpy(), threshold=20)}{grad}{dev})"

    # -- views --------------------------------------------------------------------------------------
    def _view(self, data: np.ndarray, back) -> "Tensor":
        out = Tensor(data, requires_grad=self.requires_grad and _grad_enabled[-1])
        if out.requires_grad:
            out._node = _Node(None, (self,), {}, [out], back)
        return out

    def reshape(self, *shape: Any) -> "Tensor":
        """The same elements in another shape (a view when numpy can make one)."""
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape):
            raise ArgumentError(f"reshape: the new shape must be ints, got {shape!r}")
        try:
            data = reshape_array(self.data, shape)
        except ValueError:
            raise ShapeError(f"reshape: cannot reshape a tensor of shape {self.shape} ({self.data.size} elements) "
                             f"into {shape}") from None
        old = self.shape
        return self._view(data, lambda g: reshape_array(g, old))

    def transpose(self, *axes: Any) -> "Tensor":
        """Axes permuted (reversed when none are given), as a view."""
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = axes or tuple(reversed(range(self.ndim)))
        if sorted(axes) != list(range(self.ndim)):
            raise ShapeError(f"transpose: axes {axes} are not a permutation of the {self.ndim} axes of a tensor of "
                             f"shape {self.shape}")
        inverse = tuple(np.argsort(axes))
        return self._view(self.data.transpose(axes), lambda g: g.transpose(inverse))

    @property
    def T(self) -> "Tensor":
        return self.transpose()

    def flatten(self, start_dim: int = 0) -> "Tensor":
        """Axes from ``start_dim`` on merged into one."""
        return self.reshape(*self.shape[:start_dim], -1)

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    # -- arithmetic (each an op; broadcasting as numpy's) -----------------------------------------------
    def _binary(self, other: Any, sym: str, reverse: bool = False) -> "Tensor":
        if self.ndim == 0:  # rank-0 operands take part as one-element vectors (a bare name is a parameter)
            return self.reshape(1)._binary(other, sym, reverse).reshape(
                () if not isinstance(other, Tensor) or other.ndim == 0 else other.shape)
        if isinstance(other, (int, float, np.integer, np.floating)) and not isinstance(other, bool):
            return apply(_scalar_op(sym, self.ndim, reverse), self, s=float(other))
        other = other if isinstance(other, Tensor) else Tensor(other, device=self.device)
        if other.ndim == 0:
            return self._binary(other.reshape(1), sym, reverse)
        a, b = (other, self) if reverse else (self, other)
        return apply(_binary_op(sym, tuple(a.shape), tuple(b.shape)), a, b)

    def __add__(self, other: Any) -> "Tensor":
        return self._binary(other, "+")

    def __radd__(self, other: Any) -> "Tensor":
        return self._binary(other, "+", True)

    def __sub__(self, other: Any) -> "Tensor":
        return self._binary(other, "-")

    def __rsub__(self, other: Any) -> "Tensor":
        return self._binary(other, "-", True)

    def __mul__(self, other: Any) -> "Tensor":
        return self._binary(other, "*")

    def __rmul__(self, other: Any) -> "Tensor":
        return self._binary(other, "*", True)

    def __truediv__(self, other: Any) -> "Tensor":
        return self._binary(other, "/")

    def __rtruediv__(self, other: Any) -> "Tensor":
        return self._binary(other, "/", True)

    def __pow__(self, other: Any) -> "Tensor":
        return self._binary(other, "**")

    def __neg__(self) -> "Tensor":
        return self._binary(-1.0, "*")

    def __matmul__(self, other: Any) -> "Tensor":
        other = other if isinstance(other, Tensor) else Tensor(other, device=self.device)
        if self.ndim != 2 or other.ndim != 2 or self.shape[1] != other.shape[0]:
            raise ShapeError(f"matmul: expected matrices (M, K) @ (K, N), got shapes {self.shape} and {other.shape}")
        return apply(ops.matmul(), self, other)

    def sum(self) -> "Tensor":
        """The sum of every element (a rank-0 tensor)."""
        return apply(ops.reduce("sum", self.ndim, tuple(range(self.ndim))), self)

    def mean(self) -> "Tensor":
        """The mean of every element (a rank-0 tensor)."""
        count = max(1, int(np.prod(self.shape)))
        return apply(ops.reduce("mean", self.ndim, tuple(range(self.ndim))), self, inv_count=1.0 / count)

    # -- autodiff --------------------------------------------------------------------------------------
    def backward(self, grad: np.ndarray | None = None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` (self must be a scalar unless ``grad``)."""
        if grad is None:
            if self.data.size != 1:
                raise ShapeError(f"backward() needs a scalar tensor or an explicit grad; this tensor has shape "
                                 f"{self.shape}")
            grad = _ones_like(self.data)
        elif not _on_device(grad):
            if isinstance(grad, Tensor):
                grad = grad.data
            given = np.asarray(grad) if isinstance(grad, (np.ndarray, list, tuple, int, float, np.number)) else None
            if given is None or given.dtype.kind not in "biuf":
                raise ArgumentError(f"backward(): grad must be a numeric array of the tensor's shape {self.shape}, "
                                    f"got {type(grad).__name__}")
            if given.shape != self.shape:
                raise ShapeError(f"backward(): grad has shape {given.shape} but the tensor has shape {self.shape}")
        grads: dict[int, Any] = {id(self): _to(grad, self.device, self.dtype)}
        nodes = _topological(self)
        leaves = _leaves(self)
        # a leaf's gradient is complete after the last node (in backward order) that reads it: hooks
        # (data-parallel gradient reduction) can start on it while the rest of the backward runs
        last = {}
        if _grad_ready_hooks:
            for j, node in enumerate(reversed(nodes)):
                for t in node.inputs:
                    last[id(t)] = j
        ready: dict[int, list[Tensor]] = {}
        for t in leaves:
            ready.setdefault(last.get(id(t), -1), []).append(t)
        done = set()
        for j, node in enumerate(reversed(nodes)):
            for t in ready.get(j - 1, ()) if _grad_ready_hooks else ():
                self._finish_leaf(t, grads, done)
            outs = [grads.get(id(o)) for o in node.outputs]
            if all(g is None for g in outs):
                continue
            if node.view_back is not None:  # a view: its gradient is the same numbers viewed back
                t = node.inputs[0]
                g = node.view_back(outs[0])
                grads[id(t)] = _sum(grads[id(t)], g) if id(t) in grads else g
                continue
            wrt = tuple(name for name, t in zip(node.op.inputs, node.inputs) if t.requires_grad)
            if not wrt:
                continue
            key = (id(node.op), wrt)
            gop = _grad_ops.get(key)
            if gop is None:
                gop = _grad_ops[key] = derive(node.op, list(wrt))
            d_outs = [g if g is not None else _zeros_like(o.data) for g, o in zip(outs, node.outputs)]
            results = gop(*[t.data for t in node.inputs], *d_outs, **node.params)
            for name, g in zip(wrt, results):
                t = node.inputs[node.op.inputs.index(name)]
                grads[id(t)] = _sum(grads[id(t)], g) if id(t) in grads else g
        for t in leaves:
            self._finish_leaf(t, grads, done)
        for node in nodes:  # free the graph (as PyTorch does): no cycles left for the collector
            for o in node.outputs:
                o._node = None
            node.inputs, node.outputs = (), []

    @staticmethod
    def _finish_leaf(t: "Tensor", grads: dict, done: set) -> None:
        """Add a leaf's completed gradient to its ``.grad`` (once) and tell the grad-ready hooks."""
        if id(t) in done:
            return
        done.add(id(t))
        g = grads.get(id(t))
        if g is not None:
            t.grad = g if t.grad is None else _sum(t.grad, g)
            for hook in _grad_ready_hooks:
                hook(t)


_grad_ready_hooks: list = []  # called with each leaf whose .grad a backward() has just completed


def _access(name: str, index: list[str]) -> str:
    return f"{name}[{', '.join(index)}]" if index else name


@functools.lru_cache(maxsize=None)
def _scalar_op(sym: str, rank: int, reverse: bool) -> Op:
    i = [f"i{k}" for k in range(rank)]
    x = _access("A", i)
    return Op(f"{_access('O', i)} = {'s ' + sym + ' ' + x if reverse else x + ' ' + sym + ' s'}")


@functools.lru_cache(maxsize=None)
def _binary_op(sym: str, a: tuple[int, ...], b: tuple[int, ...]) -> Op:
    try:
        out = np.broadcast_shapes(a, b)
    except ValueError:
        raise ShapeError(f"operands of shapes {a} and {b} do not broadcast together (numpy's rules)") from None
    rank = len(out)

    def index(shape: tuple[int, ...]) -> list[str]:
        first = rank - len(shape)
        return ["0" if n == 1 and out[first + k] != 1 else f"i{first + k}" for k, n in enumerate(shape)]
    i = [f"i{k}" for k in range(rank)]
    ranges = {f"i{k}": n for k, n in enumerate(out)}  # axes of length 1 in both operands
    used = set(index(a)) | set(index(b))
    return Op(f"{_access('O', i)} = {_access('A', index(a))} {sym} {_access('B', index(b))}",
              ranges={k: v for k, v in ranges.items() if k not in used} or None)


def _topological(root: Tensor) -> list[_Node]:
    order: list[_Node] = []
    seen: set[int] = set()
    stack: list[tuple[_Node, bool]] = [(root._node, False)] if root._node else []
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for t in node.inputs:
            if t._node is not None and id(t._node) not in seen:
                stack.append((t._node, False))
    return order


def _leaves(root: Tensor) -> list[Tensor]:
    out, seen = [], set()
    for node in _topological(root):
        for t in node.inputs:
            if t._node is None and t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def apply(op: Op, *inputs: Any, **params: Any) -> Tensor | tuple[Tensor, ...]:
    """Run ``op`` on tensors (or arrays) and record it on the tape when a gradient is needed."""
    if len(inputs) != len(op.inputs):
        raise ArgumentError(f"{op.label}: takes {len(op.inputs)} input tensors ({', '.join(op.inputs)}) but "
                            f"{len(inputs)} were given")
    tensors = tuple(t if isinstance(t, Tensor) else Tensor(t) for t in inputs)
    result = op(*[t.data for t in tensors], **params)
    arrays = result if isinstance(result, tuple) else (result,)
    needs = _grad_enabled[-1] and any(t.requires_grad for t in tensors)
    outs = [Tensor(a, requires_grad=needs) for a in arrays]
    if needs:
        node = _Node(op, tensors, dict(params), outs)
        for o in outs:
            o._node = node
    return outs[0] if len(outs) == 1 else tuple(outs)


opdef.TENSOR_APPLY.append(apply)
