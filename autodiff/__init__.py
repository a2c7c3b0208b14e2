"""Gradients by transposing index expressions (installed as ``tensorcomp.autodiff``).

``grad(op, wrt)`` derives the gradient op: see :mod:`.transpose` for the rules.
"""

from .rules import derivative
from .transpose import DerivedOp, grad

__all__ = ["DerivedOp", "derivative", "grad"]
