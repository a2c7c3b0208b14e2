"""tensorcomp: tensor ops written as index expressions, compiled with isl and LLVM."""

from .errors import (
    ArgumentError, DtypeError, ParseError, RangeError, ScheduleError, ShapeError, TensorcompError, UnknownNameError,
)
from .op import ArraySpec, Op, op

__version__ = "0.1.0"

__all__ = [
    "ArgumentError", "ArraySpec", "DtypeError", "Op", "ParseError", "RangeError", "ScheduleError", "ShapeError",
    "TensorcompError", "UnknownNameError", "op",
]
