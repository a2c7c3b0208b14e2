"""The op library, written in the index-expression language (installed as ``tensorcomp.ops``).

Every function returns a :class:`tensorcomp.Op`; print its ``.source`` to see
the index expressions.
"""

from .activation import ACTIVATIONS, activation, log_softmax, softmax
from .capsule import capsule_conv, capsule_votes, dense_votes, squash
from .conv import conv, conv_source, pool
from .linalg import batched_matmul, matmul, mean, reduce
from .scan import cumprod, cumsum

__all__ = [
    "ACTIVATIONS", "activation", "batched_matmul", "capsule_conv", "capsule_votes", "conv", "conv_source", "cumprod",
    "cumsum",
    "dense_votes", "log_softmax", "matmul", "mean", "pool", "reduce", "softmax", "squash",
]
