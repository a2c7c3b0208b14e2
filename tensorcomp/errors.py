"""One exception hierarchy for everything tensorcomp reports about bad input.

Every error derives from :class:`TensorcompError`, and also from the builtin
exception that fits it (``SyntaxError``, ``ValueError``, ``TypeError``,
``NameError``), so callers can catch either.  Messages name the op, the
tensor, index, axis, shapes or line involved, and end with a hint where a
likely fix exists.
"""

from __future__ import annotations


class TensorcompError(Exception):
    """Base class of every error tensorcomp raises on bad input."""


class ParseError(TensorcompError, SyntaxError):
    """The op source is not valid index-expression syntax."""

    def __init__(self, message: str, lineno: int | None = None) -> None:
        # SyntaxError.__init__ would format the message itself; keep ours verbatim.
        Exception.__init__(self, message)
        self.msg = message
        self.lineno = lineno

    def __str__(self) -> str:
        return self.msg


class UnknownNameError(TensorcompError, NameError):
    """A function, parameter or keyword the op does not know."""


class ShapeError(TensorcompError, ValueError):
    """Ranks or extents of the arrays passed do not fit the op."""


class RangeError(TensorcompError, ValueError):
    """An index has no bound, or a statement's iteration domain is empty."""


class IndexRangeError(TensorcompError, IndexError):
    """A value of an index tensor lies outside the axis it indexes (checked before the op runs)."""


class DtypeError(TensorcompError, TypeError):
    """An array or parameter has a dtype the op cannot take."""


class ArgumentError(TensorcompError, TypeError):
    """The op was called with the wrong number or kind of arguments."""


class ScheduleError(TensorcompError, ValueError):
    """A schedule record is illegal for the op (it would break a dependence)."""


class DeviceError(TensorcompError, RuntimeError):
    """A target or device that is not available here (no pycuda, no GPU), or a tensor on another device."""


class TraceError(TensorcompError, RuntimeError):
    """A function given to ``tc.compile`` does something a compiled step cannot repeat without Python
    (reads a computed value, changes between calls, assigns state no op computed)."""


def op_label(source: str, limit: int = 60) -> str:
    """How errors name an op: its source on one line, shortened if long."""
    text = "; ".join(line.strip() for line in source.strip().splitlines() if line.strip())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"op '{text}'"
