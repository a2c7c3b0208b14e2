"""Code generators: loop nest -> LLVM IR (CPU), CUDA C (GPU)."""

from .llvm import generate

__all__ = ["generate"]
