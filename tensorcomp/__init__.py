"""tensorcomp: tensor ops written as index expressions, compiled with isl and LLVM."""

from .errors import (
    ArgumentError, DtypeError, ParseError, RangeError, ScheduleError, ShapeError, TensorcompError, UnknownNameError,
)
from . import runtime, schedule
from .op import ArraySpec, Op, op
from .tensor import Tensor, no_grad


def tune(op: Op, *inputs, budget_s=None, trials=None, progress=True, target="cpu", **params):
    """Search schedules for ``op`` on these inputs and store the best (see tensorcomp.autotune.tune)."""
    from .autotune import tune as _tune
    return _tune(op, *inputs, budget_s=budget_s, trials=trials, progress=progress, target=target, **params)


def grad(op: Op, wrt):  # noqa: F811 - re-exported from tensorcomp.autodiff
    """The gradient op of ``op`` with respect to input(s) ``wrt`` (see tensorcomp.autodiff.grad)."""
    from .autodiff import grad as _grad
    return _grad(op, wrt)

__version__ = "0.1.0"

__all__ = [
    "runtime", "schedule",
    "ArgumentError", "ArraySpec", "DtypeError", "Op", "ParseError", "RangeError", "ScheduleError", "ShapeError",
    "TensorcompError", "UnknownNameError", "Tensor", "grad", "no_grad", "op", "tune",
]
