"""A thin, PyTorch-shaped layer over ``tc.op`` and ``tc.grad``.

Every layer's forward is an index expression (from ``tensorcomp.ops`` or written here); every
backward is derived. Parameters are initialised as PyTorch initialises them by default.
"""

from .module import Parameter, Module, Sequential, manual_seed  # noqa: F401
from .layers import (  # noqa: F401
    Linear, Conv, Conv1d, Conv2d, Conv3d, MaxPool, AvgPool, MaxPool1d,
    MaxPool2d, MaxPool3d, AvgPool1d, AvgPool2d, AvgPool3d, ReLU, Flatten, LogSoftmax,
    CrossEntropyLoss, Sigmoid, Tanh, Softmax, NLLLoss, MSELoss, Dropout, BatchNorm,
    BatchNorm1d, BatchNorm2d, BatchNorm3d, Embedding, RNN,
    _conv_op,  # (the ops behind the layers, for tests and benchmarks)
)
from .capsule import (  # noqa: F401
    ClassCaps, ConvCaps, DenseCaps, EMPrimaryCaps, Length, MarginLoss, PrimaryCaps, SpreadLoss, Squash, em_route,
)
