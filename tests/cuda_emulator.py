"""Run the CUDA backend's generated kernels on the CPU, to check what they compute without a GPU.

The generated CUDA C is compiled as C++20 with g++ behind a small shim: every thread of a block
is an OS thread, ``__syncthreads()`` is a ``std::barrier`` over the block's threads, a
``__shared__`` array is a function-level ``static`` (one copy, seen by every thread of the block,
as on the GPU), and the blocks of a launch run one after another. Kernels without a barrier run
their threads one after another on one OS thread. ``emulated()`` swaps the device-array and
module functions of ``tensorcomp.runtime.cuda`` for host ones, so ``op(..., target="cuda")`` runs
the whole GPU path (launch configuration, relayouts, strided outputs) with host memory.

This checks semantics (indexing, barriers, shared-memory tiles, tails), not speed; a kernel that
reads shared memory before a barrier or races between threads can still pass by luck.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tensorcomp.runtime import cuda as rc

GXX = shutil.which("g++")

SHIM = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
using std::min; using std::max;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
struct tc_dim3 { unsigned x = 0, y = 0, z = 0; };
static thread_local tc_dim3 threadIdx, blockIdx;
static tc_dim3 blockDim, gridDim;
static std::barrier<> *tc_barrier = nullptr;
static inline void __syncthreads() { tc_barrier->arrive_and_wait(); }
struct float4 { float x, y, z, w; };
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }  // CUDA built-ins C++ lacks
static inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
// tensor cores (codegen.cuda_mma): TF32 rounding, and mma.m16n8k8 as the warp's 32 threads meeting
// at the block's barrier (the generated launch keeps a block's warps in step), each lane's fragment
// elements where the PTX ISA puts them
#define TC_HOST_MMA
static inline unsigned tc_to_tf32(float x) {
  unsigned u; std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // nearest, ties away from zero
  return u;
}
static float tc_mma_in[1024][6];
static inline float tc_bits(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline void tc_mma_tf32(float *d, const unsigned *a, const unsigned *b) {
  const unsigned t = threadIdx.x, w = t & ~31u, lane = t & 31u, g = lane / 4, tig = lane % 4;
  for (int r = 0; r < 4; r++) tc_mma_in[t][r] = tc_bits(a[r]);
  for (int r = 0; r < 2; r++) tc_mma_in[t][4 + r] = tc_bits(b[r]);
  __syncthreads();
  float out[4];
  for (unsigned j = 0; j < 4; j++) {
    const unsigned row = g + 8 * (j >> 1), col = 2 * tig + (j & 1);
    float s = d[j];
    for (unsigned k = 0; k < 8; k++)
      s += tc_mma_in[w + (row % 8) * 4 + k % 4][(row >= 8) + 2 * (k >= 4)] * tc_mma_in[w + col * 4 + k % 4][4 + (k >= 4)];
    out[j] = s;
  }
  __syncthreads();
  for (int j = 0; j < 4; j++) d[j] = out[j];
}
"""

RUN = r"""
extern "C" void {name}({params});  // (the kernel may sit in a namespace: C linkage names it alike)
extern "C" void emu_{name}(unsigned grid, unsigned block, void **argv) {{
  gridDim.x = grid; gridDim.y = gridDim.z = 1; blockDim.x = block; blockDim.y = blockDim.z = 1;
  for (unsigned b = 0; b < grid; b++) {{
    auto body = [&](unsigned t) {{ blockIdx.x = b; threadIdx.x = t; {name}({args}); }};
    if ({barriers}) {{
      std::barrier<> bar(block);
      tc_barrier = &bar;
      std::vector<std::thread> threads;
      for (unsigned t = 0; t < block; t++) threads.emplace_back(body, t);
      for (auto &th : threads) th.join();
    }} else {{
      for (unsigned t = 0; t < block; t++) body(t);
    }}
  }}
}}
"""

_BUILD = Path(tempfile.mkdtemp(prefix="tensorcomp-cuda-emulator-"))
_LIBS: dict[str, ctypes.CDLL] = {}


def compile_module(source: str) -> ctypes.CDLL:
    """``source`` (generated CUDA C) as a host library with an ``emu_<kernel>`` entry per kernel."""
    lib = _LIBS.get(source)
    if lib is not None:
        return lib
    wrappers = []
    for name, params in re.findall(r'extern "C" __global__ void (\w+)\((.*?)\) \{', source):
        types = [p.rsplit(" ", 1)[0].replace("__restrict__", "").strip() for p in params.split(", ")]
        args = ", ".join(f"*({t} *)argv[{k}]" for k, t in enumerate(types))
        body = source.split(f"void {name}(", 1)[1].split("\n}\n", 1)[0]
        wrappers.append(RUN.format(name=name, params=params, args=args, barriers="true" if "__syncthreads" in body or "tc_mma_tf32" in body else "false"))
    text = SHIM + source + "\n".join(wrappers)
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    src, so = _BUILD / f"{digest}.cpp", _BUILD / f"{digest}.so"
    src.write_text(text)
    proc = subprocess.run([GXX, "-std=c++20", "-O1", "-w", "-shared", "-fPIC", "-pthread", str(src), "-o", str(so)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"g++ could not compile the generated CUDA C:\n{proc.stderr[-4000:]}")
    lib = _LIBS[source] = ctypes.CDLL(str(so))
    return lib


class DeviceArray:
    """Host memory standing in for a pycuda GPUArray: shape, dtype, byte strides, an address
    (``gpudata``), ``__cuda_array_interface__``, views (``reshape``, ``base``) and ``fill``."""

    def __init__(self, shape, dtype, strides=None, base=None, gpudata=None) -> None:
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        size = int(np.prod(self.shape)) if self.shape else 1
        self.strides = tuple(strides) if strides is not None else tuple(
            np.empty(self.shape, self.dtype).strides) if self.shape else ()
        if isinstance(base, DeviceArray):  # a view of another device array
            self.base, self.memory = base, base.memory
        else:
            self.base, self.memory = None, base if base is not None else np.empty(max(size, 1), self.dtype)
        self.gpudata = self.memory.ctypes.data if gpudata is None else int(gpudata)

    size = property(lambda self: int(np.prod(self.shape)) if self.shape else 1)
    ndim = property(lambda self: len(self.shape))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.gpudata, False),
                "strides": self.strides, "version": 3}

    def _numpy(self) -> np.ndarray:
        """The array as a numpy view of the memory it stands for."""
        offset = self.gpudata - self.memory.ctypes.data
        flat = self.memory.view(np.uint8)
        return np.lib.stride_tricks.as_strided(flat[offset:].view(self.dtype) if self.size else flat[:0].view(
            self.dtype), self.shape, self.strides)

    def host(self) -> np.ndarray:
        return self._numpy().copy()

    get = host

    def reshape(self, *shape) -> "DeviceArray":
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
        if -1 in shape:
            known = int(np.prod([n for n in shape if n != -1]))
            shape = tuple(self.size // known if n == -1 else n for n in shape)
        if self.strides != tuple(np.empty(self.shape, self.dtype).strides):
            raise AssertionError("reshape of a non-contiguous device array")
        return DeviceArray(shape, self.dtype, None, base=self, gpudata=self.gpudata)

    def fill(self, value) -> "DeviceArray":
        self._numpy()[...] = value
        return self

    def set(self, host) -> None:
        self._numpy()[...] = host

    def __len__(self) -> int:
        return self.shape[0]


class _Function:
    def __init__(self, lib: ctypes.CDLL, name: str, fmt: str) -> None:
        self.fn, self.fmt = getattr(lib, f"emu_{name}"), fmt
        self.fn.restype = None
        self.fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]

    def prepared_call(self, grid, block, *args) -> None:
        ctype = {"P": ctypes.c_void_p, "d": ctypes.c_double, "q": ctypes.c_longlong}
        values = [ctype[f](a) for f, a in zip(self.fmt, args)]
        argv = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        self.fn(grid[0], block[0], argv)


class Module:
    def __init__(self, source: str, names: list[str], arg_format) -> None:
        lib = compile_module(source)
        formats = [arg_format] * len(names) if isinstance(arg_format, str) else arg_format
        self.functions = [_Function(lib, name, fmt) for name, fmt in zip(names, formats)]


def _as_device(x):
    if isinstance(x, DeviceArray):
        return x
    host = np.ascontiguousarray(x)
    return DeviceArray(host.shape, host.dtype, base=host.reshape(-1).copy() if host.size else None)


def _view(base: DeviceArray, offset: int, shape, strides, dtype) -> DeviceArray:
    return DeviceArray(shape, dtype, strides, base=base, gpudata=base.gpudata + offset)


@contextlib.contextmanager
def emulated():
    """``target="cuda"`` runs on the CPU emulator inside the block."""
    saved = {name: getattr(rc, name) for name in ("is_device_array", "as_device", "empty", "to_host", "Module",
                                                  "view")}
    rc.is_device_array = lambda x: isinstance(x, DeviceArray)
    rc.as_device = _as_device
    rc.empty = lambda shape, dtype, strides=None: DeviceArray(shape, dtype, strides)
    rc.to_host = lambda arr: arr.host()
    rc.Module = Module
    rc.view = _view
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(rc, name, fn)
