"""Shared-memory staging for the CUDA generator (``Threads`` and ``Stage`` records).

``StagingEmitter`` is the part of the kernel builder (``codegen.cuda``) that plans which box of a
staged tensor each block copies into a ``__shared__`` array at the top of a reduction loop
(``plan_stages``, ``box_of``) and prints the coalesced, bounds-checked copies (``load_staged``); see
``codegen.cuda``'s docstring for the scheme. It uses the builder's ``bound``, ``buffer_strides`` and
``stages`` and its ``ref``/``constant`` printers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ScheduleError
from ..schedule.loopnest import Compute, IConst, to_lin
from ..schedule.records import Stage
from ..strides import ITEMSIZE
from ..target import CUDA_SHARED_BYTES
from .cuda_c import MEMTYPE, iexpr_c, ivars

# double-buffered tiles: element copies global -> shared, asynchronous where the GPU has cp.async
COPY_PRELUDE = """__device__ __forceinline__ void tc_copy_async4(void *dst, const void *src) {  // global -> shared
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src));
#else
  *(unsigned *)dst = *(const unsigned *)src;
#endif
}
__device__ __forceinline__ void tc_copy_async8(void *dst, const void *src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src));
#else
  *(unsigned long long *)dst = *(const unsigned long long *)src;
#endif
}
__device__ __forceinline__ void tc_copy_async16(void *dst, const void *src) {  // 16-byte aligned both
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src));
#else
  *(float4 *)dst = *(const float4 *)src;
#endif
}
__device__ __forceinline__ void tc_copy16(void *dst, const void *src) { *(float4 *)dst = *(const float4 *)src; }
__device__ __forceinline__ void tc_copies_done() {  // this thread's asynchronous copies have landed
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
"""


@dataclass(frozen=True)
class _Staged:
    """A tensor staged in shared memory at one reduction loop: per-axis base expressions (C), the
    box's extents, its element strides in the shared array, and the order its axes are copied in."""

    tensor: str
    loop: str
    bases: tuple[str, ...]  # names of the per-axis base coordinates
    exprs: tuple[str, ...]  # their values at the top of an iteration of ``loop``
    extents: tuple[int, ...]
    sstrides: tuple[int, ...]
    order: tuple[int, ...]  # axes, innermost (fastest in the copy) first
    buffers: int = 1  # 2: double-buffered (the next iteration's tile loaded while this one is used)

    @property
    def size(self) -> int:
        n = 1
        for e in self.extents:
            n *= e
        return n


class StagingEmitter:
    """Shared-memory tiles, for ``codegen.cuda._CudaBuilder`` (see the module docstring)."""

    def plan_stages(self, found, box: dict) -> list[_Staged]:
        """The shared-memory boxes of the tensors that ``Stage`` records name for this statement."""
        k = found.compute.stmt
        st = self.bound.statements[k].stmt
        reduction, tile = list(found.reduction), list(found.tile)
        names = [lp.var for lp in reduction]
        thread_vars: dict[str, tuple[str, int]] = box["thread_vars"]
        out = []
        for r in [r for r in self.stages if r.stmt == k]:
            if r.loop not in names:
                raise ScheduleError(f"Stage: statement {k} has no reduction loop '{r.loop}' around its register tile; "
                                    f"its reduction loops are: {', '.join(names)}")
            if any(sg.tensor == r.tensor for sg in out):
                raise ScheduleError(f"Stage: {r.tensor} is staged twice for statement {k}")
            pos = names.index(r.loop)
            for lp in reduction[:pos + 1]:
                shared = (ivars(lp.lo) | ivars(lp.hi)) & set(thread_vars)
                if shared:
                    raise ScheduleError(f"Stage: the bounds of loop '{lp.var}' of statement {k} depend on "
                                        f"{', '.join(sorted(shared))}, which differ between the threads of a block, "
                                        f"so they cannot meet at the barriers around a shared tile of {r.tensor}")
            varying = {v: (0, tt - 1) for v, (_, tt) in thread_vars.items()}
            for lp in reduction[pos + 1:] + tile:
                if not (isinstance(lp.lo, IConst) and isinstance(lp.hi, IConst)):
                    raise ScheduleError(f"Stage: loop '{lp.var}' inside '{r.loop}' of statement {k} has bounds "
                                        f"{lp.lo}..{lp.hi}; the shared tile of {r.tensor} needs constant bounds "
                                        f"inside the staged loop (split by a factor that divides the extent)")
                last = lp.lo.value + lp.step * ((lp.hi.value - lp.lo.value - 1) // lp.step)
                varying[lp.var] = (lp.lo.value, last - lp.lo.value)
            fixed = set(names[:pos + 1]) | set(box["fixed_vars"])
            out.append(self.box_of(k, st, found.compute, r, varying, thread_vars, fixed))
        for sg in out:
            other = next((o for o in out if o.loop == sg.loop and o.buffers != sg.buffers), None)
            if other is not None:
                raise ScheduleError(f"Stage: {sg.tensor} and {other.tensor} are staged at loop '{sg.loop}' of statement "
                                    f"{k} with {sg.buffers} and {other.buffers} buffers; tiles staged at one loop "
                                    f"share their barriers, so give them the same buffers")
        used = sum(sg.buffers * sg.size * ITEMSIZE[self.bound.tensors[sg.tensor].dtype] for sg in out)
        if used > CUDA_SHARED_BYTES:
            boxes = ", ".join(f"{sg.tensor} {' x '.join(map(str, sg.extents))}" for sg in out)
            raise ScheduleError(f"Stage: the shared tiles of statement {k} ({boxes}) need {used} bytes per block; "
                                f"at most {CUDA_SHARED_BYTES} fit (stage at an inner loop, split the staged loop by a "
                                f"smaller factor, or use fewer threads)")
        return out

    def box_of(self, k: int, st, compute: Compute, r: Stage, varying: dict[str, tuple[int, int]],
               thread_vars: dict[str, tuple[str, int]], fixed: set[str]) -> _Staged:
        """The hull of statement ``k``'s reads of ``r.tensor`` over ``varying`` loops (lowest value,
        span), with the other loop variables fixed, as a box in the tensor's coordinates."""
        lins = {name: to_lin(e) for name, e in compute.env}
        reads = [a for a in dict.fromkeys(st.accesses()) if a.tensor == r.tensor]
        if not reads:
            raise ScheduleError(f"Stage: statement {k} does not read {r.tensor}; it reads "
                                f"{', '.join(dict.fromkeys(a.tensor for a in st.accesses())) or 'nothing'}")
        rank = len(reads[0].index)
        bases, exprs, extents = [], [], []
        for axis in range(rank):
            terms, consts = None, []
            for a in reads:
                full = a.index[axis].rename(lins).expand_mod()
                if any(not isinstance(atom, str) for atom, _ in full.terms):
                    raise ScheduleError(f"Stage: axis {axis} of {r.tensor} in statement {k} is indexed by {full}, "
                                        f"which is not affine in the loops; it cannot be staged")
                t = tuple(sorted(full.terms))
                if terms is not None and t != terms:
                    raise ScheduleError(f"Stage: statement {k} reads {r.tensor} at indices that differ by more "
                                        f"than a constant on axis {axis}; it cannot be staged as one box")
                terms = t
                consts.append(full.const)
            const, parts, extent = min(consts), [], max(consts) - min(consts) + 1
            for var, coef in terms:
                if var in varying:
                    lo, span = varying[var]
                    low = lo if coef > 0 else lo + span  # where coef * var is lowest
                    if var in thread_vars:
                        term = thread_vars[var][0] if coef == 1 else f"{coef} * {thread_vars[var][0]}"
                        parts.append(term + (f" + {coef * low}" if low else ""))
                    else:
                        const += coef * low
                    extent += abs(coef) * span
                elif var in fixed:
                    parts.append(var if coef == 1 else f"{coef} * {var}")
                else:
                    raise ScheduleError(f"Stage: the reads of {r.tensor} in statement {k} depend on loop '{var}', "
                                        f"which runs inside '{r.loop}' without constant bounds")
            bases.append(f"tc_sb_{r.tensor}_{axis}")
            exprs.append(" + ".join(parts + [str(const)] if const or not parts else parts))
            extents.append(extent)
        strides = self.buffer_strides[r.tensor].strides
        order = tuple(sorted(range(rank), key=lambda ax: (abs(strides[ax]), -ax)))  # physical innermost first
        sstrides, n = [0] * rank, 1
        for ax in order:
            sstrides[ax] = n
            n *= extents[ax]
        return _Staged(r.tensor, r.loop, tuple(bases), tuple(exprs), tuple(extents), tuple(sstrides), order, r.buffers)

    def load_staged(self, tiles: list[_Staged], threads: int, d: int) -> list[str]:
        """The block's cooperative copies of ``tiles`` into shared memory, between two barriers."""
        pad = "  " * d
        names = " and ".join(sg.tensor for sg in tiles)
        lines = [f"{pad}__syncthreads();  // every thread is done with the previous tile of {names}"]
        for sg in tiles:
            lines += self._bases(sg, pad)
            lines += self._copies(sg, threads, pad, "", False)
        lines.append(f"{pad}__syncthreads();  // the tile of {names} is in shared memory")
        return lines

    # -- double buffering: the tile of the next iteration, loaded while this one is used -------------
    def first_tiles(self, tiles: list[_Staged], threads: int, loop, d: int) -> list[str]:
        """Before a double-buffered loop: its first iteration's tiles into buffer 0, then a barrier
        (the previous use of the buffers ended at the barrier closing that loop's last iteration)."""
        pad = "  " * d
        lines = [f"{pad}int tc_buf_{loop.var} = 0;  // the buffer that holds this iteration's tiles",
                 f"{pad}if ({iexpr_c(loop.lo)} < {iexpr_c(loop.hi)}) {{",
                 f"{pad}  const idx {loop.var} = {iexpr_c(loop.lo)};"]
        for sg in tiles:
            lines += self._bases(sg, pad + "  ")
            lines += self._copies(sg, threads, pad + "  ", "", False)
        lines += [f"{pad}}}", f"{pad}__syncthreads();  // the first tile of {' and '.join(sg.tensor for sg in tiles)} "
                  f"is in shared memory"]
        return lines

    def prefetch(self, tiles: list[_Staged], threads: int, loop, d: int) -> list[str]:
        """At the top of an iteration: this iteration's tiles (``tc_sp_<tensor>``), and the copies of
        the next iteration's into the other buffers started -- asynchronous on sm_80 and newer
        (``cp.async``: no registers held, the loads overlap the arithmetic), plain stores before."""
        pad = "  " * d
        lines = [f"{pad}const bool tc_more_{loop.var} = {loop.var} + {loop.step} < {iexpr_c(loop.hi)};"]
        for sg in tiles:
            ctype = MEMTYPE[self.bound.tensors[sg.tensor].dtype]
            lines += self._bases(sg, pad)  # where this iteration's tile sits in the tensor
            lines.append(f"{pad}const {ctype} *tc_sp_{sg.tensor} = tc_s_{sg.tensor} + tc_buf_{loop.var} * {sg.size};")
        lines += [f"{pad}if (tc_more_{loop.var}) {{", f"{pad}  const idx tc_next = {loop.var} + {loop.step};",
                  f"{pad}  {{", f"{pad}    const idx {loop.var} = tc_next;"]
        for sg in tiles:
            lines += self._bases(sg, pad + "    ")
            lines += self._copies(sg, threads, pad + "    ", f"(tc_buf_{loop.var} ^ 1) * {sg.size} + ", True)
        lines += [f"{pad}  }}", f"{pad}}}"]
        return lines

    def store_prefetched(self, tiles: list[_Staged], threads: int, loop, d: int) -> list[str]:
        """At the bottom of an iteration: the copies ``prefetch`` started waited for, a barrier, and
        the buffers swapped."""
        pad = "  " * d
        return [f"{pad}tc_copies_done();  // this thread's copies of the next tiles have landed",
                f"{pad}__syncthreads();  // this iteration's tiles are used up; the next ones are in shared memory",
                f"{pad}tc_buf_{loop.var} ^= 1;"]

    def _copies(self, sg: _Staged, threads: int, pad: str, at: str, asynchronous: bool) -> list[str]:
        """The block's copy of ``sg``'s box into ``tc_s_<tensor>[at + e]``. Where the box's physical
        innermost axis is contiguous in the tensor and whole 16-byte chunks of it fit the box, each
        thread copies chunks -- one 16-byte load (``cp.async`` when ``asynchronous``) per chunk that
        lies inside the tensor on a 16-byte boundary, element by element otherwise; else elements
        (``cp.async`` of 4 or 8 bytes when ``asynchronous``)."""
        info = self.bound.tensors[sg.tensor]
        size = ITEMSIZE[info.dtype]
        inner = sg.order[0]
        lanes = 16 // size if size in (4, 8) else 1
        dst = f"tc_s_{sg.tensor}[{at}tc_e]"
        if lanes > 1 and self.aligned and sg.extents[inner] % lanes == 0 and \
                abs(self.buffer_strides[sg.tensor].strides[inner]) == size:
            self.copies = True
            conds, offset, _, coords = self._element_parts(sg, pad + "  ")
            lo = (info.pad or ((0, 0),) * len(sg.bases))[inner][0]
            copy = "tc_copy_async16" if asynchronous else "tc_copy16"
            return [f"{pad}for (idx tc_e = threadIdx.x * {lanes}; tc_e < {sg.size}; tc_e += {threads * lanes}) {{"
                    f"  // chunks of {lanes}", *coords,
                    f"{pad}  const char *tc_src = (const char *)b_{sg.tensor} + ({offset});",
                    f"{pad}  if ({conds} && tc_c{inner} + {lanes - 1} < {lo + info.shape[inner]} && "
                    f"(unsigned long long)tc_src % 16 == 0) {copy}(&{dst}, tc_src);",
                    f"{pad}  else for (int tc_v = 0; tc_v < {lanes}; tc_v++) {{",
                    f"{pad}    const idx tc_e2 = tc_e + tc_v;", f"{pad}    {{", f"{pad}      const idx tc_e = tc_e2;",
                    *self._element(sg, pad + "      ", f"{dst} = {{}};"), f"{pad}    }}", f"{pad}  }}", f"{pad}}}"]
        lines = [f"{pad}for (idx tc_e = threadIdx.x; tc_e < {sg.size}; tc_e += {threads}) {{"]
        if asynchronous and size in (4, 8):
            self.copies = True
            conds, offset, fill, coords = self._element_parts(sg, pad + "  ")
            lines += coords + [f"{pad}  if ({conds}) tc_copy_async{size}(&{dst}, (const char *)b_{sg.tensor} + "
                               f"({offset}));", f"{pad}  else {dst} = {fill};"]
        else:
            lines += self._element(sg, pad + "  ", f"{dst} = {{}};")
        return lines + [f"{pad}}}"]

    def _bases(self, sg: _Staged, pad: str) -> list[str]:
        return [f"{pad}const idx {base} = {expr};" for base, expr in zip(sg.bases, sg.exprs)]

    def _element(self, sg: _Staged, pad: str, sink: str) -> list[str]:
        """Element ``tc_e`` of ``sg``'s box, read from the tensor (its pad value outside it), given to
        ``sink`` (a format string with one ``{}``)."""
        conds, offset, fill, lines = self._element_parts(sg, pad)
        value = self.ref(sg.tensor, offset, read=True)
        lines.append(pad + sink.format(f"({conds}) ? {value} : {fill}"))
        return lines

    def _element_parts(self, sg: _Staged, pad: str) -> tuple[str, str, str, list[str]]:
        """(whether element ``tc_e`` of ``sg``'s box lies inside the tensor, its byte offset there,
        the value outside, the lines computing its coordinates)."""
        info = self.bound.tensors[sg.tensor]
        lines = [f"{pad}idx tc_r = tc_e;"]
        for j, axis in enumerate(sg.order):
            step = f" tc_r /= {sg.extents[axis]};" if j + 1 < len(sg.order) else ""
            lines.append(f"{pad}const idx tc_c{axis} = {sg.bases[axis]} + tc_r % {sg.extents[axis]};{step}")
        pads = info.pad or ((0, 0),) * len(sg.bases)
        conds = " && ".join(f"tc_c{axis} >= {lo} && tc_c{axis} < {lo + n}" for axis, ((lo, _), n) in
                            enumerate(zip(pads, info.shape))) or "true"
        offset = " + ".join(f"(tc_c{axis} - {lo}) * {stride}LL" if lo else f"tc_c{axis} * {stride}LL"
                            for axis, ((lo, _), stride) in enumerate(zip(pads, self.buffer_strides[sg.tensor].strides)))
        fill = "0" if info.dtype == "bool" else self.constant(info.pad_value if info.pad else 0, info.dtype)
        return conds, offset or "0", fill, lines
