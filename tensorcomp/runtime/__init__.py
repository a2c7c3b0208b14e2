"""Runtime: JIT compilation and kernel loading."""

from .jit import Compiled, compile_count, compile_kernel, host_target

__all__ = ["Compiled", "compile_count", "compile_kernel", "host_target"]
