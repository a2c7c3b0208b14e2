"""``tc.einsum``: numpy.einsum's semantics, compiled as an index-expression op.

The subscripts (or numpy's interleaved ``einsum(a, [0, 1], b, [1, 2], [0, 2])`` form) are checked as
numpy checks them; ``...`` expands to broadcast axes, right-aligned as numpy aligns them; a label's
extent is the largest among its axes, and an axis of extent 1 under a longer label is read at 0
(numpy's size-1 broadcasting). The result is one statement, the product of the operands summed over
the labels that are not in the output (``O[i, k] += A[i, j] * B[j, k]``), compiled and cached like
any op (``einsum_op`` returns it). Operands are cast to numpy's result type first; bool operands
give numpy's bool result (any product true); an empty axis gives numpy's zeros.
"""

from __future__ import annotations

import functools
import string
from typing import Any

import numpy as np

from .errors import ArgumentError, DtypeError, ParseError, ShapeError
from .opdef import Op
from .tensor import Tensor

_LETTERS = string.ascii_letters


def _parse_interleaved(args: tuple) -> tuple[str, list]:
    """numpy's ``einsum(op0, sublist0, op1, sublist1, ..., [sublistout])`` as a subscripts string."""
    operands, subs = list(args[0::2]), list(args[1::2])
    out = None
    if len(args) % 2 == 1:
        out = args[-1]
        operands = operands[:-1] if len(operands) > len(subs) else operands

    def letters(sub: Any) -> str:
        text = ""
        for s in sub:
            if s is Ellipsis:
                text += "..."
            elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s < len(_LETTERS):
                text += _LETTERS[s]
            else:
                raise ParseError(f"tc.einsum: subscript {s!r} in a sublist must be an integer in [0, 52) or "
                                 f"Ellipsis")
        return text
    spec = ",".join(letters(s) for s in subs)
    if out is not None:
        spec += "->" + letters(out)
    return spec, operands


def _split(subscripts: str, n_operands: int) -> tuple[list[str], str | None]:
    text = subscripts.replace(" ", "")
    if "->" in text:
        lhs, out = text.split("->", 1)
        if "->" in out or "-" in out or ">" in out:
            raise ParseError(f"tc.einsum: subscripts '{subscripts}' contain more than one '->'")
    else:
        if "-" in text or ">" in text:
            raise ParseError(f"tc.einsum: subscripts '{subscripts}' contain '-' or '>' outside an '->'")
        lhs, out = text, None
    terms = lhs.split(",")
    if len(terms) < n_operands:
        raise ArgumentError(f"tc.einsum: more operands provided ({n_operands}) than the subscripts '{subscripts}' "
                            f"specify ({len(terms)})")
    if len(terms) > n_operands:
        raise ArgumentError(f"tc.einsum: fewer operands provided ({n_operands}) than the subscripts '{subscripts}' "
                            f"specify ({len(terms)})")
    for term in terms + ([out] if out is not None else []):
        rest = term.replace("...", "")
        if "." in rest:
            raise ParseError(f"tc.einsum: subscripts '{subscripts}' contain a '.' that is not part of an '...'")
        if term.count("...") > 1:
            raise ParseError(f"tc.einsum: subscripts term '{term}' contains more than one '...'")
        for ch in rest:
            if ch not in _LETTERS:
                raise ParseError(f"tc.einsum: invalid subscript '{ch}' in the subscripts '{subscripts}'; subscripts "
                                 f"must be letters (a-z, A-Z)")
    return terms, out


def _expand(terms: list[str], out: str | None, shapes: list[tuple[int, ...]], subscripts: str):
    """Each operand's labels with '...' expanded (broadcast axes named by digits, right-aligned), and
    the output's."""
    ell_ranks = []
    for k, (term, shape) in enumerate(zip(terms, shapes)):
        named = len(term.replace("...", ""))
        if "..." in term:
            if named > len(shape):
                raise ShapeError(f"tc.einsum: operand {k} has {len(shape)} axes (shape {shape}) but its subscripts "
                                 f"'{term}' name {named}")
            ell_ranks.append(len(shape) - named)
        else:
            if named > len(shape):
                raise ShapeError(f"tc.einsum: the subscripts '{term}' of operand {k} name {named} axes but it has "
                                 f"{len(shape)} (shape {shape})")
            if named < len(shape):
                raise ShapeError(f"tc.einsum: operand {k} has {len(shape)} axes (shape {shape}) but its subscripts "
                                 f"'{term}' name {named}, and there is no '...' to broadcast the others")
            ell_ranks.append(0)
    ell = max(ell_ranks, default=0)
    ell_names = [f"_{d}" for d in range(ell)]  # broadcast axes (never letters)
    labels = []
    for term, r in zip(terms, ell_ranks):
        pre, _, post = term.partition("...") if "..." in term else (term, "", "")
        labels.append([*pre, *ell_names[ell - r:], *post])
    counts: dict[str, int] = {}
    for ls in labels:
        for ch in ls:
            if not ch.startswith("_"):
                counts[ch] = counts.get(ch, 0) + 1
    if out is None:  # numpy: the broadcast axes, then the labels used once, in code-point order
        return labels, [*ell_names, *sorted(c for c, n in counts.items() if n == 1)]
    seen = set()
    for ch in out.replace("...", ""):
        if ch in seen:
            raise ParseError(f"tc.einsum: the output subscripts of '{subscripts}' name '{ch}' more than once")
        if ch not in counts:
            raise ParseError(f"tc.einsum: output subscript '{ch}' of '{subscripts}' does not appear in any input")
        seen.add(ch)
    if "..." not in out and ell:
        raise ShapeError(f"tc.einsum: the operands of '{subscripts}' have {ell} broadcast ('...') axes but the "
                         f"output subscripts have no '...' to put them in")
    pre, _, post = out.partition("...") if "..." in out else (out, "", "")
    out_labels = [*pre, *(ell_names if "..." in out else []), *post]
    return labels, out_labels


def _sizes(labels: list[list[str]], shapes: list[tuple[int, ...]], subscripts: str) -> dict[str, int]:
    size: dict[str, int] = {}
    for k, (ls, shape) in enumerate(zip(labels, shapes)):
        mine: dict[str, int] = {}
        for ch, n in zip(ls, shape):
            if ch in mine and mine[ch] != n:
                raise ShapeError(f"tc.einsum: operand {k} repeats subscript '{ch}' over axes of extents {mine[ch]} "
                                 f"and {n}; a repeated subscript takes a diagonal of equal axes")
            mine[ch] = n
        for ch, n in mine.items():
            have = size.get(ch, 1)
            if n != 1 and have != 1 and n != have:
                what = "broadcast axes" if ch.startswith("_") else f"subscript '{ch}'"
                raise ShapeError(f"tc.einsum: {what} has extent {n} in operand {k} but {have} in an earlier "
                                 f"operand (shapes {', '.join(str(s) for s in shapes)}); extents must match or be 1")
            size[ch] = max(have, n) if n != 1 else have
    return size


def _name(label: str) -> str:
    return f"b{label[1:]}" if label.startswith("_") else ("u" + label.lower() if label.isupper() else label)


@functools.lru_cache(maxsize=4096)
def _op(inputs: tuple[tuple[str, ...], ...], output: tuple[str, ...], ranges: tuple) -> Op:
    names = [f"A{k}" for k in range(len(inputs))]
    reads = [f"{n}[{', '.join(idx)}]" if idx else f"{n}[0]" for n, idx in zip(names, inputs)]
    target = f"O[{', '.join(output)}]" if output else "O"
    return Op(f"{target} += {' * '.join(reads)}", ranges=dict(ranges) or None)


def einsum_op(subscripts: str, *operands: Any) -> tuple[Op, list[np.ndarray], tuple[int, ...], np.dtype]:
    """The op ``tc.einsum`` runs for these operands, the arrays to call it with (cast, 0-d ones as one
    element), the result's shape and dtype."""
    if not isinstance(subscripts, str):
        subscripts, ops_list = _parse_interleaved((subscripts, *operands))
        operands = tuple(ops_list)
    arrays = [a.data if isinstance(a, Tensor) else np.asarray(a) for a in operands]
    if not arrays:
        raise ArgumentError("tc.einsum: no operands given; einsum(subscripts, *operands)")
    for k, a in enumerate(arrays):
        if a.dtype.kind not in "biuf":
            raise DtypeError(f"tc.einsum: operand {k} has dtype {a.dtype}; tc.einsum takes bool, integer and "
                             f"floating-point arrays")
    terms, out = _split(subscripts, len(arrays))
    shapes = [a.shape for a in arrays]
    labels, out_labels = _expand(terms, out, shapes, subscripts)
    size = _sizes(labels, shapes, subscripts)
    dtype = np.result_type(*arrays)
    work = np.dtype(np.int64) if dtype.kind in "bu" or (dtype.kind == "i" and dtype.itemsize < 4) else dtype
    if work.kind == "f" and work.itemsize < 4:
        work = np.dtype(np.float32)
    out_shape = tuple(size.get(ch, 1) for ch in out_labels)
    inputs, cast = [], []
    for ls, a in zip(labels, arrays):
        idx = tuple("0" if n == 1 and size.get(ch, 1) != 1 else _name(ch) for ch, n in zip(ls, a.shape))
        inputs.append(idx)
        a = a.astype(work, copy=False)
        cast.append(a.reshape(1) if a.ndim == 0 else a)
    used = {i for idx in inputs for i in idx}
    output = tuple(_name(ch) for ch in out_labels)
    # an output label read only at 0 (every operand's axis has extent 1) still needs its range
    ranges = tuple(sorted((_name(ch), size.get(ch, 1)) for ch in out_labels if _name(ch) not in used))
    return _op(tuple(inputs), output, ranges), cast, out_shape, dtype


def einsum(subscripts: Any, *operands: Any, out: np.ndarray | None = None, dtype: Any = None, order: str = "K",
           casting: str = "safe", optimize: Any = False) -> np.ndarray | Tensor:
    """``numpy.einsum(subscripts, *operands)``, compiled: see the module docstring. On ``tc.Tensor``
    operands (floating point) it returns a Tensor and records the gradient. ``dtype`` and ``out`` as
    numpy's (``dtype``: operands cast first, by ``casting``'s rule); ``order`` and ``optimize`` change
    nothing here (one statement; the result is C-ordered)."""
    if any(isinstance(a, Tensor) for a in (subscripts, *operands)):
        return _on_tensors(subscripts, operands)
    if dtype is not None:
        want = np.dtype(dtype)
        if not isinstance(subscripts, str):
            subscripts, listed = _parse_interleaved((subscripts, *operands))
            operands = tuple(listed)
        cast = []
        for k, a in enumerate(operands):
            a = np.asarray(a)
            if not np.can_cast(a.dtype, want, casting=casting):
                raise DtypeError(f"tc.einsum: operand {k} of dtype {a.dtype} cannot be cast to {want} under "
                                 f"casting='{casting}'")
            cast.append(a.astype(want))
        operands = tuple(cast)
    result = _einsum(subscripts, operands)
    if out is None:
        return result
    if not isinstance(out, np.ndarray) or out.shape != np.shape(result):
        raise ShapeError(f"tc.einsum: out must be an array of shape {np.shape(result)}, got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    np.copyto(out, result, casting="same_kind" if casting == "safe" else casting)
    return out


def _einsum(subscripts: Any, operands: tuple) -> np.ndarray:
    op, arrays, out_shape, dtype = einsum_op(subscripts, *operands)
    if any(a.size == 0 for a in arrays):  # numpy: a sum over nothing is 0
        return np.zeros(out_shape, dtype)
    result = np.asarray(op(*arrays)).reshape(out_shape)
    if dtype == np.bool_:
        return result != 0
    return result.astype(dtype, copy=False)


def _on_tensors(subscripts: Any, operands: tuple) -> Tensor:
    if not isinstance(subscripts, str):
        subscripts, listed = _parse_interleaved((subscripts, *operands))
        operands = tuple(listed)
    tensors = [a if isinstance(a, Tensor) else Tensor(a) for a in operands]
    op, arrays, out_shape, dtype = einsum_op(subscripts, *tensors)
    if dtype.kind != "f" or any(t.dtype != dtype for t in tensors):
        raise DtypeError(f"tc.einsum: on tensors, every operand must have one floating-point dtype (gradients); "
                         f"got {', '.join(str(t.dtype) for t in tensors)}")
    out = op(*[t.reshape(1) if t.ndim == 0 else t for t in tensors])
    return out.reshape(out_shape) if tuple(out.shape) != out_shape else out
