"""Runtime: JIT compilation and kernel loading."""

from . import threads
from .jit import Compiled, compile_count, compile_kernel, host_target

__all__ = ["threads", "Compiled", "compile_count", "compile_kernel", "host_target"]
