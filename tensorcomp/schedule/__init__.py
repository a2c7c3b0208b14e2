"""Schedules: from isl domains to loop nests."""

from .loopnest import Compute, Fill, For, IConst, If, IOp, IVar, LoopNest
from .lower import lower
from .order import default_order
from .records import Block, Fuse, Layout, Reorder, Rfactor, Split, Stage, Threads, from_json, to_json

__all__ = ["Compute", "Fill", "For", "IConst", "If", "IOp", "IVar", "LoopNest", "default_order", "lower", "Block", "Fuse", "Layout", "Reorder", "Rfactor", "Split", "Stage", "Threads", "from_json", "to_json"]
