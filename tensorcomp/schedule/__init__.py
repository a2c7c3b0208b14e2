"""Schedules: from isl domains to loop nests."""

from .loopnest import Compute, Fill, For, IConst, If, IOp, IVar, LoopNest
from .lower import default_order, lower

__all__ = ["Compute", "Fill", "For", "IConst", "If", "IOp", "IVar", "LoopNest", "default_order", "lower"]
