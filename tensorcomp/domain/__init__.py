"""Shapes to isl domains: range inference and shape checks."""

from .bind import Bound, BoundStatement, TensorInfo, bind

__all__ = ["Bound", "BoundStatement", "TensorInfo", "bind"]
