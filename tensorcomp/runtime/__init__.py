"""Runtime: JIT compilation and kernel loading."""

from . import cuda, threads
from .jit import Compiled, compile_count, compile_kernel, host_target, object_counts

__all__ = ["cuda", "threads", "Compiled", "compile_count", "compile_kernel", "host_target",
           "object_counts"]
