"""Code generators: loop nest -> LLVM IR (CPU)."""

from .llvm import BufferLayout, contiguous, generate

__all__ = ["BufferLayout", "contiguous", "generate"]
