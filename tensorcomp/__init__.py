"""tensorcomp: tensor ops written as index expressions, compiled with isl and LLVM."""

from .errors import (
    ArgumentError, DtypeError, IndexRangeError, ParseError, RangeError, ScheduleError, ShapeError, TensorcompError,
    TraceError, UnknownNameError,
)
from . import runtime, schedule
from .autodiff import grad
from .compiler import ArraySpec
from .einsum import einsum, einsum_op
from .opdef import Op
from .recurrence import Recurrence, op
from .step import compile
from .tensor import Tensor, no_grad


def tune(op: Op, *inputs, **options):
    """Search schedules for ``op`` on these inputs and store the best (``tensorcomp.autotune.search.tune``;
    the tuner is imported on first use, which keeps ``import tensorcomp`` light)."""
    from .autotune.search import tune as search
    return search(op, *inputs, **options)


__version__ = "0.1.0"

__all__ = [
    "runtime", "schedule",
    "ArgumentError", "ArraySpec", "DtypeError", "IndexRangeError", "Op", "ParseError", "RangeError",
    "ScheduleError", "ShapeError", "Recurrence", "TensorcompError", "TraceError", "UnknownNameError", "Tensor",
    "compile", "einsum", "einsum_op", "grad", "no_grad", "op", "tune",
]
