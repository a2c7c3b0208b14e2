"""Tensor cores for the CUDA generator: a register tile computed by a whole warp with ``mma.sync``.

With ``precision="tf32"`` (an op option; float32 stays the default), a statement
``C[..] += A[..] * B[..]`` -- a float32 sum of the product of two float32 reads -- runs on the tensor
cores when its register tile (``schedule.tiles``) has this shape:

* the tile loops split into *M loops*, which one operand reads and the other does not, and *N
  loops*, which only the other one reads, covering a multiple of 16 and of 8 points;
* the innermost reduction loops (constant bounds) that both operands read -- the *K group* --
  cover a multiple of 8 steps.

Then each warp (not each thread) owns a tile of the parallel loops' iterations: ``C`` as
``MT x NT`` fragments of 16 x 8 accumulators, four per lane, updated by ``mma.sync.m16n8k8`` (TF32
inputs, float32 accumulation) once per 8 steps of the K group; the reduction loops outside the K
group run as loops around it. Each lane reads its fragment elements with the statement's own
access expressions, evaluated at the element's point (its row and column decoded into the M, N and
K loops, mixed radix, innermost fastest), so any index expression and any layout works and every
access stays in bounds as in the scalar code. Inputs are rounded to TF32 (``cvt.rna``: 10 bits of
mantissa), as torch does with ``allow_tf32``.

Fragment layout of ``mma.m16n8k8`` (PTX ISA, "Matrix fragments for mma.m16n8k8", .tf32), lane
``l``, ``g = l / 4``, ``t = l % 4``: A (16 x 8, row) holds ``(g, t), (g + 8, t), (g, t + 4),
(g + 8, t + 4)``; B (8 x 8, col) ``(t, g), (t + 4, g)``; C (16 x 8) ``(g, 2t), (g, 2t + 1),
(g + 8, 2t), (g + 8, 2t + 1)``.

The launch walks groups of ``block / 32`` tiles; every warp of a block runs the same number of
iterations (a warp past the last tile repeats it and does not store), so a block's warps stay in
step. Tensor cores need compute capability 8.0: the generated source refuses to build for less.
"""

from __future__ import annotations

from ..lang.ir import Access
from ..schedule.loopnest import For, Tile, to_lin
from ..schedule.tensor_cores import MmaPlan, count
from .cuda_c import iexpr_c, lin_c

MMA_PRELUDE = """#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "precision='tf32' runs on tensor cores: compute capability 8.0 or newer"
#endif
#ifndef TC_HOST_MMA  // (a host stand-in may provide these two)
__device__ __forceinline__ unsigned tc_to_tf32(float x) {  // round to nearest, ties away: 10 mantissa bits
  unsigned r = 0;
#ifdef __CUDA_ARCH__
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
#endif
  return r;
}
__device__ __forceinline__ void tc_mma_tf32(float *d, const unsigned *a, const unsigned *b) {  // d += a b, a warp
#ifdef __CUDA_ARCH__
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};" : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
#endif
"""
def decode(loops: tuple[For, ...], flat: str) -> list[tuple[str, str]]:
    """(variable, C expression) of each loop at point ``flat`` of their product, innermost fastest."""
    out, inner = [], 1
    for lp in reversed(loops):
        digit = f"(({flat}) / {inner}) % {count(lp)}" if inner != 1 else f"({flat}) % {count(lp)}"
        out.append((lp.var, f"{lp.lo.value} + {lp.step} * ({digit})" if lp.step != 1 else f"{lp.lo.value} + {digit}"))
        inner *= count(lp)
    return out[::-1]


class MmaEmitter:
    """Warp tiles on tensor cores, for ``codegen.cuda._CudaBuilder`` (see the module docstring)."""

    def warp_tiles(self, loops: list[For], plan: MmaPlan) -> tuple[int, int, list[str]]:
        """(tiles, blocks, body) of the launch of a parallel nest whose body is one register tile
        ("mma"), one tile per warp."""
        warps = self.block // 32
        extents = [lp.hi.value - lp.lo.value for lp in loops]
        total = 1
        for x in extents:
            total *= x
        body = ["  const int tc_lane = threadIdx.x % 32, tc_g = tc_lane / 4, tc_t = tc_lane % 4;",
                f"  for (idx tc_w0 = (idx)blockIdx.x * {warps}; tc_w0 < {total}LL; tc_w0 += (idx)gridDim.x * {warps}) "
                "{  // uniform in the block",
                f"    const bool tc_store = tc_w0 + threadIdx.x / 32 < {total}LL;  // a warp past the end repeats the last tile",
                f"    idx tc_rest = tc_store ? tc_w0 + threadIdx.x / 32 : {total - 1}LL;"]
        for lp, x in reversed(list(zip(loops, extents))):
            body.append(f"    [[maybe_unused]] const idx {lp.var} = {lp.lo.value}LL + tc_rest % {x}LL; tc_rest /= {x}LL;")
        body += self.warp_tile(loops[-1].body[0], plan, 2)
        body.append("  }")
        return total, -(-total // warps), body

    def warp_tile(self, found: Tile, plan: MmaPlan, depth: int) -> list[str]:
        st = self.bound.statements[found.compute.stmt].stmt
        pad = "  " * depth
        frags = plan.mt * plan.nt
        element = self.ref(st.target, "tc_off")
        out = [f"{pad}{{  // warp tile: {16 * plan.mt} x {8 * plan.nt} elements of {st.target} on tensor cores "
               f"({plan.mt} x {plan.nt} mma.m16n8k8 fragments, TF32 inputs, float32 sums)",
               f"{pad}  float tc_c[{4 * frags}];"]
        out += self._over_accumulators(found, plan, depth + 1, f"tc_c[(tc_mt * {plan.nt} + tc_nt) * 4 + tc_j] = {element};")
        d = depth + 1
        for lp in plan.outer:
            out.append(f"{'  ' * d}for (idx {lp.var} = {iexpr_c(lp.lo)}; {lp.var} < {iexpr_c(lp.hi)}; "
                       f"{lp.var} += {lp.step}) {{")
            d += 1
        p = "  " * d
        out += [f"{p}#pragma unroll" if plan.kt <= 8 else f"{p}#pragma unroll 1",
                f"{p}for (int tc_kc = 0; tc_kc < {plan.kt}; tc_kc++) {{  // 8 steps of the K group "
                f"({', '.join(lp.var for lp in plan.k)})",
                f"{p}  unsigned tc_a[{plan.mt}][4], tc_b[{plan.nt}][2];",
                f"{p}  #pragma unroll", f"{p}  for (int tc_mt = 0; tc_mt < {plan.mt}; tc_mt++) {{",
                f"{p}    #pragma unroll", f"{p}    for (int tc_j = 0; tc_j < 4; tc_j++) {{"]
        out += self._read(found, plan.a, [(plan.m, "tc_mt * 16 + tc_g + 8 * (tc_j & 1)"),
                                          (plan.k, "tc_kc * 8 + tc_t + 4 * (tc_j >> 1)")], plan.n, d + 3,
                          "tc_a[tc_mt][tc_j] = tc_to_tf32({});")
        out += [f"{p}    }}", f"{p}  }}", f"{p}  #pragma unroll", f"{p}  for (int tc_nt = 0; tc_nt < {plan.nt}; tc_nt++) {{",
                f"{p}    #pragma unroll", f"{p}    for (int tc_j = 0; tc_j < 2; tc_j++) {{"]
        out += self._read(found, plan.b, [(plan.k, "tc_kc * 8 + tc_t + 4 * tc_j"), (plan.n, "tc_nt * 8 + tc_g")],
                          plan.m, d + 3, "tc_b[tc_nt][tc_j] = tc_to_tf32({});")
        out += [f"{p}    }}", f"{p}  }}", f"{p}  #pragma unroll", f"{p}  for (int tc_mt = 0; tc_mt < {plan.mt}; tc_mt++) {{",
                f"{p}    #pragma unroll", f"{p}    for (int tc_nt = 0; tc_nt < {plan.nt}; tc_nt++) {{",
                f"{p}      tc_mma_tf32(&tc_c[(tc_mt * {plan.nt} + tc_nt) * 4], tc_a[tc_mt], tc_b[tc_nt]);",
                f"{p}    }}", f"{p}  }}", f"{p}}}"]
        for _ in plan.outer:
            d -= 1
            out.append(f"{'  ' * d}}}")
        out += self._over_accumulators(found, plan, depth + 1,
                                       f"if (tc_store) {element} = tc_c[(tc_mt * {plan.nt} + tc_nt) * 4 + tc_j];")
        out.append(f"{pad}}}")
        return out

    def _over_accumulators(self, found: Tile, plan: MmaPlan, depth: int, line: str) -> list[str]:
        """``line`` for each of a lane's accumulators, with ``tc_off`` the byte offset of its element."""
        p = "  " * depth
        out = [f"{p}#pragma unroll", f"{p}for (int tc_mt = 0; tc_mt < {plan.mt}; tc_mt++) {{",
               f"{p}  #pragma unroll", f"{p}  for (int tc_nt = 0; tc_nt < {plan.nt}; tc_nt++) {{",
               f"{p}    #pragma unroll", f"{p}    for (int tc_j = 0; tc_j < 4; tc_j++) {{"]
        q = p + "      "
        for var, expr in decode(plan.m, "tc_mt * 16 + tc_g + 8 * (tc_j >> 1)") + decode(
                plan.n, "tc_nt * 8 + 2 * tc_t + (tc_j & 1)"):
            out.append(f"{q}const idx {var} = {expr};")
        out += [f"{q}const idx tc_off = {lin_c(found.offset, lambda v: v)};", q + line,
                f"{p}    }}", f"{p}  }}", f"{p}}}"]
        return out

    def _read(self, found: Tile, access: Access, dims: list[tuple[tuple[For, ...], str]],
              unused: tuple[For, ...], depth: int, sink: str) -> list[str]:
        """A block giving ``sink`` the value ``access`` reads at the point where each group of loops in
        ``dims`` is at the given flat position (the ``unused`` loops, which it does not read, at their
        first value)."""
        p = "  " * depth
        out = [f"{p}{{"]
        for loops, flat in dims:
            out += [f"{p}  const idx {var} = {expr};" for var, expr in decode(loops, flat)]
        out += [f"{p}  [[maybe_unused]] const idx {lp.var} = {lp.lo.value};" for lp in unused]
        for name, e in found.compute.env:
            out.append(f"{p}  [[maybe_unused]] const idx ix_{name} = {iexpr_c(e)};")
            self.env[name] = f"ix_{name}"
        self.loop_env = {name: to_lin(e) for name, e in found.compute.env}
        out.append(f"{p}  " + sink.format(self.value(access, "float32")))
        self.loop_env = None
        out.append(f"{p}}}")
        return out
