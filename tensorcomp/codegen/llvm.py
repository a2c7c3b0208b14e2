"""Loop nest -> LLVM IR for the host CPU.

The kernel is ``void kernel(ptr b0, ..., ptr bN, <params>)``: one pointer per
tensor (inputs, outputs, temporaries; all ``noalias``, as outputs and
temporaries are fresh allocations and inputs are only read), then the scalar
parameters (``double`` for floats, ``i64`` for ints). Strides are compiled in
as byte constants, so any strided view is read in place. Loops are plain
counted loops; LLVM's loop and SLP vectorizers do the rest at -O3, helped by
``noalias`` and by ``reassoc contract`` on float arithmetic (reductions may be
reassociated, as in every BLAS).
"""

from __future__ import annotations

import re

from llvmlite import ir

from ..domain import Bound, TensorInfo
from ..lang import types
from ..lang.ir import Access, Call, Const, Expr, Index, Lin, Param, FloorDiv
from ..schedule.loopnest import Compute, Fill, For, IConst, IExpr, If, IVar, LoopNest, Node, Tile, to_lin
from ..schedule.tiles import padded
from ..strides import BufferStrides
from .llvm_math import exp_f32
from .llvm_tiles import F64, FAST, I1, I8, I64, MEM, PTR, REG, TileEmitter, _TileBody, _VectorSumBody, _VectorTileBody


class _FunctionBuilder(TileEmitter):
    """Builds one kernel's LLVM module: the whole-kernel entry, one entry per stage, the Python entry."""

    def __init__(self, nest: LoopNest, bound: Bound, buffers: list[str], buffer_strides: dict[str, BufferStrides],
                 name: str) -> None:
        self.nest, self.bound, self.buffer_strides = nest, bound, buffer_strides
        self.buffers, self.name = buffers, name
        self.module = ir.Module(name=name)
        self._loop_ids: list = []
        self.param_names = list(bound.program.params)
        self.param_types = {p: types.concrete(bound.param_types[p]) for p in self.param_names}
        self.vars: dict[str, ir.Value] = {}
        self.slice: tuple[ir.Value, ir.Value] | None = None
        self.loop_env: dict[str, Lin] | None = None  # the current statement's indices in loop variables
        self._lane_mask: ir.Value | None = None  # inside a vector tile's partial last vector: its lanes
        self.fn = self.function(name, ranged=False)

    def function(self, name: str, ranged: bool, buffers: list[str] | None = None) -> ir.Function:
        """Start ``void name(ptr bufs..., [i64 lo, i64 hi,] params...)`` and point the builder at it
        (``buffers``: those it takes, all by default)."""
        params = self.param_names
        buffers = self.buffers if buffers is None else buffers
        extra = [I64, I64] if ranged else []
        argtys = [PTR] * len(buffers) + extra + \
            [F64 if types.is_float(self.param_types[p]) else I64 for p in params]
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), argtys), name=name)
        nb = len(buffers)
        for k, arg in enumerate(fn.args):
            if k < nb:
                arg.name = f"b_{buffers[k]}"
                arg.add_attribute("noalias")
        if ranged:
            fn.args[nb].name, fn.args[nb + 1].name = "slice_lo", "slice_hi"
        for k, p in enumerate(params):
            fn.args[nb + len(extra) + k].name = f"p_{p}"
        self.ptr = {t: fn.args[k] for k, t in enumerate(buffers)}
        self.params = {p: fn.args[nb + len(extra) + k] for k, p in enumerate(params)}
        self.builder = ir.IRBuilder(fn.append_basic_block("entry"))
        self.slice = (fn.args[nb], fn.args[nb + 1]) if ranged else None
        self.fn = fn
        return fn

    # -- integer (index) expressions -------------------------------------------------------------
    def iexpr(self, e: IExpr) -> ir.Value:
        b = self.builder
        if isinstance(e, IConst):
            return ir.Constant(I64, e.value)
        if isinstance(e, IVar):
            return self.vars[e.name]
        a = [self.iexpr(x) for x in e.args]
        op = e.op
        if op == "add":
            return b.add(a[0], a[1], flags=["nsw"])
        if op == "sub":
            return b.sub(a[0], a[1], flags=["nsw"])
        if op == "mul":
            return b.mul(a[0], a[1], flags=["nsw"])
        if op == "neg":
            return b.sub(ir.Constant(I64, 0), a[0], flags=["nsw"])
        if op == "floordiv":
            return self.floordiv(a[0], a[1])
        if op == "mod":
            return b.sub(a[0], b.mul(self.floordiv(a[0], a[1]), a[1]))
        if op == "rem":
            return b.srem(a[0], a[1])
        if op in ("min", "max"):
            cmp = b.icmp_signed("<" if op == "min" else ">", a[0], a[1])
            return b.select(cmp, a[0], a[1])
        if op == "select":
            return b.select(a[0], a[1], a[2])
        if op in ("eq", "ne", "lt", "le", "gt", "ge"):
            sym = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[op]
            return b.icmp_signed(sym, a[0], a[1])
        if op == "and":
            return b.and_(a[0], a[1])
        if op == "or":
            return b.or_(a[0], a[1])
        raise AssertionError(op)

    def floordiv(self, x: ir.Value, d: ir.Value) -> ir.Value:
        """Floor division (Python's //) for a positive divisor."""
        b = self.builder
        if isinstance(d, ir.Constant) and isinstance(x, ir.Constant):
            return ir.Constant(I64, x.constant // d.constant)
        q = b.sdiv(x, d)
        fix = b.and_(b.icmp_signed("!=", b.mul(q, d), x), b.icmp_signed("<", x, ir.Constant(I64, 0)))
        return b.sub(q, b.zext(fix, I64))

    def lin(self, lin: Lin, env: dict[str, ir.Value]) -> ir.Value:
        b = self.builder
        total: ir.Value = ir.Constant(I64, lin.const)
        for atom, coef in lin.terms:
            if isinstance(atom, str):
                v = env[atom]
            else:
                num = self.lin(atom.num, env)
                d = ir.Constant(I64, atom.den)
                q = self.floordiv(num, d)
                v = q if isinstance(atom, FloorDiv) else b.sub(num, b.mul(q, d))
            term = v if coef == 1 else b.mul(v, ir.Constant(I64, coef), flags=["nsw"])
            total = term if (isinstance(total, ir.Constant) and total.constant == 0) else \
                b.add(total, term, flags=["nsw"])
        return total

    # -- memory ------------------------------------------------------------------------------------
    def address(self, tensor: str, index: list[ir.Value]) -> ir.Value:
        b = self.builder
        off: ir.Value = ir.Constant(I64, 0)
        for v, stride in zip(index, self.buffer_strides[tensor].strides):
            if stride == 0:
                continue
            term = b.mul(v, ir.Constant(I64, stride), flags=["nsw"])
            off = term if (isinstance(off, ir.Constant) and off.constant == 0) else b.add(off, term, flags=["nsw"])
        return b.gep(self.ptr[tensor], [off], source_etype=I8, inbounds=True)

    def load(self, info: TensorInfo, index: list[ir.Value]) -> ir.Value:
        return self._load(info, self.address(info.name, index))

    def load_at(self, info: TensorInfo, offset: ir.Value) -> ir.Value:
        return self._load(info, self.builder.gep(self.ptr[info.name], [offset], source_etype=I8, inbounds=True))

    def _load(self, info: TensorInfo, ptr: ir.Value) -> ir.Value:
        b = self.builder
        value = b.load(ptr, typ=MEM[info.dtype], align=self.buffer_strides[info.name].align)
        # a bool byte is true when non-zero (numpy's view of a byte 2 written through a uint8 view)
        return b.icmp_unsigned("!=", value, ir.Constant(value.type, 0)) if info.dtype == "bool" else value

    def store(self, info: TensorInfo, index: list[ir.Value] | ir.Value, value: ir.Value) -> None:
        """Store at index values, or at a byte offset (a single value)."""
        if info.dtype == "bool":
            value = self.builder.zext(value, I8)
        ptr = self.builder.gep(self.ptr[info.name], [index], source_etype=I8, inbounds=True) \
            if isinstance(index, ir.Value) else self.address(info.name, index)
        self.builder.store(value, ptr, align=self.buffer_strides[info.name].align)

    def folded_offset(self, tensor: str, index: tuple[Lin, ...]) -> ir.Value | None:
        """The byte offset as one quasi-affine expression of the loop variables, simplified
        symbolically (None when the current statement's indices are not affine in them)."""
        if self.loop_env is None:
            return None
        total = Lin()
        for lin, stride in zip(index, self.buffer_strides[tensor].strides):
            total = total + lin.rename(self.loop_env) * stride
        return self.lin(total.expand_mod(), self.vars)

    def read(self, access: Access, env: dict[str, ir.Value]) -> ir.Value:
        """A tensor read; padded axes read the pad value outside the real bounds."""
        b = self.builder
        info = self.bound.tensors[access.tensor]
        if not padded(info):
            off = self.folded_offset(access.tensor, access.index)
            if off is not None:
                return self.load_at(info, off)
            return self.load(info, [self.lin(lin, env) for lin in access.index])
        idx = [self.lin(lin, env) for lin in access.index]
        valid: ir.Value = ir.Constant(I1, 1)
        safe = []
        for v, n, (lo, hi) in zip(idx, info.shape, info.pad):
            if not (lo or hi):
                safe.append(v)
                continue
            real = b.sub(v, ir.Constant(I64, lo))
            inside = b.and_(b.icmp_signed(">=", real, ir.Constant(I64, 0)),
                            b.icmp_signed("<", real, ir.Constant(I64, n)))
            valid = b.and_(valid, inside)
            clamped = b.select(b.icmp_signed("<", real, ir.Constant(I64, 0)), ir.Constant(I64, 0), real)
            clamped = b.select(b.icmp_signed(">", clamped, ir.Constant(I64, n - 1)), ir.Constant(I64, n - 1), clamped)
            safe.append(clamped)
        value = self.load(info, safe)  # always in bounds (clamped), then masked
        return b.select(valid, value, self.constant(info.pad_value, info.dtype))

    # -- values ------------------------------------------------------------------------------------
    def constant(self, value: float | int | bool, dtype: str) -> ir.Constant:
        if dtype.startswith("float"):
            return ir.Constant(REG[dtype], float(value))
        if dtype == "bool":
            return ir.Constant(I1, int(bool(value)))
        return ir.Constant(REG[dtype], int(value))

    def cast(self, v: ir.Value, src: str, dst: str) -> ir.Value:
        src, dst = types.concrete(src), types.concrete(dst)
        if src == dst:
            return v
        b = self.builder
        if dst == "bool":
            if types.is_float(src):
                return b.fcmp_unordered("!=", v, ir.Constant(REG[src], 0.0))
            return b.icmp_signed("!=", v, ir.Constant(REG[src], 0))
        if types.is_float(dst):
            if types.is_float(src):
                return b.fpext(v, REG[dst]) if dst == "float64" else b.fptrunc(v, REG[dst])
            return b.uitofp(v, REG[dst]) if src == "bool" else b.sitofp(v, REG[dst])
        if types.is_float(src):
            return b.fptosi(v, REG[dst])
        if src == "bool":
            return b.zext(v, REG[dst])
        return b.sext(v, REG[dst]) if REG[dst].width > REG[src].width else b.trunc(v, REG[dst])

    def typeof(self, e: Expr) -> str:
        tensor_types = {t: info.dtype for t, info in self.bound.tensors.items()}
        return types.infer(e, tensor_types, self.bound.param_types)

    def value(self, e: Expr, env: dict[str, ir.Value], want: str) -> ir.Value:
        """Emit ``e`` and convert it to the concrete type ``want``."""
        natural = self.typeof(e)
        return self.cast(self.emit(e, env, natural), natural, want)

    def libm(self, name: str, dtype: str, args: list[ir.Value]) -> ir.Value:
        """A call of the C math library's ``name`` (``namef`` for float32)."""
        ty = REG[dtype]
        symbol = name + ("f" if dtype == "float32" else "")
        fn = self.module.globals.get(symbol)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty] * len(args)), name=symbol)
            fn.attributes.add("nounwind")
        return self.builder.call(fn, args)

    def intrinsic(self, name: str, dtype: str, args: list[ir.Value]) -> ir.Value:
        ty = REG[dtype]
        fn = self.module.declare_intrinsic(f"llvm.{name}", [ty], ir.FunctionType(ty, [ty] * len(args)))
        return self.builder.call(fn, args)

    def exp(self, dtype: str, x: ir.Value) -> ir.Value:
        """``exp``: inline arithmetic for float32 (``llvm_math``: loops around it vectorize), the
        intrinsic (the C library's ``exp``) for float64."""
        return exp_f32(self.builder, x) if dtype == "float32" else self.intrinsic("exp", dtype, [x])

    def emit(self, e: Expr, env: dict[str, ir.Value], natural: str) -> ir.Value:
        """Emit ``e`` in its natural type (weak types resolve to their concrete default)."""
        b = self.builder
        t = types.concrete(natural)
        if isinstance(e, Const):
            return self.constant(e.value, t)
        if isinstance(e, Access):
            return self.read(e, env)
        if isinstance(e, Index):
            return self.cast(self.lin(e.lin, env), "int64", t)
        if isinstance(e, Param):
            v = self.params[e.name]
            return self.cast(v, "float64" if types.is_float(self.param_types[e.name]) else "int64", t)
        assert isinstance(e, Call)
        fn, args = e.fn, e.args
        if fn in ("lt", "le", "gt", "ge", "eq", "ne"):
            common = types.concrete(types.promote(self.typeof(args[0]), self.typeof(args[1])))
            x, y = (self.value(a, env, common) for a in args)
            sym = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}[fn]
            if types.is_float(common):
                return b.fcmp_unordered(sym, x, y) if fn == "ne" else b.fcmp_ordered(sym, x, y)
            if common == "bool":
                return b.icmp_unsigned(sym, x, y)
            return b.icmp_signed(sym, x, y)
        if fn in ("and", "or"):
            x, y = (self.value(a, env, "bool") for a in args)
            return b.and_(x, y) if fn == "and" else b.or_(x, y)
        if fn == "not":
            return b.not_(self.value(args[0], env, "bool"))
        if fn == "where":
            c = self.value(args[0], env, "bool")
            return b.select(c, self.value(args[1], env, t), self.value(args[2], env, t))
        if fn == "exp":
            return self.exp(t, self.value(args[0], env, t))
        if fn in ("log", "sqrt", "sin", "cos", "tanh"):
            return self.intrinsic(fn, t, [self.value(args[0], env, t)])
        if fn == "sigmoid":
            x = self.value(args[0], env, t)
            one = ir.Constant(REG[t], 1.0)
            return b.fdiv(one, b.fadd(one, self.exp(t, b.fneg(x))))
        if fn in ("erf", "erfc", "expm1", "log1p", "atan2"):  # the C library's (no LLVM intrinsic)
            return self.libm(fn, t, [self.value(a, env, t) for a in args])
        if fn == "rsqrt":
            return b.fdiv(ir.Constant(REG[t], 1.0), self.intrinsic("sqrt", t, [self.value(args[0], env, t)]))
        if fn == "softplus":  # max(x, 0) + log1p(exp(-|x|)): no overflow, exact where exp(x) is tiny
            x = self.value(args[0], env, t)
            tail = self.libm("log1p", t, [self.exp(t, b.fneg(self.intrinsic("fabs", t, [x])))])
            return b.fadd(self.minmax("max", t, x, ir.Constant(REG[t], 0.0)), tail)
        if fn == "sign":  # -1, 0 or 1; NaN stays NaN (numpy's sign)
            x = self.value(args[0], env, t)
            zero, one = self.constant(0, t), self.constant(1, t)
            if t == "bool":
                return x
            if types.is_float(t):
                pos = b.select(b.fcmp_ordered(">", x, zero), one, zero)
                neg = b.select(b.fcmp_ordered("<", x, zero), self.constant(-1, t), pos)
                return b.select(b.fcmp_unordered("uno", x, x), x, neg)
            pos = b.select(b.icmp_signed(">", x, zero), one, zero)
            return b.select(b.icmp_signed("<", x, zero), self.constant(-1, t), pos)
        if fn in ("floor", "ceil"):
            x = self.value(args[0], env, t)
            return self.intrinsic(fn, t, [x]) if types.is_float(t) else x
        if fn == "abs":
            x = self.value(args[0], env, t)
            if types.is_float(t):
                return self.intrinsic("fabs", t, [x])
            if t == "bool":
                return x
            return b.select(b.icmp_signed("<", x, ir.Constant(REG[t], 0)), b.neg(x), x)
        if fn == "relu":
            x = self.value(args[0], env, t)
            zero = self.constant(0, t)
            if types.is_float(t):
                return b.select(b.fcmp_unordered(">", x, zero), x, zero)  # relu(nan) is nan, as numpy's maximum
            return b.select(b.icmp_signed(">", x, zero), x, zero)
        if fn == "neg":
            x = self.value(args[0], env, t)
            return b.fneg(x) if types.is_float(t) else b.neg(x)
        if fn in ("max", "min"):
            x, y = (self.value(a, env, t) for a in args)
            return self.minmax(fn, t, x, y)
        if fn == "pow":
            return self.power(args[0], args[1], env, t)
        # arithmetic: both operands in the result type
        if fn == "truediv":
            x, y = (self.value(a, env, t) for a in args)
            # no reassoc: it lets ``(E / Z) * U`` become ``(E * U) / Z``, a division per element of
            # U where the quotient was loop-invariant and computed once
            return b.fdiv(x, y, flags=["contract"])
        x, y = (self.value(a, env, t) for a in args)
        if types.is_float(t):
            if fn == "add":
                return b.fadd(x, y, flags=FAST)
            if fn == "sub":
                return b.fsub(x, y, flags=FAST)
            if fn == "mul":
                return b.fmul(x, y, flags=FAST)
            q = self.intrinsic("floor", t, [b.fdiv(x, y)])
            if fn == "floordiv":
                return q
            return b.fsub(x, b.fmul(q, y))  # mod: sign of the divisor, as numpy's %
        if t == "bool":
            x, y = self.cast(x, "bool", "int64"), self.cast(y, "bool", "int64")
            t = "int64"
        if fn == "add":
            return b.add(x, y)
        if fn == "sub":
            return b.sub(x, y)
        if fn == "mul":
            return b.mul(x, y)
        # Integer // and % as NumPy computes them, without the hardware traps: a zero divisor gives 0
        # (NumPy warns; sdiv by 0 is undefined), and x // -1 is -x, wrapping (sdiv MIN // -1 traps).
        zero, one = ir.Constant(REG[t], 0), ir.Constant(REG[t], 1)
        by_zero = b.icmp_signed("==", y, zero)
        by_minus_one = b.icmp_signed("==", y, ir.Constant(REG[t], -1))
        safe = b.select(b.or_(by_zero, by_minus_one), one, y)
        q = b.sdiv(x, safe)
        fix = b.and_(b.icmp_signed("!=", b.srem(x, safe), zero),
                     b.icmp_signed("!=", b.icmp_signed("<", x, zero), b.icmp_signed("<", safe, zero)))
        q = b.sub(q, b.zext(fix, REG[t]))
        q = b.select(by_minus_one, b.sub(zero, x), q)
        q = b.select(by_zero, zero, q)
        if fn == "floordiv":
            return q
        return b.select(b.or_(by_zero, by_minus_one), zero, b.sub(x, b.mul(q, y)))

    def minmax(self, fn: str, t: str, x: ir.Value, y: ir.Value) -> ir.Value:
        b = self.builder
        if types.is_float(t):
            # numpy.maximum propagates NaN, as llvm.maximum does
            return self.intrinsic("maximum" if fn == "max" else "minimum", t, [x, y])
        if t == "bool":
            return b.or_(x, y) if fn == "max" else b.and_(x, y)
        return b.select(b.icmp_signed(">" if fn == "max" else "<", x, y), x, y)

    def power(self, base: Expr, exponent: Expr, env: dict[str, ir.Value], t: str) -> ir.Value:
        b = self.builder
        if isinstance(exponent, Const) and not isinstance(exponent.value, bool) \
                and float(exponent.value).is_integer() and 0 <= exponent.value <= 4:
            x = self.value(base, env, t)
            out = self.constant(1, t)
            for _ in range(int(exponent.value)):
                out = b.fmul(out, x, flags=FAST) if types.is_float(t) else b.mul(out, x)
            return out
        if isinstance(exponent, Const) and exponent.value == 0.5 and types.is_float(t):
            return self.intrinsic("sqrt", t, [self.value(base, env, t)])
        ft = t if types.is_float(t) else "float64"
        x, y = self.value(base, env, ft), self.value(exponent, env, ft)
        out = self.intrinsic("pow", ft, [x, y])
        return self.cast(out, ft, t)

    # -- statements and loops -----------------------------------------------------------------------
    def compute(self, node: Compute, acc: ir.Value | None = None) -> None:
        """The statement instance; with ``acc`` (a pointer to a register-tile slot), it updates that
        slot instead of the written element."""
        bs = self.bound.statements[node.stmt]
        st = bs.stmt
        env = {name: self.iexpr(e) for name, e in node.env}
        lins = {name: to_lin(e) for name, e in node.env}
        self.loop_env = None if any(v is None for v in lins.values()) else lins
        info = self.bound.tensors[st.target]
        if acc is not None:
            value = self.value(st.expr, env, info.dtype)
            old = self.builder.load(acc, typ=REG[info.dtype])
            self.builder.store(self.combine(st.reduce, info.dtype, old, value), acc)
            self.loop_env = None
            return
        idx = self.folded_offset(st.target, st.index)
        if idx is None:
            idx = [self.lin(lin, env) for lin in st.index]
        value = self.value(st.expr, env, info.dtype)
        if st.reduce is not None:
            old = self.load_at(info, idx) if isinstance(idx, ir.Value) else self.load(info, idx)
            value = self.combine(st.reduce, info.dtype, old, value)
        self.store(info, idx, value)
        self.loop_env = None

    def combine(self, reduce: str, t: str, old: ir.Value, value: ir.Value) -> ir.Value:
        """``old`` updated with ``value`` by the reduction ``reduce``."""
        b = self.builder
        if reduce in ("max", "min"):
            return self.minmax(reduce, t, old, value)
        if types.is_float(t):
            return b.fadd(old, value, flags=FAST) if reduce == "sum" else b.fmul(old, value, flags=FAST)
        if t == "bool":
            return b.or_(old, value) if reduce == "sum" else b.and_(old, value)
        return b.add(old, value) if reduce == "sum" else b.mul(old, value)

    def fill(self, node: Fill) -> None:
        info = self.bound.tensors[node.tensor]
        idx = [self.iexpr(e) for e in node.index]
        self.store(info, idx, self.constant(node.value, info.dtype))

    def loop(self, node: For) -> None:
        b = self.builder
        lo, hi = self.iexpr(node.lo), self.iexpr(node.hi)
        if self.slice is not None:  # a stage entry runs only its slice [slice_lo, slice_hi) of this loop
            s_lo, s_hi = self.slice
            self.slice = None
            lo = b.select(b.icmp_signed(">", s_lo, lo), s_lo, lo)
            hi = b.select(b.icmp_signed("<", s_hi, hi), s_hi, hi)
        pre = b.block
        header = self.fn.append_basic_block(f"{node.var}.head")
        body = self.fn.append_basic_block(f"{node.var}.body")
        exit_ = self.fn.append_basic_block(f"{node.var}.exit")
        b.branch(header)
        b.position_at_end(header)
        iv = b.phi(I64, name=node.var)
        iv.add_incoming(lo, pre)
        b.cbranch(b.icmp_signed("<", iv, hi), body, exit_)
        b.position_at_end(body)
        saved = self.vars.get(node.var)
        self.vars[node.var] = iv
        self.nodes(node.body)
        nxt = b.add(iv, ir.Constant(I64, node.step), flags=["nsw"])
        latch = b.block
        back = b.branch(header)
        if _fills_only(node):  # LLVM makes memsets of the innermost runs and would unroll the rest
            back.set_metadata("llvm.loop", self._loop_id())
        iv.add_incoming(nxt, latch)
        b.position_at_end(exit_)
        if saved is not None:
            self.vars[node.var] = saved

    def _loop_id(self):
        """Loop metadata that keeps LLVM from unrolling the loop (see ``_fills_only``). The node must
        be distinct and name itself, which llvmlite cannot say: ``generate`` rewrites the placeholder
        (a first operand ``!"tc.loop<n>"``) in the text. (Unrolling a vector tile's reduction loops
        by 4 at most, the rest not at all, cost the capsule kernel 12 -> 16 ms and conv2d 3x3 18 ->
        30 ms: LLVM's whole unrolling of short window loops pays.)"""
        n = len(self._loop_ids)
        hint = self.module.add_metadata([ir.MetaDataString(self.module, "llvm.loop.unroll.disable")])
        md = self.module.add_metadata([ir.MetaDataString(self.module, f"tc.loop{n}"), hint])
        self._loop_ids.append(md)
        return md

    def guard(self, node: If) -> None:
        b = self.builder
        cond = self.iexpr(node.cond)
        with b.if_else(cond) as (then, otherwise):
            with then:
                self.nodes(node.then)
            with otherwise:
                self.nodes(node.orelse)

    def nodes(self, nodes: tuple[Node, ...]) -> None:
        for n in nodes:
            if isinstance(n, Tile):
                self.tile(n)
            elif isinstance(n, For):
                self.loop(n)
            elif isinstance(n, _TileBody):
                self.tile_body(n)
            elif isinstance(n, _VectorTileBody):
                self.vector_tile_body(n)
            elif isinstance(n, _VectorSumBody):
                self.vector_sum_body(n)
            elif isinstance(n, If):
                self.guard(n)
            elif isinstance(n, Compute):
                self.compute(n)
            elif isinstance(n, Fill):
                self.fill(n)
            else:
                raise AssertionError(n)

    def build(self, array_data_offset: int | None) -> ir.Module:
        """One entry per top-level loop nest (``{name}_stage{j}``: the runtime cuts parallel ones into
        slices for its threads), and the whole kernel as calls to them in order, each over its whole
        range: every nest is generated once (a kernel's code used to be generated twice, in the kernel
        and in its stages: LeNet's first step spent 4.1 s in LLVM for 38 kernels)."""
        kernel, kernel_builder = self.fn, self.builder
        stages = []
        used = stage_buffers(self.nest, self.buffers)
        for j, node in enumerate(self.nest.body):
            stage = self.function(f"{self.name}_stage{j}", ranged=True, buffers=[self.buffers[k] for k in used[j]])
            stage.attributes.add("noinline")  # called from the kernel: inlining would duplicate the code
            if isinstance(node, For) and node.kind == "parallel":
                self.loop(node)
            else:
                self.slice = None
                self.nodes((node,))
            self.builder.ret_void()
            stages.append(stage)
        self.fn, self.builder = kernel, kernel_builder
        nb = len(self.buffers)
        for stage, node, take in zip(stages, self.nest.body, used):
            whole = isinstance(node, For) and node.kind == "parallel"
            lo, hi = (node.lo.value, node.hi.value) if whole else (0, 1)
            self.builder.call(stage, [*(kernel.args[k] for k in take), ir.Constant(I64, lo), ir.Constant(I64, hi),
                                      *kernel.args[nb:]])
        self.builder.ret_void()
        self.ptr = {t: kernel.args[k] for k, t in enumerate(self.buffers)}
        if array_data_offset is not None:
            self.python_entry(array_data_offset)
        return self.module

    def python_entry(self, offset: int) -> None:
        """``{name}_py(PyArrayObject*..., params...)``: reads each array's data pointer and calls the kernel.

        Passing the array objects themselves (ctypes ``py_object``) skips the
        costly ``__array_interface__`` lookups on every call; the pointer's
        offset inside the array object is measured at import time.
        """
        nbuf = len(self.ptr)
        argtys = [PTR] * nbuf + [a.type for a in self.fn.args[nbuf:]]
        entry = ir.Function(self.module, ir.FunctionType(ir.VoidType(), argtys), name=f"{self.fn.name}_py")
        b = ir.IRBuilder(entry.append_basic_block("entry"))
        args = []
        for k, arg in enumerate(entry.args):
            if k < nbuf:
                field = b.gep(arg, [ir.Constant(I64, offset)], source_etype=I8, inbounds=True)
                args.append(b.load(field, typ=PTR, align=8))
            else:
                args.append(arg)
        b.call(self.fn, args)
        b.ret_void()


def stage_buffers(nest: LoopNest, buffers: list[str]) -> list[tuple[int, ...]]:
    """Per stage (top-level loop nest), the positions in ``buffers`` of the buffers it touches: its entry
    takes only those, so a kernel of n statements is O(n) code, not O(n^2) (every stage taking every
    buffer made 800 statements take 72 s in LLVM)."""
    return [tuple(k for k, b in enumerate(buffers) if b in names)
            for names in (nest.tensors_of(node) for node in nest.body)]


def _fills_only(node: Node) -> bool:
    """Whether a loop nest only fills a tensor with a constant. Left to itself, LLVM turns each
    innermost contiguous run into a memset and unrolls the loops around whole: the capsule input
    gradient's zero fill became 3,584 memset calls with their address arithmetic in one block, ~8 s
    in LLVM's code generator."""
    if isinstance(node, Fill):
        return True
    if isinstance(node, For):
        return all(_fills_only(n) for n in node.body)
    return False


def generate(nest: LoopNest, bound: Bound, buffers: list[str], buffer_strides: dict[str, BufferStrides],
             name: str = "kernel", array_data_offset: int | None = None) -> str:
    """LLVM IR text of the kernel for ``nest`` (plus its Python entry when an offset is given)."""
    text = str(_FunctionBuilder(nest, bound, buffers, buffer_strides, name).build(array_data_offset))
    # loop ids: `!7 = !{ !"tc.loop0", !6 }` -> `!7 = distinct !{ !7, !6 }` (see _loop_id)
    return re.sub(r'^(![0-9]+) = !\{ ?!"tc\.loop[0-9]+", ', r"\1 = distinct !{ \1, ", text, flags=re.M)
