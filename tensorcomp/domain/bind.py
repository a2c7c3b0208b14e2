"""Bind an op to concrete shapes: tensor shapes, dtypes and isl iteration domains.

For each statement, in order:

1. ``P`` is the set of integer points (one dimension per index) where every
   read is in bounds, every written index is >= 0 (and in bounds when the
   written tensor's shape is fixed), and every explicit ``ranges=`` bound
   holds.
2. Each reduction index (one that is not on the written side) gets the
   bounding box of P's projection onto it; no bound is an error naming it.
3. Each written index without an explicit range gets the largest box for which
   every read is in bounds *for every value* of the reduction indices:
   ``good = complement(proj_w(Rbox \\ P))`` (Tensor Comprehensions' rule).
4. The domain is ``P`` within those boxes (PlaidML's rule: every point where
   all accesses are in bounds), and a written tensor's extent along an axis
   is the maximum of its index expression over the domain, plus one.
"""

from __future__ import annotations

from dataclasses import dataclass

import islpy as isl

from ..errors import DtypeError, RangeError, ShapeError, op_label
from ..lang import types
from ..lang.ir import Call, Const, Index, Lin, Program, Statement, walk


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the bound op. ``pad`` is the (low, high) zero padding per axis."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str  # "input", "output" or "temporary"
    pad: tuple[tuple[int, int], ...] = ()
    pad_value: float = 0.0

    @property
    def logical_shape(self) -> tuple[int, ...]:
        """The shape the op's indices see (padding included)."""
        if not self.pad:
            return self.shape
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.shape, self.pad))


@dataclass(frozen=True)
class BoundStatement:
    """A statement with its index order, isl domain and extents."""

    stmt: Statement
    names: tuple[str, ...]  # the domain's dimensions, written side first
    domain: isl.Set
    extents: tuple[tuple[str, int, int], ...]  # (index, lo, hi) with lo <= index < hi
    dtype: str  # the stored dtype of the target
    expr_type: str  # the (possibly weak) type of the right-hand side

    def dim(self, name: str) -> str:
        return f"d{self.names.index(name)}"


@dataclass(frozen=True)
class Bound:
    """An op bound to shapes: every tensor and every statement's domain."""

    program: Program
    tensors: dict[str, TensorInfo]
    statements: tuple[BoundStatement, ...]
    param_types: dict[str, str]


def dim_interval(domain: isl.Set, pos: int) -> tuple[int | None, int | None]:
    lo, hi = domain.dim_min_val(pos), domain.dim_max_val(pos)
    lo_v = None if lo.is_infty() or lo.is_neginfty() or lo.is_nan() else lo.to_python()
    hi_v = None if hi.is_infty() or hi.is_neginfty() or hi.is_nan() else hi.to_python() + 1
    return lo_v, hi_v


def write_map(names: tuple[str, ...], index: tuple[Lin, ...], domain: isl.Set) -> isl.Map:
    """The map from each domain point to the element it writes (``[d...] -> [f(d)...]``)."""
    dim = {n: f"d{k}" for k, n in enumerate(names)}
    return isl.Map(f"{{ [{', '.join(dim[n] for n in names)}] -> "
                   f"[{', '.join(lin.to_isl(dim) for lin in index)}] }}").intersect_domain(domain)


def index_set(dims: int, constraints: list[str]) -> isl.Set:
    names = ", ".join(f"d{k}" for k in range(dims))
    body = " and ".join(constraints) if constraints else ""
    return isl.Set(f"{{ [{names}] : {body} }}" if body else f"{{ [{names}] }}")


class _Binder:
    def __init__(self, program: Program, source: str, ranges: dict[str, tuple[int, int]],
                 pad: dict[str, tuple[tuple[int, int], ...]], pad_value: dict[str, float],
                 fixed_shapes: dict[str, tuple[int, ...]]) -> None:
        self.program = program
        self.label = op_label(source)
        self.ranges = ranges
        self.pad = pad
        self.pad_value = pad_value
        self.fixed = fixed_shapes
        self.tensors: dict[str, TensorInfo] = {}

    def fail(self, cls: type, message: str) -> None:
        raise cls(f"{self.label}: {message}")

    # -- inputs ----------------------------------------------------------------------
    def add_input(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        rank = self.program.rank(name)
        if len(shape) != rank:
            self.fail(ShapeError, f"tensor {name} is indexed with {rank} indices but the array passed has rank "
                      f"{len(shape)} (shape {tuple(shape)})")
        if dtype not in types.SUPPORTED:
            self.fail(DtypeError, f"tensor {name} has dtype {dtype}, which is not supported; supported dtypes "
                      f"are float32, float64, int32, int64 and bool (convert with .astype(numpy.float32))")
        pad = self.pad.get(name, ())
        if pad and len(pad) != rank:
            self.fail(ShapeError, f"pad for tensor {name} has {len(pad)} axes but {name} has rank {rank}")
        self.tensors[name] = TensorInfo(name, tuple(int(n) for n in shape), dtype, "input", pad,
                                        float(self.pad_value.get(name, 0.0)))

    # -- statements ------------------------------------------------------------------
    def accesses_of(self, st: Statement) -> list[tuple[str, tuple[Lin, ...]]]:
        return [(a.tensor, a.index) for a in st.accesses()]

    def check_extents(self, st: Statement, target_shape: tuple[int, ...] | None) -> None:
        """A plain index used as several axes must have one extent (as in einsum)."""
        seen: dict[str, tuple[str, int, tuple[int, ...], int]] = {}
        uses = [(t, idx) for t, idx in self.accesses_of(st)]
        if target_shape is not None:
            uses.insert(0, (st.target, st.index))
        for tensor, index in uses:
            shape = target_shape if tensor == st.target else self.tensors[tensor].logical_shape
            real = target_shape if tensor == st.target else self.tensors[tensor].shape
            for axis, lin in enumerate(index):
                name = lin.plain_var
                if name is None or name in self.ranges:
                    continue
                extent = shape[axis]
                if name in seen and seen[name][3] != extent:
                    t0, a0, s0, e0 = seen[name]
                    self.fail(ShapeError, f"index '{name}' has extent {e0} in {t0} (axis {a0}, shape {s0}) but "
                              f"{extent} in {tensor} (axis {axis}, shape {real}) on line {st.line}")
                seen.setdefault(name, (tensor, axis, real, extent))

    def _constraints(self, st: Statement, dim: dict[str, str], target_shape: tuple[int, ...] | None) -> list[str]:
        """Every access in bounds, written indices >= 0, explicit ranges (isl syntax over ``dim``)."""
        constraints: list[str] = []
        for tensor, index in self.accesses_of(st):
            for axis, lin in enumerate(index):
                constraints.append(f"0 <= {lin.to_isl(dim)} < {self.tensors[tensor].logical_shape[axis]}")
        for axis, lin in enumerate(st.index):
            bound = f" < {target_shape[axis]}" if target_shape is not None else ""
            constraints.append(f"0 <= {lin.to_isl(dim)}{bound}")
        for name in dim:
            if name in self.ranges:
                lo, hi = self.ranges[name]
                constraints.append(f"{lo} <= {dim[name]} < {hi}")
        return constraints

    def bind_statement(self, st: Statement) -> BoundStatement:
        names = st.index_names()
        dim = {n: f"d{k}" for k, n in enumerate(names)}
        written = st.write_names()
        target_shape = self.fixed.get(st.target)
        self.check_extents(st, target_shape)

        constraints = self._constraints(st, dim, target_shape)
        P = index_set(len(names), constraints)

        # Indices bounded directly: reduction indices, and written indices that index a read axis on
        # their own. Each gets the bounding box of P's projection onto it.
        plain_in_reads = {lin.plain_var for _, idx in self.accesses_of(st) for lin in idx} - {None}
        direct = [n for n in names if n not in self.ranges and (n not in written or n in plain_in_reads)]
        boxes: dict[str, tuple[int, int]] = dict((n, self.ranges[n]) for n in names if n in self.ranges)
        plain_extent: dict[str, int] = {}
        for tensor, index in self.accesses_of(st):
            for axis, lin in enumerate(index):
                if lin.plain_var is not None:
                    plain_extent.setdefault(lin.plain_var, self.tensors[tensor].logical_shape[axis])
        for name in direct:
            if name in plain_extent:  # the whole axis it indexes (extents were checked to agree)
                lo, hi = 0, plain_extent[name]
            else:
                lo, hi = dim_interval(P, names.index(name))
            if lo is None or hi is None:
                self.fail(RangeError, f"index '{name}' on line {st.line} has no "
                          f"{'lower' if lo is None else 'upper'} bound; it must index a tensor axis on its own "
                          f"or be bounded with ranges={{'{name}': n}}")
            if hi <= lo:
                self.fail(RangeError, f"index '{name}' on line {st.line} has an empty range; check the shapes "
                          "of the tensors it indexes")
            boxes[name] = (lo, hi)

        # The other written indices get the largest box for which every read is in bounds for every
        # value of the directly bounded indices: good = complement(proj_free(Qbox \ P)).
        free = [n for n in written if n not in boxes]
        if free:
            order = free + [n for n in names if n not in free]
            odim = {n: f"d{k}" for k, n in enumerate(order)}
            nf, nq = len(free), len(order) - len(free)
            P2 = index_set(len(order), [c for c in self._constraints(st, odim, target_shape)])
            qbox = [f"{boxes[n][0]} <= {odim[n]} < {boxes[n][1]}" for n in order[nf:]]
            if target_shape is None and nq:
                bad = index_set(len(order), qbox).subtract(P2).project_out(isl.dim_type.set, nf, nq)
                good = index_set(nf, []).subtract(bad).intersect(P2.project_out(isl.dim_type.set, nf, nq))
            else:
                good = P2.project_out(isl.dim_type.set, nf, nq)
            for k, name in enumerate(free):
                lo, hi = dim_interval(good, k)
                if good.is_empty() or (lo is not None and hi is not None and hi <= lo):
                    self.fail(RangeError, f"index '{name}' of {st.target} has an empty range on line {st.line}: "
                              f"no value keeps every read in bounds; check the shapes ({self.shapes_text(st)})")
                if hi is None:
                    only_written = all(name not in lin.names() for _, idx in self.accesses_of(st) for lin in idx)
                    why = ("it appears only on the written side" if only_written
                           else "no read bounds it")
                    self.fail(RangeError, f"index '{name}' of {st.target} has no upper bound on line {st.line}: "
                              f"{why}; bound it with ranges={{'{name}': n}}")
                if lo is None:
                    self.fail(RangeError, f"index '{name}' of {st.target} has no lower bound on line {st.line}; "
                              f"bound it with ranges={{'{name}': (lo, hi)}}")
                boxes[name] = (lo, hi)
        for name in names:
            if name in self.ranges:
                boxes.setdefault(name, self.ranges[name])
        box = [f"{boxes[n][0]} <= {dim[n]} < {boxes[n][1]}" for n in names if n in boxes]
        boxed = index_set(len(names), box)
        domain = P.intersect(boxed).coalesce()
        if domain.is_equal(boxed):
            domain = boxed  # the same set, stated without redundant constraints (simpler loops)
        if domain.is_empty():
            self.fail(RangeError, f"statement on line {st.line} has an empty iteration domain: no point keeps "
                      f"every access in bounds; check the shapes ({self.shapes_text(st)}) and ranges")
        extents = tuple((n, *dim_interval(domain, k)) for k, n in enumerate(names))

        tensor_types = {t: info.dtype for t, info in self.tensors.items()}
        expr_type = types.infer(st.expr, tensor_types, self.param_types)
        for e in walk(st.expr):  # numpy: "Integers to negative integer powers are not allowed"
            if isinstance(e, Call) and e.fn == "pow" and isinstance(e.args[1], Const) \
                    and not isinstance(e.args[1].value, bool) and isinstance(e.args[1].value, int) \
                    and e.args[1].value < 0 and types.infer(e.args[0], tensor_types, self.param_types) in \
                    ("int32", "int64", "int", "bool"):
                self.fail(DtypeError, f"an integer to a negative integer power on line {st.line} "
                          f"('{st}'); write the exponent as a float (e.g. ** -1.0) for a float result")
        dtype = types.result_type(st.reduce, expr_type)
        if st.reduce is None and not domain.is_empty():
            if not write_map(names, st.index, domain).is_injective():
                self.fail(RangeError, f"statement on line {st.line} writes some elements of {st.target} more than "
                          "once with '='; use '+=' or a reduction such as max(...) to combine them")
        if target_shape is None:
            shape = []
            for lin in st.index:
                aff = isl.Aff(f"{{ [{', '.join(dim[n] for n in names)}] -> [({lin.to_isl(dim)})] }}")
                shape.append(domain.max_val(aff).to_python() + 1)
            target_shape = tuple(shape)
        role = "output" if st.target in self.program.outputs else "temporary"
        self.tensors[st.target] = TensorInfo(st.target, target_shape, dtype, role)
        return BoundStatement(st, names, domain, extents, dtype, expr_type)

    def shapes_text(self, st: Statement) -> str:
        seen = dict.fromkeys(t for t, _ in self.accesses_of(st))
        return ", ".join(f"{t}: {self.tensors[t].shape}" for t in seen)


def bind(program: Program, source: str, inputs: dict[str, tuple[tuple[int, ...], str]],
         param_types: dict[str, str], ranges: dict[str, tuple[int, int]] | None = None,
         pad: dict[str, tuple[tuple[int, int], ...]] | None = None, pad_value: dict[str, float] | None = None,
         fixed_shapes: dict[str, tuple[int, ...]] | None = None) -> Bound:
    """Infer every tensor's shape and every statement's domain for these input shapes."""
    b = _Binder(program, source, ranges or {}, pad or {}, pad_value or {}, fixed_shapes or {})
    b.param_types = param_types
    for name in program.inputs:
        shape, dtype = inputs[name]
        b.add_input(name, shape, dtype)
    statements = tuple(b.bind_statement(st) for st in program.statements)
    _check_widths(statements, source)
    return Bound(program, b.tensors, statements, dict(param_types))


INDEX_LIMIT = 2 ** 62  # index arithmetic is 64-bit; below this no sum of two terms can wrap


def _check_widths(statements, source: str) -> None:
    """Every index expression, and every partial sum the generated code forms of it, stays well inside
    the 64-bit integers over the statement's domain (isl reasons about integers exactly; the code
    does not): beyond, a RangeError instead of a wrapped, out-of-bounds address."""
    for bs in statements:
        box = {n: max(abs(lo), abs(hi)) for n, lo, hi in bs.extents}
        st = bs.stmt
        lins = [*st.index, *(lin for a in st.accesses() for lin in a.index),
                *(e.lin for e in walk(st.expr) if isinstance(e, Index))]
        for lin in lins:
            size = lin.magnitude(box)
            if size >= INDEX_LIMIT:
                raise RangeError(f"{op_label(source)}: index expression '{lin}' on line {st.line} reaches "
                                 f"{size} over the statement's domain, beyond what 64-bit index arithmetic holds "
                                 f"(< 2**62); use smaller constants or ranges")
