"""Recurrences: ops whose statements read a tensor they write at the previous point along one index.

    H[0, j] = H0[j]                               the initial value (the index's first point)
    S[t, j] += H[t - 1, k] * W[k, j]              a step reads the previous H ...
    H[t, j] = tanh(S[t, j] + X[t, j] * U[j])      ... and writes the current one

``tc.op`` returns a ``Recurrence`` for such a source. The index read shifted (``t``, the scan index) is
found from the source, and the op is checked to be a recurrence along that one index: each shifted read
is ``R[..., t - 1, ...]`` with every other position as in a write, only ``t`` shifted (a read shifted
along two indices, a shift other than 1, or ``t`` in another form is a ScheduleError), every statement
writes along ``t`` (or is the initial value, at ``t = 0``), and every recurrent tensor has an initial
value. It then runs as two ordinary ops (the language's own compiler, domains and derived gradients):
``init`` (the statements at ``t = 0``) once, and ``step`` (every other statement with ``t`` removed:
``R[t - 1]`` is an input, ``R[t]`` an output, inputs indexed by ``t`` come sliced) for each later
point, serial along ``t`` — parallel across the other indices inside each step. The outputs are the
recurrent tensors, stacked along ``t``. Its gradient (``tc.grad``, and on tensors) runs the step's
derived gradient backwards along ``t`` (back-propagation through time), then the init's.
"""

from __future__ import annotations

import ast
import textwrap
import warnings
from typing import Any

import numpy as np

from .autodiff import grad as derive
from . import opdef
from .errors import ArgumentError, ParseError, RangeError, ScheduleError, ShapeError, TraceError, op_label
from .lang.lookups import appearance, subscript_items
from .opdef import Op
from .tensor import apply


def _shift(item: ast.expr) -> tuple[str, int] | None:
    """``t - c`` as (t, c) for a positive int c, else None."""
    if isinstance(item, ast.BinOp) and isinstance(item.op, ast.Sub) and isinstance(item.left, ast.Name) and \
            isinstance(item.right, ast.Constant) and type(item.right.value) is int and item.right.value > 0:
        return item.left.id, item.right.value
    return None


def is_recurrence(source: str) -> bool:
    """Whether some statement reads a tensor that the op writes, at a shifted point."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Python's warnings about odd literals: the parser reports errors
            tree = ast.parse(textwrap.dedent(source).strip("\n"))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    written = {_target(st)[0] for st in tree.body if _target(st)}
    for st in tree.body:
        if isinstance(st, (ast.Assign, ast.AugAssign)):
            for n in ast.walk(st.value):
                if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in written and \
                        any(_shift(it) for it in subscript_items(n)):
                    return True
    return False


def _one(a: np.ndarray) -> np.ndarray:
    """A 0-d slice as one element (the step reads it as ``X[0]``)."""
    return a.reshape(1) if a.ndim == 0 else a


def _target(st: ast.stmt) -> tuple[str, ast.Subscript] | None:
    node = st.targets[0] if isinstance(st, ast.Assign) and len(st.targets) == 1 else \
        st.target if isinstance(st, ast.AugAssign) else None
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return node.value.id, node
    return None


class _Split:
    """The source cut into the init and step programs (see the module docstring)."""

    def __init__(self, source: str) -> None:
        self.label = op_label(source)
        tree = ast.parse(source)
        self.body = tree.body
        targets = [_target(st) for st in self.body]
        if not all(targets):
            raise ParseError(f"{self.label}: every statement of a recurrence writes a tensor with indices")
        self.written = {name for name, _ in targets}
        self.scan, self.axis = self._scan_index()
        self.recurrent = sorted({n.value.id for st in self.body for n in ast.walk(st.value)
                                 if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name)
                                 and n.value.id in self.written and any(_shift(it) for it in subscript_items(n))})
        self.init, self.step = [], []
        init_names: set[str] = set()
        for st, (name, target) in zip(self.body, targets):
            item = subscript_items(target)[self.axis[name]] if name in self.axis else None
            reads = {n.value.id for n in ast.walk(st.value) if isinstance(n, ast.Subscript)
                     and isinstance(n.value, ast.Name)}
            uses_scan = any(isinstance(n, ast.Name) and n.id == self.scan for n in ast.walk(st))
            if isinstance(item, ast.Constant) and item.value == 0 and name in self.recurrent:
                self.init.append(st)
                init_names.add(name)
            elif isinstance(item, ast.Name) and item.id == self.scan:
                self.step.append(st)
            elif name not in self.axis and not uses_scan and reads & self.written <= init_names:
                self.init.append(st)  # a temporary of the initial value (read by it, from the inputs)
                init_names.add(name)
            else:
                raise ScheduleError(f"{self.label}: statement on line {st.lineno} writes {name} but not along the "
                                    f"scan index '{self.scan}' (nor its initial value at {self.scan} = 0); a "
                                    f"recurrence's statements all run along '{self.scan}'")
        missing = [r for r in self.recurrent if not any(_target(st)[0] == r for st in self.init)]
        if missing:
            raise RangeError(f"{self.label}: {missing[0]} is read at {self.scan} - 1 but has no initial value; write "
                             f"one at {self.scan} = 0, e.g. {missing[0]}[0, ...] = ...")

    def _scan_index(self) -> tuple[str, dict[str, int]]:
        """The one index reads are shifted along, and the position it takes in each written tensor."""
        scans, axis = set(), {}
        for st in self.body:
            for n in ast.walk(st.value):
                if not (isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in self.written):
                    continue
                shifted = [(k, _shift(it)) for k, it in enumerate(subscript_items(n)) if _shift(it)]
                if len(shifted) > 1:
                    raise ScheduleError(f"{self.label}: '{ast.unparse(n)}' on line {st.lineno} reads "
                                        f"{n.value.id} shifted along {len(shifted)} indices; a recurrence is carried "
                                        f"by one index only")
                for k, (name, c) in shifted:
                    if c != 1:
                        raise ScheduleError(f"{self.label}: '{ast.unparse(n)}' on line {st.lineno} reads "
                                            f"{n.value.id} at {name} - {c}; a recurrence reads the previous point "
                                            f"({name} - 1)")
                    scans.add(name)
                    if axis.setdefault(n.value.id, k) != k:
                        raise ScheduleError(f"{self.label}: {n.value.id} is read shifted at two positions")
        if len(scans) != 1:
            raise ScheduleError(f"{self.label}: reads are shifted along {', '.join(sorted(scans))}; a recurrence is "
                                f"carried by one index only")
        scan = scans.pop()
        for st in self.body:
            name, target = _target(st)
            for k, it in enumerate(subscript_items(target)):
                if isinstance(it, ast.Name) and it.id == scan:
                    axis.setdefault(name, k)
        return scan, axis


class _Slicer(ast.NodeTransformer):
    """Rewrites a statement for one point of the scan: the scan axis removed from every access."""

    def __init__(self, split: _Split, inputs_axis: dict[str, int]) -> None:
        self.split, self.inputs_axis = split, inputs_axis

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if not isinstance(node.value, ast.Name):
            return node
        name, items, scan = node.value.id, subscript_items(node), self.split.scan
        uses = [k for k, it in enumerate(items) if any(isinstance(m, ast.Name) and m.id == scan for m in ast.walk(it))]
        prev = False
        if name in self.split.written and name not in self.split.axis and not uses:
            return node  # a temporary of the initial value: no scan axis
        if name in self.split.written:
            k = self.split.axis.get(name)
            item = items[k] if k is not None else None
            prev = _shift(item) is not None
            plain = isinstance(item, ast.Name) and item.id == scan
            initial = isinstance(item, ast.Constant) and item.value == 0 and isinstance(node.ctx, ast.Store)
            if k is None or not (plain or prev or initial) or uses not in ([k], []):
                raise ScheduleError(f"{self.split.label}: '{ast.unparse(node)}' indexes {name} along the scan index "
                                    f"'{scan}' in a form a step cannot slice (write {name}[..., {scan}, ...], "
                                    f"{name}[..., {scan} - 1, ...] or, for its initial value, {name}[..., 0, ...])")
        else:
            if not uses:
                return node
            k = uses[0]
            if len(uses) > 1 or not (isinstance(items[k], ast.Name) and items[k].id == scan):
                raise ScheduleError(f"{self.split.label}: '{ast.unparse(node)}' reads input {name} along the scan "
                                    f"index '{scan}' in a form a step cannot slice (write {name}[..., {scan}, ...])")
            if self.inputs_axis.setdefault(name, k) != k:
                raise ScheduleError(f"{self.split.label}: input {name} is indexed by '{scan}' at two positions")
        rest = [self.visit(it) for j, it in enumerate(items) if j != k]
        new = f"{name}__prev" if prev else name
        sl = ast.Tuple(rest, ast.Load()) if len(rest) > 1 else rest[0] if rest else ast.Constant(0)
        return ast.copy_location(ast.Subscript(ast.Name(new, ast.Load()), sl, node.ctx), node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == self.split.scan:  # the scan index as a value: the step's point, a scalar
            return ast.copy_location(ast.Name(f"{self.split.scan}__point", ast.Load()), node)
        return node


class Recurrence:
    """An op with a recurrence (see the module docstring): called like an ``Op``, differentiable."""

    def __init__(self, source: str, ranges: dict[str, Any] | None = None) -> None:
        self.source = textwrap.dedent(source).strip("\n")
        self.label = op_label(self.source)
        split = _Split(self.source)
        self.scan, self.recurrent = split.scan, tuple(split.recurrent)
        self.axis = {r: split.axis[r] for r in split.recurrent}
        self.ranks = {r: next(len(subscript_items(_target(st)[1])) for st in split.body if _target(st)[0] == r)
                      for r in split.recurrent}
        self.sliced: dict[str, int] = {}  # input -> its axis indexed by the scan index
        slicer = _Slicer(split, self.sliced)
        step_src = [ast.unparse(slicer.visit(ast.parse(ast.unparse(st)).body[0])) for st in split.step]
        init_src = [ast.unparse(slicer.visit(ast.parse(ast.unparse(st)).body[0])) for st in split.init]
        # every recurrent tensor leaves the step (a copy where a later statement of the step reads it)
        read_in_step = {n.value.id for text in step_src for n in ast.walk(ast.parse(text).body[0].value)
                        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name)}
        for r in self.recurrent:
            if r in read_in_step:
                rank = self.ranks[r] - 1
                idx = ", ".join(f"e{k}" for k in range(rank))
                step_src.append(f"{r}__out[{idx}] = {r}[{idx}]" if rank else f"{r}__out[0] = {r}[0]")
        step_ranges = {k: v for k, v in (ranges or {}).items() if k != self.scan}
        try:
            self.step_op = Op("\n".join(step_src), ranges=step_ranges or None)
            self.init_op = Op("\n".join(init_src), ranges=step_ranges or None)
        except Exception as exc:
            raise type(exc)(f"{self.label}: {exc}") from None
        for r in self.recurrent:
            if r not in self.init_op.outputs:
                raise ScheduleError(f"{self.label}: the initial value of {r} is read by another statement at "
                                    f"{self.scan} = 0; write it from the inputs alone")
        self.step_outputs = {r: (f"{r}__out" if r in read_in_step else r) for r in self.recurrent}
        if any(o not in self.step_op.outputs for o in self.step_outputs.values()) or \
                len(self.step_op.outputs) != len(self.recurrent):
            extra = [o for o in self.step_op.outputs if o not in self.step_outputs.values()]
            raise ScheduleError(f"{self.label}: a recurrence's outputs are its recurrent tensors "
                                f"({', '.join(self.recurrent)}); {', '.join(extra) or 'a step output'} would be "
                                f"another: compute it in an op of its own from the result")
        self.extent = (ranges or {}).get(self.scan)
        names = [*self.init_op.inputs, *[i for i in self.step_op.inputs if not i.endswith("__prev")]]
        order = appearance(split.body)
        self.inputs = tuple(sorted(dict.fromkeys(names), key=lambda n: order.index(n) if n in order else len(order)))
        self.outputs = self.recurrent
        self.params = tuple(p for p in dict.fromkeys((*self.init_op.params, *self.step_op.params))
                            if p != f"{self.scan}__point")
        self.given_ranges = {}
        self.lookup_checks = ()
        self.ident = ("recurrence", self.source, tuple(sorted((ranges or {}).items())))

    def __repr__(self) -> str:
        return f"tc.op({self.source!r})  # a recurrence along {self.scan}"

    # -- running ----------------------------------------------------------------------------------
    def _length(self, arrays: dict[str, np.ndarray]) -> int:
        sizes = {name: arrays[name].shape[axis] for name, axis in self.sliced.items() if name in arrays}
        if self.extent is not None:
            sizes["ranges"] = int(self.extent)
        if not sizes:
            raise RangeError(f"{self.label}: the scan index '{self.scan}' indexes no input; bound it with "
                             f"ranges={{'{self.scan}': n}}")
        if len(set(sizes.values())) != 1:
            raise ShapeError(f"{self.label}: the scan index '{self.scan}' has different extents: "
                             + ", ".join(f"{k}: {v}" for k, v in sizes.items()))
        return sizes.popitem()[1]

    def _named(self, arrays: tuple) -> dict[str, np.ndarray]:
        if len(arrays) != len(self.inputs):
            raise ArgumentError(f"{self.label}: takes {len(self.inputs)} input tensors ({', '.join(self.inputs)}) "
                                f"but {len(arrays)} were given")
        return {n: np.asarray(a) for n, a in zip(self.inputs, arrays)}

    def _step_args(self, named: dict, prev: dict, t: int) -> list:
        out = []
        for name in self.step_op.inputs:
            if name.endswith("__prev"):
                out.append(_one(prev[name[:-len("__prev")]]))
            elif name in self.sliced:
                out.append(_one(np.take(named[name], t, axis=self.sliced[name])))
            else:
                out.append(named[name])
        return out

    def _unpoint(self, r: str, value: np.ndarray) -> np.ndarray:
        """A step's slice of recurrent tensor ``r`` (a 0-d array when ``r`` has the scan axis only)."""
        return value.reshape(()) if self.ranks[r] == 1 else value

    def _scalars(self, op: Op, params: dict, t: int) -> dict:
        return {p: (t if p == f"{self.scan}__point" else params[p]) for p in op.params}

    def run(self, arrays: tuple, params: dict) -> tuple[list[dict], dict]:
        """Every point's recurrent slices (a list over t of {tensor: slice}) and the named inputs."""
        named = self._named(arrays)
        n = self._length(named)
        first = self.init_op(*[named[i] for i in self.init_op.inputs],
                             **self._scalars(self.init_op, params, 0))
        first = first if isinstance(first, tuple) else (first,)
        points = [{r: self._unpoint(r, v) for r, v in zip(self.init_op.outputs, first)}]
        for t in range(1, n):
            out = self.step_op(*self._step_args(named, points[-1], t), **self._scalars(self.step_op, params, t))
            out = dict(zip(self.step_op.outputs, out if isinstance(out, tuple) else (out,)))
            points.append({r: self._unpoint(r, out[self.step_outputs[r]]) for r in self.recurrent})
        return points, named

    def __call__(self, *arrays: Any, **params: Any):
        if opdef.recording():
            raise TraceError(f"tc.compile: {self.label} is a recurrence, which a compiled step cannot hold yet (its "
                             f"points are stacked in Python); call the step without tc.compile")
        for a in arrays:
            if getattr(a, "records_gradients", False):
                return apply(self, *arrays, **params)
        points, _ = self.run(arrays, params)
        outs = tuple(np.stack([p[r] for p in points], axis=self.axis[r]) for r in self.recurrent)
        return outs[0] if len(outs) == 1 else outs

    def gradient_op(self, wrt) -> "RecurrenceGrad":
        """``tc.grad`` of a recurrence."""
        return RecurrenceGrad(self, wrt)


class RecurrenceGrad:
    """The gradient of a recurrence: its inputs, then one gradient per output; back-propagation through
    the scan (the step's derived gradient from the last point to the first, then the init's)."""

    def __init__(self, base: Recurrence, wrt) -> None:
        names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
        for n in names:
            if n not in base.inputs:
                raise ArgumentError(f"tc.grad: {base.label}: op has no input '{n}'; its inputs are: "
                                    f"{', '.join(base.inputs)}")
        self.base, self.wrt, self.as_tuple = base, names, not isinstance(wrt, str)
        self.inputs = (*base.inputs, *(f"d{o}" for o in base.outputs))
        self.outputs = tuple(f"d{n}" for n in names)
        self.params = base.params
        self.label = f"gradient of {base.label}"
        step_wrt = [i for i in base.step_op.inputs if i.endswith("__prev") or i in names]
        init_wrt = [i for i in base.init_op.inputs if i in names]
        self.step_grad = derive(base.step_op, step_wrt) if step_wrt else None
        self.step_wrt, self.init_wrt = step_wrt, init_wrt
        self.init_grad = derive(base.init_op, init_wrt) if init_wrt else None
        self.source = "\n".join(
            [f"# backwards along {base.scan}: the step's gradient", self.step_grad.source if self.step_grad else ""]
            + ([f"# then at {base.scan} = 0", self.init_grad.source] if self.init_grad else []))

    def __call__(self, *arrays: Any, **params: Any):
        b = self.base
        n_in = len(b.inputs)
        points, named = b.run(arrays[:n_in], params)
        d_out = {o: np.asarray(a) for o, a in zip(b.outputs, arrays[n_in:])}
        grads = {n: np.zeros(named[n].shape, np.result_type(named[n], np.float32)) for n in self.wrt}
        carry = {r: 0.0 for r in b.recurrent}
        for t in range(len(points) - 1, 0, -1):
            d_step = [_one(np.take(d_out[r], t, axis=b.axis[r]) + np.reshape(carry[r], ()) if b.ranks[r] == 1
                           else np.take(d_out[r], t, axis=b.axis[r]) + carry[r]) for r in b.recurrent]
            d_ordered = [d_step[b.recurrent.index(next(r for r, o in b.step_outputs.items() if o == out))]
                         for out in b.step_op.outputs]
            res = self.step_grad(*b._step_args(named, points[t - 1], t), *d_ordered,
                                 **b._scalars(b.step_op, params, t))
            res = res if isinstance(res, tuple) else (res,)
            carry = {r: 0.0 for r in b.recurrent}
            for name, g in zip(self.step_wrt, res):
                if name.endswith("__prev"):
                    carry[name[:-len("__prev")]] = g
                elif name in b.sliced:
                    idx = [slice(None)] * grads[name].ndim
                    idx[b.sliced[name]] = t
                    grads[name][tuple(idx)] += g.reshape(grads[name][tuple(idx)].shape)
                else:
                    grads[name] += g
        if self.init_grad is not None:
            d0 = {r: _one(np.take(d_out[r], 0, axis=b.axis[r]) + np.reshape(carry[r], ()) if b.ranks[r] == 1 else
                          np.take(d_out[r], 0, axis=b.axis[r]) + carry[r]) for r in b.recurrent}
            res = self.init_grad(*[named[i] for i in b.init_op.inputs], *[d0[o] for o in b.init_op.outputs],
                                 **b._scalars(b.init_op, params, 0))
            res = res if isinstance(res, tuple) else (res,)
            for name, g in zip(self.init_wrt, res):  # (the initial value reads inputs whole)
                grads[name] += g
        out = tuple(grads[n] for n in self.wrt)
        return out if self.as_tuple else out[0]


def op(source: str, ranges: dict[str, Any] | None = None, **options: Any):
    """``tc.op``: an ``Op``, or a ``Recurrence`` when a statement reads a tensor the op writes at the
    previous point along an index."""
    if isinstance(source, str) and is_recurrence(source):
        if any(v for v in options.values()):
            raise ArgumentError(f"{op_label(source)}: a recurrence takes ranges only (no pad, schedule or "
                                f"use_tuned)")
        return Recurrence(source, ranges)
    return Op(source, ranges=ranges, **options)
