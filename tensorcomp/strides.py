"""Byte strides of tensors as they are stored: C order, a permuted axis order, padded rows.

A tensor's *layout* (the ``Layout`` schedule record) says in which order its axes are stored;
these helpers turn that into the byte strides per logical axis that the loop nests and the code
generators read (``BufferStrides``).
"""

from __future__ import annotations

from dataclasses import dataclass

ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}  # bytes per element, per dtype


@dataclass(frozen=True)
class BufferStrides:
    """Where a buffer's elements live: byte strides per logical axis and the pointer's alignment."""

    strides: tuple[int, ...]
    align: int


def contiguous(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Byte strides of a C-order array of ``shape``."""
    strides, acc = [], itemsize
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def padded_shape(shape: tuple[int, ...], pad: int) -> tuple[int, ...]:
    """``shape`` with ``pad`` more elements along its last axis."""
    return shape[:-1] + (shape[-1] + pad,) if pad and shape else shape


def permuted_strides(shape: tuple[int, ...], perm: tuple[int, ...], itemsize: int, pad: int = 0) -> tuple[int, ...]:
    """Byte strides of a tensor of logical ``shape`` stored with its axes in physical order ``perm``
    (and ``pad`` unused elements after each run of the innermost physical axis)."""
    phys = contiguous(padded_shape(tuple(shape[a] for a in perm), pad), itemsize)
    out = [0] * len(shape)
    for position, axis in enumerate(perm):
        out[axis] = phys[position]
    return tuple(out)
