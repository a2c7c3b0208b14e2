"""tensorcomp ops as PyTorch custom operators (the ``torch`` extra; the rest of tensorcomp never imports torch).

    import tensorcomp.torch as tct
    votes = tct.op("U[n, i, j, d] += X[n, i, k] * W[i, j, d, k]")    # or tct.wrap(tc_op)
    U = votes(x, w)                       # torch tensors in and out, no copies; autograd works

Each op becomes one operator ``torch.ops.tensorcomp.op_<hash>`` registered with ``torch.library``:
a CPU kernel (the tensorcomp kernel run on the tensors' own memory, read through their strides,
and its output buffers handed to torch as they are), a CUDA kernel (device tensors go to the op's
CUDA path through ``__cuda_array_interface__``), a fake implementation whose output shapes and
dtypes come from tensorcomp's range inference (so ``torch.compile(fullgraph=True)`` traces through
it), and an autograd formula from ``tc.grad``: the derived gradient ops, themselves registered the
same way (so gradients of gradients work too). Inputs come in the op's input order; scalar
parameters by keyword (``op(x, w, alpha=0.5)``); several outputs come back as a tuple.

Eager calls that record no gradient skip the dispatcher (the same kernel, ~4 µs less per call);
anything traced, compiled or differentiated goes through the registered operator.

``tensorcomp.torch.nn`` has ready-made ``torch.nn.Module``s for the capsule layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..autodiff import grad
from ..compiler import ArraySpec
from ..errors import ArgumentError, DeviceError, DtypeError, UnknownNameError
from ..opdef import Op
from ..strides import contiguous

NAMESPACE = "tensorcomp"
_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")
_TORCH_TO_NUMPY = {torch.float32: np.dtype("float32"), torch.float64: np.dtype("float64"),
                   torch.int32: np.dtype("int32"), torch.int64: np.dtype("int64"), torch.bool: np.dtype("bool")}
_NUMPY_TO_TORCH = {v.str: k for k, v in _TORCH_TO_NUMPY.items()}
_REGISTERED: dict[str, "TorchOp"] = {}  # operator name -> the op registered under it


def op(source: str, **options: Any) -> "TorchOp":
    """``tc.op(source, **options)`` as a callable on torch tensors (see the module docstring)."""
    return wrap(Op(source, **options))


def wrap(tc_op: Op) -> "TorchOp":
    """An existing tensorcomp op (``tc.op``, ``tc.grad``) as a callable on torch tensors."""
    if not isinstance(tc_op, Op):
        raise ArgumentError(f"tensorcomp.torch.wrap expects an op made by tc.op or tc.grad, got "
                            f"{type(tc_op).__name__}")
    name = "op_" + tc_op.digest[:20]
    found = _REGISTERED.get(name)
    if found is None:
        found = _REGISTERED[name] = TorchOp(tc_op, name)
    return found


class TorchOp:
    """A tensorcomp op registered as the torch operator ``torch.ops.tensorcomp.<name>``."""

    def __init__(self, tc_op: Op, name: str) -> None:
        self.op, self.name = tc_op, name
        self.label = tc_op.label
        self.n_in = len(tc_op.inputs)
        self.many = len(tc_op.outputs) > 1  # the operator returns a tuple (one output: a Tensor)
        self.as_tuple = bool(getattr(tc_op, "as_tuple", False))  # ... and the callable, also of one
        self._grads: dict[tuple[str, ...], TorchOp] = {}
        self._shapes: dict[tuple, tuple] = {}
        args = [f"Tensor t_{n}" for n in tc_op.inputs] + [f"Scalar s_{p}" for p in tc_op.params]
        outs = ", ".join(["Tensor"] * len(tc_op.outputs))
        _LIB.define(f"{name}({', '.join(args)}) -> ({outs})" if self.many else f"{name}({', '.join(args)}) -> Tensor")
        qualname = f"{NAMESPACE}::{name}"
        torch.library.impl(qualname, "cpu", self._cpu, lib=_LIB)
        torch.library.impl(qualname, "cuda", self._cuda, lib=_LIB)
        torch.library.register_fake(qualname, self._fake, lib=_LIB)
        torch.library.register_autograd(qualname, self._backward, setup_context=self._setup, lib=_LIB)
        self.overload = getattr(getattr(torch.ops, NAMESPACE), name).default

    def __repr__(self) -> str:
        return f"tensorcomp.torch.op({self.op.source!r})"

    @property
    def source(self) -> str:
        return self.op.source

    # -- calling ------------------------------------------------------------------------------------
    def __call__(self, *tensors: Any, **scalars: Any):
        """Run the op on torch tensors (inputs in ``self.op.inputs`` order, scalars by keyword)."""
        self._check(tensors, scalars)
        args = tensors + tuple(scalars[p] for p in self.op.params)
        if (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
                and all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))):
            out = self._cpu(*args)  # eager, no gradient recorded: the kernel directly
        else:
            out = self.overload(*args)
        return (out,) if self.as_tuple and not self.many else out

    def _check(self, tensors: tuple, scalars: dict[str, Any]) -> None:
        op = self.op
        if len(tensors) != self.n_in:
            raise ArgumentError(f"{self.label}: takes {self.n_in} input tensor{'s' if self.n_in != 1 else ''} "
                                f"({', '.join(op.inputs)}) but {len(tensors)} "
                                f"{'were' if len(tensors) != 1 else 'was'} given")
        for name, t in zip(op.inputs, tensors):
            if not isinstance(t, torch.Tensor):
                raise ArgumentError(f"{self.label}: input {name} must be a torch.Tensor, got {type(t).__name__}; "
                                    "hint: torch.as_tensor(x)")
            if t.dtype not in _TORCH_TO_NUMPY:
                raise DtypeError(f"{self.label}: input {name} has dtype {t.dtype}, which tensorcomp does not "
                                 "support; use torch.float32, float64, int32, int64 or bool")
            if t.device.type not in ("cpu", "cuda", "meta"):
                raise DeviceError(f"{self.label}: input {name} is on device '{t.device}'; tensorcomp runs on "
                                  "'cpu' and 'cuda' tensors")
            if t.requires_grad and not t.is_floating_point():
                raise DtypeError(f"{self.label}: input {name} of dtype {t.dtype} requires grad; only float32 "
                                 "and float64 inputs have gradients")
        devices = {t.device.type for t in tensors} - {"meta"}
        if len(devices) > 1:
            raise DeviceError(f"{self.label}: inputs are on devices {sorted(devices)}; put them all on one")
        for name in scalars:
            if name not in op.params:
                known = ", ".join(op.params) if op.params else "none"
                raise UnknownNameError(f"{self.label}: unexpected keyword argument '{name}'; the op's scalar "
                                       f"parameters are: {known}")
        for name in op.params:
            if name not in scalars:
                raise ArgumentError(f"{self.label}: scalar parameter '{name}' was not given; pass it as a keyword, "
                                    f"op(..., {name}=value)")

    def _scalars(self, args: tuple) -> dict[str, Any]:
        return dict(zip(self.op.params, args[self.n_in:]))

    def _cpu(self, *args):
        """The kernel on the tensors' memory (no copies in; the output buffers become the tensors)."""
        arrays = [t.detach().numpy() if t.requires_grad else t.numpy() for t in args[:self.n_in]]
        outs = self.op(*arrays, **self._scalars(args))
        outs = outs if isinstance(outs, tuple) else (outs,)
        result = tuple(torch.from_numpy(o if o.flags.c_contiguous else np.ascontiguousarray(o)) for o in outs)
        return result if self.many else result[0]

    def _cuda(self, *args):
        """The op's CUDA path on device memory (``__cuda_array_interface__`` both ways)."""
        outs = self.op(*[t.detach() for t in args[:self.n_in]], **self._scalars(args))
        outs = outs if isinstance(outs, tuple) else (outs,)
        result = tuple(torch.as_tensor(o, device=args[0].device).contiguous() for o in outs)
        return result if self.many else result[0]

    def _fake(self, *args):
        """Outputs of the right shapes and dtypes, from range inference (for tracing and compiling)."""
        tensors = args[:self.n_in]
        specs = tuple(ArraySpec(tuple(int(n) for n in t.shape), _TORCH_TO_NUMPY[t.dtype],
                                contiguous(tuple(int(n) for n in t.shape), t.element_size())) for t in tensors)
        scalars = self._scalars(args)
        key = specs + tuple((k, type(v).__name__) for k, v in scalars.items())
        shapes = self._shapes.get(key)
        if shapes is None:
            bound = self.op.bind(*specs, **scalars)
            shapes = self._shapes[key] = tuple((bound.tensors[n].shape, np.dtype(bound.tensors[n].dtype).str)
                                               for n in self.op.outputs)
        result = tuple(tensors[0].new_empty(shape, dtype=_NUMPY_TO_TORCH[dt]) for shape, dt in shapes)
        return result if self.many else result[0]

    # -- autograd -----------------------------------------------------------------------------------
    def _setup(self, ctx, inputs: tuple, output) -> None:
        ctx.save_for_backward(*inputs[:self.n_in])
        ctx.scalars = self._scalars(inputs)
        outs = output if self.many else (output,)
        ctx.out_meta = [(o.shape, o.dtype, o.device) for o in outs]

    def _backward(self, ctx, *grads):
        tensors = ctx.saved_tensors
        wrt = tuple(n for n, t, need in zip(self.op.inputs, tensors, ctx.needs_input_grad) if need
                    and t.is_floating_point())
        if not wrt:
            return (None,) * (self.n_in + len(self.op.params))
        douts = [g if g is not None else torch.zeros(shape, dtype=dtype, device=device)
                 for g, (shape, dtype, device) in zip(grads, ctx.out_meta)]
        derived = self.grad_op(wrt)
        found = derived.overload(*tensors, *douts, *(ctx.scalars[p] for p in self.op.params))
        found = found if isinstance(found, tuple) else (found,)
        by_name = dict(zip(wrt, found))
        return tuple(by_name.get(n) for n in self.op.inputs) + (None,) * len(self.op.params)

    def grad_op(self, wrt: tuple[str, ...]) -> "TorchOp":
        """The registered gradient op with respect to the inputs ``wrt`` (inputs: the op's inputs, then
        one gradient per output; returns a tuple)."""
        found = self._grads.get(wrt)
        if found is None:
            found = self._grads[wrt] = wrap(grad(self.op, list(wrt)))
        return found
