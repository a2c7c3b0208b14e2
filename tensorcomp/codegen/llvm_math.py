"""Elementary functions written out in LLVM IR, so that loops calling them vectorize.

``llvm.exp.f32`` becomes a call of the C library's ``expf`` on x86: one call per element, which keeps
LLVM's loop vectorizer off every loop that contains it (a softmax, a routing iteration's
coefficients and their gradients). :func:`exp_f32` computes the same function with a handful of
multiply-adds and integer operations on a float or on a vector of floats, so the loop around it
vectorizes like any arithmetic.

The method is Cody and Waite's: ``x = k*ln2 + r`` with ``k`` the nearest integer to ``x/ln2`` and ln2
split in two constants so that ``r`` is exact to a few ulp; ``exp(r)`` on ``|r| <= ln2/2`` by a
polynomial of degree 7 (Cephes' ``expf`` coefficients, relative error below 2 ulp over the whole
range); ``2**k`` by building the exponent bits, as two factors so that results which underflow to
subnormals and results that overflow to infinity come out as IEEE arithmetic would give them. NaN in
gives NaN out. The operations carry no fast-math flags except contraction into fused multiply-adds:
reassociating ``x - k*C1 - k*C2`` would undo the split.
"""

from __future__ import annotations

from llvmlite import ir

_F32, _I32 = ir.FloatType(), ir.IntType(32)
_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln2 = HI + LO, HI with few significant bits
_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_LO, _HI = -104.0, 89.0  # beyond these exp(x) is 0 or inf in float32; clamping keeps 2**k's exponents in range
_CONTRACT = ("contract",)


def _const(ty: ir.Type, value: float | int) -> ir.Constant:
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value).constant] * ty.count)
    return ir.Constant(ty, value)


def _intrinsic(b: ir.IRBuilder, name: str, ty: ir.Type, args: list[ir.Value]) -> ir.Value:
    suffix = f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"
    module = b.module
    fn = module.globals.get(f"llvm.{name}.{suffix}") or module.declare_intrinsic(
        f"llvm.{name}", [ty], ir.FunctionType(ty, [ty] * len(args)))
    return b.call(fn, args)


def exp_f32(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """``exp(x)`` for a float32 value or vector of float32, as inline arithmetic."""
    fty = x.type
    ity = ir.VectorType(_I32, fty.count) if isinstance(fty, ir.VectorType) else _I32
    c = lambda v: _const(fty, v)  # noqa: E731
    xc = _intrinsic(b, "minnum", fty, [_intrinsic(b, "maxnum", fty, [x, c(_LO)]), c(_HI)])
    k = _intrinsic(b, "rint", fty, [b.fmul(xc, c(_LOG2E))])
    r = b.fsub(xc, b.fmul(k, c(_LN2_HI)), flags=_CONTRACT)
    r = b.fsub(r, b.fmul(k, c(_LN2_LO)), flags=_CONTRACT)
    p = c(_POLY[0])
    for coeff in _POLY[1:]:
        p = b.fadd(b.fmul(p, r, flags=_CONTRACT), c(coeff), flags=_CONTRACT)
    r2 = b.fmul(r, r)
    p = b.fadd(b.fadd(b.fmul(p, r2, flags=_CONTRACT), r, flags=_CONTRACT), c(1.0))
    ki = b.fptosi(k, ity)
    k1 = b.ashr(ki, _const(ity, 1))
    k2 = b.sub(ki, k1)
    scale = [b.bitcast(b.shl(b.add(kk, _const(ity, 127)), _const(ity, 23)), fty) for kk in (k1, k2)]
    y = b.fmul(b.fmul(p, scale[0]), scale[1])
    return b.select(b.fcmp_unordered("uno", x, x), x, y)
