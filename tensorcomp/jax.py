"""tensorcomp ops as JAX functions (the ``jax`` extra; the rest of tensorcomp never imports jax).

    import jax, tensorcomp.jax as tcj
    votes = tcj.op("U[n, i, j, d] += X[n, i, k] * W[i, j, d, k]")   # or tcj.wrap(tc_op)
    loss = lambda x, w: votes(x, w).sum()
    jax.jit(jax.grad(loss, argnums=1))(x, w)

Each call is a ``jax.pure_callback`` to the compiled CPU kernel, with output shapes and dtypes from
tensorcomp's range inference, so it works inside ``jax.jit`` and ``jax.vmap`` (one kernel call per
mapped element); ``jax.custom_vjp`` gives it the derived gradient (``tc.grad``), itself a function of
this kind, so ``jax.grad``, ``jax.vjp`` and gradients of gradients work. Scalar parameters are passed by
keyword as Python numbers (they are compiled into the traced function, not traced). float64 needs
``jax.config.update("jax_enable_x64", True)``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .autodiff import grad
from .compiler import ArraySpec
from .errors import ArgumentError, DtypeError, UnknownNameError
from .opdef import Op
from .strides import contiguous

_SUPPORTED = ("float32", "float64", "int32", "int64", "bool")
_REGISTERED: dict[str, "JaxOp"] = {}


def op(source: str, **options: Any) -> "JaxOp":
    """``tc.op(source, **options)`` as a function of JAX arrays (see the module docstring)."""
    return wrap(Op(source, **options))


def wrap(tc_op: Op) -> "JaxOp":
    """An existing tensorcomp op (``tc.op``, ``tc.grad``) as a function of JAX arrays."""
    if not isinstance(tc_op, Op):
        raise ArgumentError(f"tensorcomp.jax.wrap expects an op made by tc.op or tc.grad, got "
                            f"{type(tc_op).__name__}")
    found = _REGISTERED.get(tc_op.digest)
    if found is None:
        found = _REGISTERED[tc_op.digest] = JaxOp(tc_op)
    return found


class JaxOp:
    """A tensorcomp op callable on JAX arrays, differentiable by its derived gradient."""

    def __init__(self, tc_op: Op) -> None:
        self.op, self.label = tc_op, tc_op.label
        self.n_in = len(tc_op.inputs)
        self.as_tuple = len(tc_op.outputs) > 1 or bool(getattr(tc_op, "as_tuple", False))
        self._fns: dict[tuple, Any] = {}
        self._grads: dict[tuple[str, ...], JaxOp] = {}

    def __repr__(self) -> str:
        return f"tensorcomp.jax.op({self.op.source!r})"

    def __call__(self, *arrays: Any, **scalars: Any):
        """Run the op on JAX (or NumPy) arrays, inputs in ``self.op.inputs`` order, scalars by keyword."""
        self._check(arrays, scalars)
        key = tuple((p, scalars[p], type(scalars[p]).__name__) for p in self.op.params)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = self._function({p: v for p, v, _ in key})
        return fn(*arrays)

    def _check(self, arrays: tuple, scalars: dict[str, Any]) -> None:
        op = self.op
        if len(arrays) != self.n_in:
            raise ArgumentError(f"{self.label}: takes {self.n_in} input array{'s' if self.n_in != 1 else ''} "
                                f"({', '.join(op.inputs)}) but {len(arrays)} {'were' if len(arrays) != 1 else 'was'} "
                                "given")
        for name, a in zip(op.inputs, arrays):
            dtype = getattr(a, "dtype", None)
            if dtype is None or np.dtype(dtype).name not in _SUPPORTED:
                raise DtypeError(f"{self.label}: input {name} has dtype {dtype}, which tensorcomp does not support; "
                                 "use float32, float64, int32, int64 or bool")
        for name, value in scalars.items():
            if name not in op.params:
                known = ", ".join(op.params) if op.params else "none"
                raise UnknownNameError(f"{self.label}: unexpected keyword argument '{name}'; the op's scalar "
                                       f"parameters are: {known}")
            if not isinstance(value, (bool, int, float, np.integer, np.floating)):
                raise ArgumentError(f"{self.label}: scalar parameter '{name}' must be a Python number, got "
                                    f"{type(value).__name__}; hint: tensorcomp compiles scalars into the traced "
                                    "function, pass a traced value as a 0-d input tensor instead")
        for name in op.params:
            if name not in scalars:
                raise ArgumentError(f"{self.label}: scalar parameter '{name}' was not given; pass it as a keyword, "
                                    f"op(..., {name}=value)")

    def result_shapes(self, arrays: tuple, scalars: dict[str, Any]) -> tuple:
        """``jax.ShapeDtypeStruct`` per output, from range inference on the inputs' shapes."""
        specs = [ArraySpec(tuple(a.shape), np.dtype(a.dtype), contiguous(tuple(a.shape), np.dtype(a.dtype).itemsize))
                 for a in arrays]
        bound = self.op.bind(*specs, **scalars)
        return tuple(jax.ShapeDtypeStruct(bound.tensors[n].shape, np.dtype(bound.tensors[n].dtype))
                     for n in self.op.outputs)

    def _function(self, scalars: dict[str, Any]):
        """The differentiable JAX function of the op with these scalar parameters."""
        op = self.op

        def host(*arrays):
            out = op(*[np.asarray(a) for a in arrays], **scalars)
            return out if isinstance(out, tuple) else (out,)

        @jax.custom_vjp
        def fn(*arrays):
            out = jax.pure_callback(host, self.result_shapes(arrays, scalars), *arrays, vmap_method="sequential")
            return tuple(out) if self.as_tuple else out[0]

        def forward(*arrays):
            return fn(*arrays), arrays

        def backward(arrays, cotangents):
            cts = cotangents if self.as_tuple else (cotangents,)
            wrt = tuple(n for n, a in zip(op.inputs, arrays) if np.issubdtype(np.dtype(a.dtype), np.floating))
            found = dict(zip(wrt, self.grad_op(wrt)(*arrays, *cts, **scalars))) if wrt else {}
            return tuple(found[n] if n in found else np.zeros(a.shape, jax.dtypes.float0)
                         for n, a in zip(op.inputs, arrays))

        fn.defvjp(forward, backward)
        return fn

    def grad_op(self, wrt: tuple[str, ...]) -> "JaxOp":
        """The gradient op with respect to the inputs ``wrt`` (inputs: the op's inputs, then one
        gradient per output; returns a tuple)."""
        found = self._grads.get(wrt)
        if found is None:
            found = self._grads[wrt] = wrap(grad(self.op, list(wrt)))
        return found
