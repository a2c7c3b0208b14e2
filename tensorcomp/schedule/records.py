"""Schedule records: small, frozen, serializable transformations of the default loop nest.

A schedule is a tuple of records. Each states its algebra on the statement's
indices; ``lower`` turns them into an isl schedule map (time dimensions as
quasi-affine functions of the domain), so isl generates exact loops for any
of them.

* ``Split(stmt, index, factor)``: ``index == lo + factor*index_o + index_i``
  with ``0 <= index_i < factor`` (loops ``index_o``, ``index_i``)::

      for i in range(0, 10):        for i_o in range(0, 3):
          S(i)               ->         for i_i in range(0, min(4, 10 - 4*i_o)):
                                            S(4*i_o + i_i)

* ``Reorder(stmt, order)``: the statement's loops, outermost first (every loop
  name, after splits).
* ``Fuse(stmt, outer, inner)``: two adjacent loops become one,
  ``f == (outer - lo_o) * extent_inner + (inner - lo_i)`` (named
  ``outer_inner``); used when both walk one contiguous run of memory.
* ``Layout(tensor, perm, pad=0, blocks=())``: the tensor is stored with its axes in
  physical order ``perm`` (outermost first), e.g. ``Layout("W", (0, 1, 2, 4,
  3, 5))`` swaps axes 3 and 4 in memory. Inputs are copied into that layout
  per call; outputs are allocated in it and returned as (strided) views.
  ``pad`` (inputs only) adds that many unused elements after each run of the
  innermost physical axis, so rows whose byte stride is a multiple of a large
  power of two do not all map to the same few cache sets.
  ``blocks`` (inputs only) cuts axes into blocks, a packed layout: each
  ``(axis, size)`` pair replaces that axis by two, ``axis // size`` and
  ``axis % size`` (in place, so later axes move up), and ``perm`` orders the
  axes of that blocked tensor; ``Layout("B", (1, 0, 2), blocks=((1, 16),))``
  stores a matrix ``B[k, j]`` as 16-column panels, ``B'[j // 16, k, j % 16]``.
  The statements reading it then loop over ``j_o`` and ``j_i`` (see
  ``schedule.blocking``).
* ``Rfactor(stmt, index, parts)``: the reduction index ``index`` is cut into
  ``parts`` pieces of ``c = ceil(extent / parts)`` consecutive values,
  ``index == lo + c*index_o + index_i``, and each piece reduces into its own
  copy of the target: the statement becomes ``T[index_o, w...] += f(...)``
  into a temporary ``T`` (named ``<target>_rf<stmt>``) with one leading axis
  per piece, and a statement after it combines the copies,
  ``target[w...] += T[p, w...]`` (the same reduction: ``+=``, ``max``, ...).
  ``index_o`` is then a written index, so the pieces run on different
  threads: a reduction with nothing else to run in parallel (a dot product,
  a sum over a whole tensor, a matrix-vector product with a short output)
  runs on all cores. The statement's loops are then named ``index_o`` and
  ``index_i`` (other records of it use those names); records naming later
  statements keep their numbers (the combining statement is scheduled by
  default)::

      s[] += A[i]          ->   s_rf0[i_o] += A[c*i_o + i_i]    (i_o runs on threads)
                                s[] += s_rf0[i_o]

* ``Block(threads)``: GPU only: threads per block of every launch (a multiple
  of 32, at most 1024); the CPU ignores it.
* ``Threads(stmt, shape)``: GPU only: each block of the statement's launch
  covers a box of its parallel loops, ``shape`` threads along the innermost
  ones (innermost last), e.g. ``Threads(0, (8, 16))`` for 8 x 16 threads over
  the last two; the grid walks the boxes. Used with ``Stage``.
* ``Stage(stmt, tensor, loop)``: GPU only: once per iteration of the
  statement's reduction loop ``loop``, the block's threads copy every element
  of ``tensor`` that the block reads inside that iteration into shared memory
  (one cooperative, coalesced load between two barriers) and read it from
  there; threads of a block that read the same elements then load them from
  global memory once. The loops from the parallel ones down to ``loop`` must
  have the same bounds in every thread, those inside it constant bounds.
  With ``buffers=2`` the copy is double-buffered: the block loads the next
  iteration's tile into registers while it computes on the current one, then
  stores it into a second shared array (one barrier per iteration, and the
  global loads' latency hidden behind the arithmetic). Every ``Stage`` at one
  loop has the same ``buffers``.

Loops that a statement runs *inside* its reduction loops, with constant
bounds (after a ``Reorder``), form its register tile: the generated code keeps
the written elements they cover in registers across the reduction (the GPU
unrolls the tile; see ``codegen.cuda``).

Within one statement every loop order is legal: a statement never reads what
it writes (the language forbids it) and reductions are treated as
associative, so the records above cannot break a dependence; statements keep
their source order. Malformed records raise ScheduleError.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Union


@dataclass(frozen=True, slots=True)
class Split:
    stmt: int
    index: str
    factor: int


@dataclass(frozen=True, slots=True)
class Reorder:
    stmt: int
    order: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Fuse:
    stmt: int
    outer: str
    inner: str


@dataclass(frozen=True, slots=True)
class Layout:
    tensor: str
    perm: tuple[int, ...]
    pad: int = 0
    blocks: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Rfactor:
    stmt: int
    index: str
    parts: int


@dataclass(frozen=True, slots=True)
class Block:
    threads: int


@dataclass(frozen=True, slots=True)
class Threads:
    stmt: int
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Stage:
    stmt: int
    tensor: str
    loop: str
    buffers: int = 1


Record = Union[Split, Reorder, Fuse, Layout, Rfactor, Block, Threads, Stage]
_KINDS = {cls.__name__: cls for cls in (Split, Reorder, Fuse, Layout, Rfactor, Block, Threads, Stage)}


def to_json(schedule: tuple[Record, ...]) -> str:
    """A schedule as JSON (what the tuning database stores)."""
    return json.dumps([{"kind": type(r).__name__, **asdict(r)} for r in schedule], sort_keys=True)


def from_json(text: str) -> tuple[Record, ...]:
    out = []
    for item in json.loads(text):
        item = dict(item)
        cls = _KINDS[item.pop("kind")]
        for key in ("order", "perm", "shape"):
            if key in item:
                item[key] = tuple(item[key])
        if "blocks" in item:
            item["blocks"] = tuple(tuple(p) for p in item["blocks"])
        out.append(cls(**item))
    return tuple(out)
