"""LLVM IR for register tiles (``loopnest.Tile`` nodes, decided by ``schedule.tiles``).

``TileEmitter`` is the part of the kernel builder (``codegen.llvm``) that prints tiles: a "scalar"
tile unrolled over a stack array LLVM promotes to registers, a "vector" tile with its innermost
loop in SIMD vectors (contiguous operands loaded as vectors, the others broadcast, a last partial
vector masked), a "vector_sum" reduction into one vector of partial sums. It uses the builder's
state (``builder``, ``vars``, ``ptr``, ``buffer_strides``, ``bound``) and its scalar emitters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from llvmlite import ir

from ..domain import TensorInfo
from ..lang.ir import Access, Const, Expr, Lin, Param
from ..schedule.loopnest import For, IConst, Node, Tile, to_lin
from ..schedule.tiles import offset_lin, padded, varies
from ..strides import ITEMSIZE

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
REG = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "bool": I1}
MEM = {"float32": F32, "float64": F64, "int32": I32, "int64": I64, "bool": I8}
FAST = ("reassoc", "contract")


def _splat(b: ir.IRBuilder, x: ir.Value, width: int) -> ir.Value:
    """A scalar in every lane of a vector."""
    vty = ir.VectorType(x.type, width)
    v = b.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(I32, 0))
    return b.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(I32, width), None))




@dataclass(frozen=True, eq=False)
class _TileBody:
    """The innermost body of a register-tiled loop chain: every tile point, unrolled."""

    tile: Tile
    acc: ir.Value
    arrty: ir.Type  # the element type of the tile array
    points: tuple[tuple[int, ...], ...]




@dataclass(frozen=True, eq=False)
class _VectorTileBody:
    """The innermost body of a vector-tiled loop chain: one vector update per tile chunk."""

    tile: Tile
    slots: tuple
    vty: ir.Type
    lins: dict
    outer_points: tuple
    chunks: tuple


@dataclass(frozen=True, eq=False)
class _VectorSumBody:
    """The innermost body of a vector reduction: one vector of the operand added to the partial sums."""

    tile: Tile
    slots: tuple  # one vector of partial sums per element of the tile
    vty: ir.Type
    lins: dict
    points: tuple  # the tile loops' values (offsets from their starts) at each element
    lanes: int = 0  # the last, partial vector of the reduction: this many lanes (0: a whole vector)


class TileEmitter:
    """Register tiles, for ``codegen.llvm._FunctionBuilder`` (see the module docstring)."""

    def strides(self) -> dict[str, tuple[int, ...]]:
        return {t: lay.strides for t, lay in self.buffer_strides.items()}

    def offset_lin(self, tensor: str, index: tuple[Lin, ...], lins: dict[str, Lin]) -> Lin:
        return offset_lin(self.strides(), tensor, index, lins)

    def varies(self, e: Expr, lins: dict[str, Lin], var: str) -> bool:
        return varies(self.bound, self.strides(), e, lins, var)

    def tile(self, node: Tile) -> None:
        """Emit a register tile as the ``mark_tiles`` pass decided (see ``schedule.tiles``)."""
        {"vector": self.vector_tile, "vector_sum": self.vector_sum, "scalar": self.scalar_tile}[node.kind](node)

    def scalar_tile(self, found: Tile) -> None:
        """The tile in a stack array that LLVM keeps in registers: the tile loops unrolled, the
        written elements loaded once and stored once."""
        b = self.builder
        info = self.bound.tensors[self.bound.statements[found.compute.stmt].stmt.target]
        elty = REG[info.dtype]
        with b.goto_entry_block():
            acc = b.alloca(elty, size=found.size, name="tile")
        points = list(itertools.product(*[range(lp.hi.value - lp.lo.value) for lp in found.tile]))

        def at(k: int, point: tuple[int, ...]) -> ir.Value:
            for lp, v in zip(found.tile, point):
                self.vars[lp.var] = ir.Constant(I64, lp.lo.value + v)
            return b.gep(acc, [ir.Constant(I64, k)], inbounds=True, source_etype=elty)

        def element() -> ir.Value:
            offset = self.lin(found.offset, self.vars)
            return b.gep(self.ptr[info.name], [offset], source_etype=I8, inbounds=True)
        saved = {lp.var: self.vars.get(lp.var) for lp in found.tile}
        for k, point in enumerate(points):
            slot = at(k, point)
            b.store(self._load(info, element()), slot)
        body = _TileBody(found, acc, elty, tuple(points))
        chain: Node = body
        for lp in reversed(found.reduction):
            chain = For(lp.var, lp.lo, lp.hi, lp.step, (chain,), lp.kind)
        self.loop(chain)
        for k, point in enumerate(points):
            slot = at(k, point)
            value = b.load(slot, typ=elty)
            ptr = element()
            b.store(b.zext(value, I8) if info.dtype == "bool" else value, ptr, align=self.buffer_strides[info.name].align)
        for var, v in saved.items():
            if v is None:
                self.vars.pop(var, None)
            else:
                self.vars[var] = v

    # -- vector tiles --------------------------------------------------------------------------------
    def _vexpr(self, e: Expr, lins: dict[str, Lin], var: str, t: str, vty: ir.VectorType) -> ir.Value:
        b = self.builder
        width = vty.count

        def splat(x: ir.Value) -> ir.Value:
            return _splat(b, x, width)
        if isinstance(e, Const):
            return ir.Constant(vty, [self.constant(e.value, t).constant] * width)
        if isinstance(e, Param):
            return splat(self.emit(e, {}, t))
        if not self.varies(e, lins, var):  # a scalar per vector (LLVM hoists it out of the loop)
            self.loop_env = lins
            env = {name: self.lin(lin, self.vars) for name, lin in lins.items()}
            scalar = self.value(e, env, t)
            self.loop_env = None
            return splat(scalar)
        if isinstance(e, Access):  # contiguous along var (see _vectorizable)
            info = self.bound.tensors[e.tensor]
            if padded(info):
                return self._padded_vector_read(e, info, lins, var, t, vty)
            off = self.offset_lin(e.tensor, e.index, lins)
            ptr = b.gep(self.ptr[e.tensor], [self.lin(off, self.vars)], source_etype=I8, inbounds=True)
            if self._lane_mask is not None:  # a tile's last, partial vector of columns
                return self._masked_load(ptr, vty, self._lane_mask, ir.Constant(vty, None))
            return b.load(ptr, typ=vty, align=ITEMSIZE[t])
        args = [self._vexpr(a, lins, var, t, vty) for a in e.args]
        if e.fn == "neg":
            return b.fneg(args[0])
        if e.fn == "truediv":
            return b.fdiv(args[0], args[1], flags=["contract"])
        op = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul}[e.fn]
        return op(args[0], args[1], flags=FAST)

    def _padded_vector_read(self, e: Access, info: TensorInfo, lins: dict[str, Lin], var: str, t: str,
                            vty: ir.VectorType) -> ir.Value:
        """A vector of a padded tensor's elements along ``var``: one masked load (lanes whose index
        falls in the padding read the pad value and touch no memory), so a convolution's zero-padded
        input vectorizes along its spatial or batch axis (LeNet conv1 weight gradient)."""
        b = self.builder
        width = vty.count
        lanes = ir.Constant(ir.VectorType(I64, width), list(range(width)))
        mty = ir.VectorType(I1, width)
        mask: ir.Value = self._lane_mask or ir.Constant(mty, [1] * width)
        off = Lin()
        for lin, n, (lo, hi), stride in zip(e.index, info.shape, info.pad, self.buffer_strides[e.tensor].strides):
            lin = lin.rename(lins).expand_mod()
            off = off + (lin - lo) * stride
            if not (lo or hi):
                continue
            real = b.sub(self.lin(lin, self.vars), ir.Constant(I64, lo))
            step = dict(lin.terms).get(var, 0)
            vec = b.add(_splat(b, real, width), b.mul(lanes, ir.Constant(lanes.type, [step] * width)))
            inside = b.and_(b.icmp_signed(">=", vec, ir.Constant(lanes.type, [0] * width)),
                            b.icmp_signed("<", vec, ir.Constant(lanes.type, [n] * width)))
            mask = b.and_(mask, inside)
        # no inbounds: a masked-off lane's address may lie outside the array
        ptr = b.gep(self.ptr[e.tensor], [self.lin(off, self.vars)], source_etype=I8)
        return self._masked_load(ptr, vty, mask, _splat(b, self.constant(info.pad_value, t), width))

    def _masked_load(self, ptr: ir.Value, vty: ir.VectorType, mask: ir.Value, fill: ir.Value) -> ir.Value:
        """Lanes of ``mask`` read from ``ptr`` on, the others are ``fill`` (and touch no memory)."""
        bits = 64 if isinstance(vty.element, ir.DoubleType) else 32
        name = f"llvm.masked.load.v{vty.count}f{bits}.p0"
        fn = self.module.globals.get(name) or ir.Function(
            self.module, ir.FunctionType(vty, [ptr.type, I32, mask.type, vty]), name=name)
        return self.builder.call(fn, [ptr, ir.Constant(I32, bits // 8), mask, fill])

    def _masked_store(self, value: ir.Value, ptr: ir.Value, mask: ir.Value) -> None:
        vty = value.type
        bits = 64 if isinstance(vty.element, ir.DoubleType) else 32
        name = f"llvm.masked.store.v{vty.count}f{bits}.p0"
        fn = self.module.globals.get(name) or ir.Function(
            self.module, ir.FunctionType(ir.VoidType(), [vty, ptr.type, I32, mask.type]), name=name)
        self.builder.call(fn, [value, ptr, ir.Constant(I32, bits // 8), mask])

    def vector_sum(self, found: Tile) -> None:
        """A tile of a few elements whose innermost reduction loop walks its operands contiguously (or
        leaves them put): per written element, partial sums in one SIMD vector across the whole
        reduction (the tile loops unrolled inside each vector step, so the elements' sums are
        independent chains that share the loads they have in common: a weight gradient's dot products
        over the batch), added up once at the end, instead of a chain of scalar additions one latency
        apart. A reduction that is not whole vectors ends in one masked vector (its other lanes touch
        no memory and add 0)."""
        st = self.bound.statements[found.compute.stmt].stmt
        t = self.bound.tensors[st.target].dtype
        inner = found.reduction[-1]
        width = found.lanes
        extent = inner.hi.value - inner.lo.value
        lins = {name: to_lin(e) for name, e in found.compute.env}
        b = self.builder
        vty = ir.VectorType(REG[t], width)
        points = tuple(itertools.product(*[range(lp.hi.value - lp.lo.value) for lp in found.tile]))
        with b.goto_entry_block():
            slots = tuple(b.alloca(vty, name="vsum") for _ in points)
        for slot in slots:
            b.store(ir.Constant(vty, [0.0] * width), slot)
        whole = inner.lo.value + extent - extent % width
        chain: tuple[Node, ...] = ()
        if whole > inner.lo.value:
            chain = (For(inner.var, inner.lo, IConst(whole), width,
                         (_VectorSumBody(found, slots, vty, lins, points),), inner.kind),)
        if extent % width:  # the last, partial vector: a loop of one trip at its first element
            chain += (For(inner.var, IConst(whole), IConst(whole + 1), 1,
                          (_VectorSumBody(found, slots, vty, lins, points, extent % width),), inner.kind),)
        for lp in reversed(found.reduction[:-1]):
            chain = (For(lp.var, lp.lo, lp.hi, lp.step, chain, lp.kind),)
        for node in chain:
            self.loop(node)
        info = self.bound.tensors[st.target]
        saved = {lp.var: self.vars.get(lp.var) for lp in found.tile}
        for slot, point in zip(slots, points):
            self._at_point(found, point)
            total = b.load(slot, typ=vty)
            lanes = width
            while lanes > 1:  # add the halves until one lane is left
                lanes //= 2
                halves = [b.shuffle_vector(total, ir.Constant(total.type, ir.Undefined),
                                           ir.Constant(ir.VectorType(I32, lanes), list(range(k, k + lanes))))
                          for k in (0, lanes)]
                total = b.fadd(halves[0], halves[1], flags=FAST)
            ptr = b.gep(self.ptr[st.target], [self.lin(found.offset, self.vars)], source_etype=I8, inbounds=True)
            old = self._load(info, ptr)
            b.store(b.fadd(old, b.extract_element(total, ir.Constant(I32, 0)), flags=FAST), ptr,
                    align=self.buffer_strides[st.target].align)
        self._restore(saved)

    def _at_point(self, found: Tile, point: tuple[int, ...]) -> None:
        for lp, v in zip(found.tile, point):
            self.vars[lp.var] = ir.Constant(I64, lp.lo.value + v)

    def _restore(self, saved: dict) -> None:
        for var, v in saved.items():
            if v is None:
                self.vars.pop(var, None)
            else:
                self.vars[var] = v

    def vector_sum_body(self, body: "_VectorSumBody") -> None:
        b = self.builder
        st = self.bound.statements[body.tile.compute.stmt].stmt
        t = self.bound.tensors[st.target].dtype
        width = body.vty.count
        var = body.tile.reduction[-1].var
        saved = {lp.var: self.vars.get(lp.var) for lp in body.tile.tile}
        mask = ir.Constant(ir.VectorType(I1, width), [1] * body.lanes + [0] * (width - body.lanes))
        for slot, point in zip(body.slots, body.points):
            self._at_point(body.tile, point)
            if body.lanes:
                self._lane_mask = mask
                value = b.select(mask, self._vexpr(st.expr, body.lins, var, t, body.vty),
                                 ir.Constant(body.vty, [0.0] * width))
                self._lane_mask = None
            else:
                value = self._vexpr(st.expr, body.lins, var, t, body.vty)
            b.store(b.fadd(b.load(slot, typ=body.vty), value, flags=FAST), slot)
        self._restore(saved)

    def vector_tile(self, tile: Tile) -> None:
        """The tile with its innermost loop evaluated on SIMD vectors (loads of contiguous operands,
        broadcasts of the others), the accumulators in vector registers across the reduction."""
        st = self.bound.statements[tile.compute.stmt].stmt
        t = self.bound.tensors[st.target].dtype
        inner = tile.tile[-1]
        width = tile.lanes
        rem = (inner.hi.value - inner.lo.value) % width  # columns of a last, partial vector: it is masked
        lins = {name: to_lin(e) for name, e in tile.compute.env}
        b = self.builder
        vty = ir.VectorType(REG[t], width)
        outer_points = list(itertools.product(*[range(lp.hi.value - lp.lo.value) for lp in tile.tile[:-1]]))
        chunks = range(inner.lo.value, inner.hi.value, width)
        partial = chunks[-1] if rem else None
        mask = ir.Constant(ir.VectorType(I1, width), [1] * rem + [0] * (width - rem))
        slots = []
        with b.goto_entry_block():
            for _ in range(len(outer_points) * len(chunks)):
                slots.append(b.alloca(vty, name="vtile"))
        saved = {lp.var: self.vars.get(lp.var) for lp in tile.tile}

        def each():
            k = 0
            for point in outer_points:
                for lp, v in zip(tile.tile[:-1], point):
                    self.vars[lp.var] = ir.Constant(I64, lp.lo.value + v)
                for start in chunks:
                    self.vars[inner.var] = ir.Constant(I64, start)
                    self._lane_mask = mask if start == partial else None
                    yield slots[k]
                    k += 1
            self._lane_mask = None

        def element() -> ir.Value:
            return b.gep(self.ptr[st.target], [self.lin(tile.offset, self.vars)], source_etype=I8, inbounds=True)
        for slot in each():
            if self._lane_mask is None:
                b.store(b.load(element(), typ=vty, align=ITEMSIZE[t]), slot)
            else:
                b.store(self._masked_load(element(), vty, self._lane_mask, ir.Constant(vty, None)), slot)
        chain: Node = _VectorTileBody(tile, tuple(slots), vty, lins, tuple(outer_points), tuple(chunks))
        for lp in reversed(tile.reduction):
            chain = For(lp.var, lp.lo, lp.hi, lp.step, (chain,), lp.kind)
        self._vector_each = each
        self.loop(chain)
        for slot in each():
            if self._lane_mask is None:
                b.store(b.load(slot, typ=vty), element(), align=ITEMSIZE[t])
            else:
                self._masked_store(b.load(slot, typ=vty), element(), self._lane_mask)
        for var, v in saved.items():
            if v is None:
                self.vars.pop(var, None)
            else:
                self.vars[var] = v

    def vector_tile_body(self, body: "_VectorTileBody") -> None:
        b = self.builder
        st = self.bound.statements[body.tile.compute.stmt].stmt
        t = self.bound.tensors[st.target].dtype
        for slot in self._vector_each():
            value = self._vexpr(st.expr, body.lins, body.tile.tile[-1].var, t, body.vty)
            b.store(b.fadd(b.load(slot, typ=body.vty), value, flags=FAST), slot)

    def tile_body(self, body: "_TileBody") -> None:
        b = self.builder
        for k, point in enumerate(body.points):
            for lp, v in zip(body.tile.tile, point):
                self.vars[lp.var] = ir.Constant(I64, lp.lo.value + v)
            slot = b.gep(body.acc, [ir.Constant(I64, k)], inbounds=True, source_etype=body.arrty)
            self.compute(body.tile.compute, slot)
