"""What the compiler knows about the machines it generates code for, in one place.

Schedule and codegen both read these facts (the schedule decides tile shapes from them, codegen
prints the tiles the schedule decided); nothing else in the package states a register count,
a vector width, a cache size or a CUDA limit. The CPU facts describe the x86-64 machines the
defaults were measured on (Zen 3/4/5: 32 KB L1d, 512 KB+ L2; 16 vector registers of 32 bytes with
AVX2, 32 of 64 bytes with AVX-512, read from the host); LLVM splits or merges vectors for other
hosts, so they stay correct there, only less tuned.
The host's thread count is read at run time (``num_threads``).
"""

from __future__ import annotations

import os

# -- CPU: vector unit and registers -------------------------------------------------------------------
def _vector_bytes() -> int:
    """64 where LLVM targets AVX-512 (F, VL, BW, DQ) on this host, else 32 (AVX2);
    ``$TENSORCOMP_VECTOR_BYTES`` (32 or 64) overrides. Measured on a 2-core AMD EPYC (Zen 5) with
    AVX-512: tiles of 16-lane vectors took CapsNet-small's primary-capsule convolution from 6.4 to 3.3 ms
    forward and its gradients from 19.1 to 7.4 ms."""
    env = os.environ.get("TENSORCOMP_VECTOR_BYTES")
    if env in ("32", "64"):
        return int(env)
    try:
        import llvmlite.binding as llvm
        feats = llvm.get_host_cpu_features()
        return 64 if all(feats.get(f, False) for f in ("avx512f", "avx512vl", "avx512bw", "avx512dq")) else 32
    except Exception:  # noqa: BLE001 - no LLVM host information: the AVX2 facts
        return 32


# The vector facts of each width: the SIMD register width vector tiles use, the vector registers
# (accumulators + one row of operand vectors + a broadcast), the accumulator vectors in one vector tile
# (the rest hold operands) and the written elements in one vector tile (the accumulators' float32 lanes)
AVX2 = {"VECTOR_BYTES": 32, "VECTOR_REGISTERS": 16, "MAX_VECTOR_ACCUMULATORS": 12, "MAX_VECTOR_TILE": 96}
AVX512 = {"VECTOR_BYTES": 64, "VECTOR_REGISTERS": 32, "MAX_VECTOR_ACCUMULATORS": 24, "MAX_VECTOR_TILE": 384}
_FACTS = AVX512 if _vector_bytes() == 64 else AVX2
VECTOR_BYTES = _FACTS["VECTOR_BYTES"]  # (schedule modules read these as ``target.X`` when they run)
VECTOR_REGISTERS = _FACTS["VECTOR_REGISTERS"]
MAX_VECTOR_ACCUMULATORS = _FACTS["MAX_VECTOR_ACCUMULATORS"]
MAX_VECTOR_TILE = _FACTS["MAX_VECTOR_TILE"]
MAX_SCALAR_TILE = 16  # written elements in one scalar register tile (larger: LLVM loads them as scalars)

# -- CPU: caches ------------------------------------------------------------------------------------
LINE_BYTES = 64  # cache line
L1_BYTES = 32 * 1024  # L1 data cache per core
TILE_CACHE_BYTES = 256 * 1024  # what a default tile's reduction may read (half of a Zen 3 core's L2)
ALIASED_ROW_BYTES = 1024  # rows this many bytes apart (or a multiple) fall into at most 4 of L1's 64 sets
HUGE_PAGE_BYTES = 2 << 20  # a transparent huge page

# -- CPU: threads -----------------------------------------------------------------------------------
PARALLEL_MIN_POINTS = 1 << 16  # below this many loop iterations, threading costs more than it saves
# Slices per thread of a big parallel loop (``slices_per_thread``). With another process busy on one
# of 2 cores, 4 took the capsule kernel's median call from 23.0 to 19.6 ms and matmul 1024²'s from
# 48.4 to 39.7 (one slice per thread: the stage waits for the slowed thread's half); alone, no change
# beyond noise. Each slice is one more call through ctypes (a few microseconds), so a stage gets one
# more slice per thread for every SLICE_POINTS statement instances, up to MAX_SLICES_PER_THREAD.
MAX_SLICES_PER_THREAD = 4
SLICE_POINTS = 1 << 23


def num_threads() -> int:
    """Threads used for parallel loops: $TENSORCOMP_NUM_THREADS, else the cores this process may use."""
    env = os.environ.get("TENSORCOMP_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def slices_per_thread(instances: float) -> int:
    """How many slices per thread a parallel stage of this many statement instances is cut into."""
    if instances >= MAX_SLICES_PER_THREAD * SLICE_POINTS:  # (also a nest with run-time bounds: inf)
        return MAX_SLICES_PER_THREAD
    return max(1, int(instances // SLICE_POINTS))


# -- CUDA -------------------------------------------------------------------------------------------
CUDA_WARP = 32
CUDA_MAX_BLOCK_THREADS = 1024  # threads per block (every architecture since sm_20)
CUDA_BLOCK = 256  # threads per block unless a Block record says otherwise
CUDA_MAX_GRID = 1 << 20  # blocks per launch; the grid-stride loop covers the rest
CUDA_MAX_TILE = 64  # elements in one thread's register tile
CUDA_UNROLL = 16  # reduction steps unrolled inside a register tile (lets nvcc merge loads into vectors)
CUDA_SHARED_BYTES = 48 * 1024  # static shared memory per block (every architecture since sm_20)
CUDA_SMS = 132  # multiprocessors the default GPU schedule plans for (an H100 SXM); the tuner asks the device


def memory_bytes() -> int | None:
    """The machine's physical memory (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
