"""Code generators: loop nest -> LLVM IR (CPU), CUDA C (GPU)."""

from .llvm import generate, stage_buffers

__all__ = ["generate", "stage_buffers"]
