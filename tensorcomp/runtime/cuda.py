"""Running kernels on an NVIDIA GPU through pycuda (the ``cuda`` extra).

Kernels are CUDA C (see ``codegen.cuda``), compiled for the device's own compute capability by
nvcc through ``pycuda.compiler`` (which caches the binaries on disk), loaded as modules and
launched stage by stage with prepared calls. Device memory comes from one pool, so per-call
outputs and temporaries do not go back to ``cudaMalloc``. The primary context of device 0 is
used, so arrays can be shared with other CUDA libraries in the process (PyTorch, CuPy).

Device arrays are ``pycuda.gpuarray.GPUArray``s; anything with ``__cuda_array_interface__``
(a CUDA torch tensor, a CuPy array) is accepted as input without a copy.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..strides import contiguous
from ..errors import DeviceError

INSTALL_HINT = ("install the cuda extra on a machine with an NVIDIA driver and the CUDA toolkit: "
                "pip install 'tensorcomp[cuda]' (pycuda builds against the toolkit that nvcc on PATH belongs to)")


@functools.lru_cache(maxsize=None)
def _driver():
    try:
        import pycuda.driver as drv
        drv.init()
        if drv.Device.count() == 0:
            raise DeviceError("target 'cuda': no CUDA device found")
        import pycuda.autoprimaryctx  # noqa: F401 - makes device 0's primary context current
        import pycuda.gpuarray  # noqa: F401
        import pycuda.tools
    except ImportError as e:
        raise DeviceError(f"target 'cuda' needs pycuda, which is not importable ({e}); {INSTALL_HINT}") from None
    except DeviceError:
        raise
    except Exception as e:  # pycuda.driver.Error and friends: no driver, no device
        raise DeviceError(f"target 'cuda': the CUDA driver could not start ({e}); {INSTALL_HINT}") from None
    return drv


def init() -> None:
    """Start the driver and make device 0's primary context current (before using pycuda directly)."""
    _driver()


def available() -> bool:
    """Whether ops can run with ``target='cuda'`` here."""
    try:
        _driver()
        return True
    except DeviceError:
        return False


@functools.lru_cache(maxsize=None)
def _pool():
    import pycuda.tools
    _driver()
    return pycuda.tools.DeviceMemoryPool()


@functools.lru_cache(maxsize=None)
def device_info() -> dict[str, Any]:
    """Name, compute capability and driver version of device 0 (part of the tuning database key)."""
    drv = _driver()
    dev = drv.Device(0)
    major, minor = dev.compute_capability()
    return {"name": dev.name(), "cc": f"{major}{minor}", "driver": drv.get_driver_version(),
            "sms": dev.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)}


def device_key() -> str:
    info = device_info()
    return f"cuda:{info['name']}:sm_{info['cc']}:driver {info['driver']}"


def is_device_array(x: Any) -> bool:
    """A pycuda GPUArray, or any object exposing ``__cuda_array_interface__``."""
    return hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray)


def as_device(x: Any):
    """``x`` as a GPUArray: device arrays are wrapped without a copy, host arrays are uploaded."""
    _driver()
    import pycuda.gpuarray as ga
    if isinstance(x, ga.GPUArray):
        return x
    if is_device_array(x):
        face = x.__cuda_array_interface__
        dtype = np.dtype(face["typestr"])
        shape = tuple(face["shape"])
        strides = face.get("strides") or contiguous(shape, dtype.itemsize)
        arr = ga.GPUArray(shape, dtype, gpudata=face["data"][0] or 0, strides=tuple(strides))
        arr._tc_owner = x  # keep the producer's memory alive
        return arr
    host = np.ascontiguousarray(x)
    dev = ga.GPUArray(host.shape, host.dtype, allocator=_pool().allocate)
    if host.size:
        dev.set(host)
    return dev


def empty(shape: tuple[int, ...], dtype: np.dtype, strides: tuple[int, ...] | None = None):
    """An uninitialised device array (``strides``: a dense permutation of C order, in bytes)."""
    import pycuda.gpuarray as ga
    return ga.GPUArray(tuple(shape), np.dtype(dtype), allocator=_pool().allocate, strides=strides)


def view(base, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype):
    """A device array viewing ``base``'s memory ``offset`` bytes on (a compiled step's views)."""
    import pycuda.gpuarray as ga
    return ga.GPUArray(tuple(shape), np.dtype(dtype), gpudata=int(base.gpudata) + offset, strides=tuple(strides),
                       base=base)


def to_host(arr) -> np.ndarray:
    """Copy a device array to a new numpy array with the same shape (any dense stride order)."""
    drv = _driver()
    shape, itemsize = tuple(arr.shape), arr.dtype.itemsize
    strides = tuple(arr.strides)
    order = sorted(range(len(shape)), key=lambda a: -strides[a]) if shape else []
    phys = np.empty(tuple(shape[a] for a in order), arr.dtype)
    if phys.size:
        if strides != tuple(s for s in _permuted(shape, order, itemsize)):
            raise DeviceError(f"cannot copy a device array with strides {strides} (shape {shape}) to the host; "
                              f"only dense arrays in some axis order are supported")
        drv.memcpy_dtoh(phys, int(arr.gpudata))
    return phys.transpose(np.argsort(order)) if order else phys


def _permuted(shape, order, itemsize):
    phys = contiguous(tuple(shape[a] for a in order), itemsize)
    out = [0] * len(shape)
    for position, axis in enumerate(order):
        out[axis] = phys[position]
    return out


_PENDING: dict[str, Any] = {}  # source -> Future of its cubin (compiles started ahead of use)


def compile_cubin(source: str) -> bytes:
    """nvcc: CUDA C -> cubin for device 0 (safe to call from several threads at once)."""
    drv = _driver()
    from pycuda.compiler import compile as nvcc
    try:
        return nvcc(source, no_extern_c=True, arch=f"sm_{device_info()['cc']}", options=["-O3"])
    except drv.CompileError as e:
        raise DeviceError(f"nvcc could not compile the generated kernel: {e}") from None


@functools.lru_cache(maxsize=None)
def _compilers():
    import os
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2)))


def prefetch(source: str) -> None:
    """Start compiling ``source`` in the background; a later ``Module(source, ...)`` picks it up."""
    if source not in _PENDING:
        _PENDING[source] = _compilers().submit(compile_cubin, source)


def cancel_prefetches() -> None:
    """Drop compiles started ahead that nobody will use (those already running finish unused)."""
    for future in _PENDING.values():
        future.cancel()
    _PENDING.clear()


_LOADED = [0]


def modules_loaded() -> int:
    """How many kernel modules this process has compiled and loaded."""
    return _LOADED[0]


class Module:
    """A compiled CUDA C module with one prepared function per launch (``arg_format``: pycuda's
    argument format of every function, or one per name)."""

    def __init__(self, source: str, names: list[str], arg_format: str | list[str]) -> None:
        drv = _driver()
        _LOADED[0] += 1
        pending = _PENDING.pop(source, None)
        cubin = pending.result() if pending is not None else compile_cubin(source)
        self.module = drv.module_from_buffer(cubin)
        self.functions = []
        formats = [arg_format] * len(names) if isinstance(arg_format, str) else arg_format
        for name, fmt in zip(names, formats):
            fn = self.module.get_function(name)
            fn.prepare(fmt)
            self.functions.append(fn)


def synchronize() -> None:
    _driver().Context.synchronize()
