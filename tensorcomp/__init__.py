"""tensorcomp: tensor ops written as index expressions, compiled with isl and LLVM."""

from .errors import (
    ArgumentError, DtypeError, ParseError, RangeError, ScheduleError, ShapeError, TensorcompError, UnknownNameError,
)
from . import runtime
from .op import ArraySpec, Op, op


def grad(op: Op, wrt):  # noqa: F811 - re-exported from tensorcomp.autodiff
    """The gradient op of ``op`` with respect to input(s) ``wrt`` (see tensorcomp.autodiff.grad)."""
    from .autodiff import grad as _grad
    return _grad(op, wrt)

__version__ = "0.1.0"

__all__ = [
    "ArgumentError", "ArraySpec", "DtypeError", "Op", "ParseError", "RangeError", "ScheduleError", "ShapeError",
    "TensorcompError", "UnknownNameError", "grad", "op",
]
