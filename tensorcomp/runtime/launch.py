"""A compiled CUDA kernel for one input signature of an op, and how it is launched.

``CudaKernel`` is what the compiler's CUDA passes build (``compiler.build_cuda``): one prepared
function per top-level loop nest, launched in order on device arrays. Host arrays go to the device
and back; device arrays (pycuda GPUArrays, anything with ``__cuda_array_interface__``) stay there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..strides import permuted_strides
from . import cuda


@dataclass
class CudaKernel:
    """Everything compiled for one input signature of an op on the GPU."""

    bound: Any  # domain.Bound
    nest: Any  # schedule.LoopNest
    module: Any  # runtime.cuda.Module: one prepared function per launch
    launches: tuple  # codegen.cuda.Launch per top-level loop nest
    outputs: tuple[tuple[tuple[int, ...], np.dtype], ...]
    temporaries: tuple[tuple[tuple[int, ...], np.dtype], ...]
    param_casts: tuple[type, ...]
    relayout: tuple[tuple[int, tuple[int, ...], int, tuple], ...] = ()
    out_perms: tuple[tuple[int, ...] | None, ...] = ()


def signature(devs: list) -> tuple:
    """The part of a CUDA call's cache key the device arrays make: alignment, shapes, strides, dtypes."""
    aligned = not any(int(d.gpudata) % 16 for d in devs if d.gpudata is not None)  # ours always are
    return ("cuda", aligned) + tuple([(tuple(d.shape), tuple(d.strides), d.dtype) for d in devs])


def run(kernel: CudaKernel, devs: list, scalars: list, relayout: Callable[[Any, tuple[int, ...]], Any]) -> list:
    """Launch ``kernel`` on device arrays ``devs`` (in the op's input order; ``relayout(array, perm)``
    copies one into a scheduled axis order) with its scalar parameters; returns the device outputs."""
    inputs = [int(d.gpudata) if d.gpudata is not None else 0 for d in devs]
    for pos, perm, _pad, _blocks in kernel.relayout:
        devs[pos] = relayout(devs[pos], perm)
        inputs[pos] = int(devs[pos].gpudata)
    outs = [cuda.empty(shape, dtype, None if perm is None else permuted_strides(shape, perm, dtype.itemsize))
            for (shape, dtype), perm in zip(kernel.outputs, kernel.out_perms or [None] * len(kernel.outputs))]
    temps = [cuda.empty(shape, dtype) for shape, dtype in kernel.temporaries]
    ptrs = inputs + [int(d.gpudata) if d.gpudata is not None else 0 for d in (*outs, *temps)]
    for launch, fn in zip(kernel.launches, kernel.module.functions):
        fn.prepared_call((launch.grid, 1, 1), (launch.block, 1, 1), *ptrs, *scalars)
    return outs
