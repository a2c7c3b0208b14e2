"""The index-expression language: IR and parser."""

from .ir import Access, Call, Const, Expr, Index, Lin, Param, Program, Statement
from .parser import parse

__all__ = ["Access", "Call", "Const", "Expr", "Index", "Lin", "Param", "Program", "Statement", "parse"]
