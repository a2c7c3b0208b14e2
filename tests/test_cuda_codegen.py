"""Generated CUDA C assembles for sm_80 and sm_90 without a GPU (skipped where nvcc is missing)."""

import re
import shutil
import subprocess

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import ops
from tensorcomp import schedule as S

NVCC = shutil.which("nvcc")

z32 = lambda *s: np.zeros(s, np.float32)  # noqa: E731
z64 = lambda *s: np.zeros(s, np.float64)  # noqa: E731

CORPUS = [
    (tc.op("C[i, j] += A[i, k] * B[k, j]"), (z32(8, 5), z32(5, 7)), {}),
    (tc.op("O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"),
     (z32(2, 9, 9, 3, 2, 5), z32(3, 3, 3, 4, 5, 3)), {}),
    (tc.op("M[n] = max(X[n, c])\nE[n, c] = exp(X[n, c] - M[n])\nS[n] += E[n, c]\nY[n, c] = E[n, c] / S[n]"),
     (z64(4, 6),), {}),
    (tc.op("O[n, 2*y + ky] += I[n, y] * K[ky]"), (z32(2, 5), z32(3)), {}),
    (tc.op("O[i // 2, i % 2] = where(A[i] > 0, A[i] * s, -A[i] ** 2) + i", ), (z64(8),), {"s": 0.5}),
    (tc.op("O[y, x] += I[y + ky, x + kx] * K[ky, kx]", pad={"I": 1}), (z32(5, 6), z32(3, 3)), {}),
    (tc.op("O[n, y] = max(I[n, 2*y + k])", ranges={"k": 3}), (z32(2, 9),), {}),
    (tc.op("O[i] = A[i] // B[i] + A[i] % 3 + abs(A[i])"), (np.zeros(5, np.int32), np.ones(5, np.int32)), {}),
    (tc.op("O[i] = A[i] > 0 and not B[i] < 1"), (z32(4), z32(4)), {}),
    (tc.op("S += A[i, i]"), (z64(3, 3),), {}),
    (tc.op("O[i] = prod(A[i, j])\nP[i] = min(A[i, j] * sigmoid(A[i, j]) + tanh(A[i, j]))"), (z32(3, 4),), {}),
    (ops.conv(2, stride=2, dilation=2, padding=1), (z32(2, 3, 9, 9), z32(4, 3, 3, 3)), {}),
    (ops.pool("avg", 2, 3, 2, padding=1, channels_last=True), (z32(2, 7, 7, 3),), {}),
    (ops.squash(3), (z32(2, 3, 4),), {}),
    # register tiles (p, r) and (co_i, r) inside the reduction, with the reduction loops unrolled
    (tc.op("O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]",
           schedule=(tc.schedule.Reorder(0, ("n", "y", "x", "co", "ky", "kx", "ci", "q", "p", "r")),
                     tc.schedule.Block(64))), (z32(2, 9, 9, 3, 4, 4), z32(3, 3, 3, 8, 4, 4)), {}),
    (tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=(
        tc.schedule.Split(0, "j", 4), tc.schedule.Reorder(0, ("i", "j_o", "k", "j_i")))), (z32(8, 5), z32(5, 12)), {}),
    # shared-memory tiles: A and B staged per 4 steps of k for 4 x 16 threads (boxes overhang i_o and j)
    (tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=(
        tc.schedule.Split(0, "i", 4), tc.schedule.Split(0, "k", 4), tc.schedule.Reorder(0, ("i_o", "j", "k_o", "k_i", "i_i")),
        tc.schedule.Threads(0, (4, 16)), tc.schedule.Stage(0, "A", "k_o"), tc.schedule.Stage(0, "B", "k_o"))),
     (z32(36, 12), z32(12, 20)), {}),
    (tc.op("O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]", schedule=(
        tc.schedule.Reorder(0, ("n", "y", "x", "co", "ky", "kx", "ci", "q", "p", "r")), tc.schedule.Threads(0, (2, 2, 8)),
        tc.schedule.Stage(0, "I", "ky"), tc.schedule.Stage(0, "W", "kx"))), (z32(2, 9, 9, 3, 4, 4), z32(3, 3, 3, 8, 4, 4)),
     {}),
    # double-buffered: the next k_o's tiles loaded into registers while this one's are used
    (tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=(
        tc.schedule.Split(0, "i", 4), tc.schedule.Split(0, "k", 4), tc.schedule.Reorder(0, ("i_o", "j", "k_o", "k_i", "i_i")),
        tc.schedule.Threads(0, (4, 16)), tc.schedule.Stage(0, "A", "k_o", 2), tc.schedule.Stage(0, "B", "k_o", 2))),
     (z32(36, 16), z32(16, 20)), {}),
    # index names that the generated code must not capture
    (tc.op("O[rest, flat] += A[rest, acc] * B[acc, flat]"), (z32(3, 4), z32(4, 5)), {}),
    # the C library's functions (erf, expm1, log1p, atan2) and the ones made of others
    (tc.op("O[i] = erf(A[i]) + erfc(A[i]) + expm1(A[i]) + log1p(abs(A[i])) + sign(A[i]) + rsqrt(abs(A[i]) + 1) + "
           "softplus(A[i]) + atan2(A[i], B[i])"), (z32(9), z32(9)), {}),
    (tc.op("O[i] = erf(A[i]) * softplus(A[i]) + atan2(B[i], A[i]) + sign(B[i])"), (z64(7), z64(7)), {}),
    # arg-reductions, lookups through index tensors, a scan: statements of the language like any other
    (tc.op("I[n] = argmax(X[n, c])"), (z32(4, 6),), {}),
    (tc.op("O[b, d] += E[T[b, l], d]"), (z32(5, 3), np.zeros((2, 4), np.int64)), {}),
    (tc.op("O[T[i], d] += X[i, d]", ranges={"T": 4}), (z64(6, 2), np.zeros(6, np.int64)), {}),
    (tc.op("C[i0, i1] += where(j <= i1, X[i0, j], where(j < 0, X[i0, i1], 0))"), (z32(3, 5),), {}),
    # the plain mapping of a contraction: one thread per output element
    (tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=(tc.schedule.Block(256),)), (z32(8, 5), z32(5, 7)), {}),
]
GRADS = [
    (tc.grad(CORPUS[1][0], ["I", "W"]), CORPUS[1][1] + (z32(2, 4, 4, 4, 2, 3),), {}),
    (tc.grad(CORPUS[2][0], "X"), CORPUS[2][1] + (z64(4, 6),), {}),
    (tc.grad(CORPUS[6][0], "I"), CORPUS[6][1] + (z32(2, 4),), {}),
    (tc.grad(CORPUS[5][0], "I"), CORPUS[5][1] + (z32(5, 6),), {}),
]


def _sources() -> str:
    parts = []
    for k, (op, arrays, params) in enumerate(CORPUS + GRADS):
        code = op.code(*arrays, target="cuda", **params)
        # one translation unit: each op in a namespace of its own, its kernels named apart
        code = code.replace("kernel_stage", f"op{k}_stage")
        parts.append(f"namespace op{k} {{\n{code}}}  // namespace op{k}\n")
    return "\n".join(parts)


def test_code_for_cuda_needs_no_gpu():
    op, arrays, _ = CORPUS[-1]  # the plain mapping: a Block record and nothing else
    code = op.code(*arrays, target="cuda")
    assert ('extern "C" __global__ void kernel_stage1(const float *__restrict__ b_A, const float *__restrict__ b_B, '
            'float *__restrict__ b_C)') in code  # read-only inputs are const
    assert "// launch kernel_stage1<<<1, 256>>>: 56 parallel iterations" in code  # one thread per C[i, j]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_corpus_assembles(tmp_path, arch):
    src = tmp_path / "corpus.cu"
    src.write_text(_sources())
    proc = subprocess.run([NVCC, f"-arch={arch}", "-cubin", "-Werror", "all-warnings", str(src),
                           "-o", str(tmp_path / "corpus.cubin")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "corpus.cubin").stat().st_size > 0


def test_register_tile_golden():
    op = CORPUS[14][0]
    code = op.code(*CORPUS[14][1], target="cuda")
    assert "// launch kernel_stage1<<<4, 64>>>: 256 parallel iterations" in code  # n, y, x, co on threads
    assert "{  // register tile: 16 elements of O\n      float tc_acc[16];" in code
    # the innermost reduction loops, up to 16 steps (ci*q = 12), are unrolled
    assert "#pragma unroll\n          for (idx ci = 0; ci < 3; ci += 1) {\n            #pragma unroll\n" in code
    assert "tc_acc[(p - 0) * 4 + (r - 0)] = (tc_acc[(p - 0) * 4 + (r - 0)] + (" in code
    # W[.., q, r] is contiguous along the innermost tile loop r: read four at a time
    assert "const float4 tc_v0 = *(const float4 *)((const char *)b_W + (" in code
    # 32-bit indices (every tensor is small), 64-bit for a tensor of 2**28 bytes or more
    assert "typedef int idx;" in code
    big = tc.op("B[i] = A[i] * 2").code(np.zeros(1 << 26, np.float32), target="cuda")
    assert "typedef long long idx;" in big and "67108864LL" in big


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_register_tile_reads_are_vector_loads_in_ptx(tmp_path):
    op = CORPUS[14][0]
    src = tmp_path / "tile.cu"
    src.write_text(op.code(*CORPUS[14][1], target="cuda"))
    proc = subprocess.run([NVCC, "-arch=sm_90", "-ptx", str(src), "-o", str(tmp_path / "tile.ptx")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ld.global.v4.f32" in (tmp_path / "tile.ptx").read_text()


def test_launch_configuration_golden():
    op = tc.op("O[n, y, x, f] += I[n, y + ky, x + kx, c] * W[ky, kx, c, f]", schedule=(S.Block(256),))
    code = op.code(z32(8, 10, 10, 16), z32(3, 3, 16, 32), target="cuda")
    launches = re.findall(r"// launch (.*)", code)
    # the plain mapping: the fill and the convolution, one thread per output element (8*8*8*32),
    # reductions in each thread
    assert launches == ["kernel_stage0<<<64, 256>>>: 16384 parallel iterations",
                        "kernel_stage1<<<64, 256>>>: 16384 parallel iterations"]
    # a reduction whose outermost loop is not a written index runs on one thread
    colsum = tc.op("O[j] += A[i, j]", schedule=(tc.schedule.Reorder(0, ("i", "j")),))
    assert "<<<1, 1>>>: sequential" in colsum.code(z32(5, 3), target="cuda")


def test_default_gpu_schedule_golden():
    # with no schedule of its own or tuned, a contraction gets register tiles fed from double-buffered
    # shared-memory tiles, staged at the outer part of a split reduction loop
    conv = tc.op("O[n, y, x, f] += I[n, y + ky, x + kx, c] * W[ky, kx, c, f]")
    code = conv.code(z32(8, 10, 10, 16), z32(3, 3, 16, 32), target="cuda")
    assert re.findall(r"// launch (.*)", code)[1] == ("kernel_stage1<<<64, 128>>>: 8192 parallel iterations in boxes "
                                                      "of 128 threads")
    assert "{  // register tile: 2 elements of O" in code
    assert "__shared__ __align__(16) float tc_s_I[128];  // 2 x 1 x 4 x 8 box of I per iteration of c_o" in code
    assert "__shared__ __align__(16) float tc_s_W[512];  // 1 x 1 x 8 x 32 box of W per iteration of c_o" in code
    assert "int tc_buf_c_o = 0;" in code  # double-buffered
    # the capsule convolution at batch 64: staged tiles that fit in 48 KB (ci split by 4)
    caps = tc.op(CORPUS[1][0].source).code(z32(64, 30, 30, 32, 4, 4), z32(3, 3, 32, 32, 4, 4), target="cuda")
    assert "{  // register tile: 64 elements of O" in caps
    assert "__shared__ __align__(16) float tc_s_I[3072];  // 8 x 1 x 3 x 4 x 4 x 4 box of I per iteration of ci_o" in caps
    # a strided convolution's input gradient (gather form): a register tile of (p, q) per thread
    dI = tc.grad(tc.op(CORPUS[1][0].source), "I").code(z32(32, 14, 14, 32, 4, 4), z32(3, 3, 32, 32, 4, 4),
                                                       z32(32, 6, 6, 32, 4, 4), target="cuda")
    assert "{  // register tile: 16 elements of dI" in dI
    # elementwise ops keep the plain mapping
    assert "__shared__" not in tc.op("B[i] = A[i] * 2").code(z32(1000), target="cuda")


def test_unknown_targets_and_devices_are_refused():
    op = tc.op("B[i] = A[i] + 1")
    with pytest.raises(tc.ArgumentError) as info:
        op(np.zeros(3), target="tpu")
    assert str(info.value) == "op 'B[i] = A[i] + 1': unknown target 'tpu'; available targets: cpu, cuda"
    with pytest.raises(tc.TensorcompError) as info:
        tc.Tensor(np.zeros(3), device="tpu")
    assert str(info.value) == "unknown device 'tpu'; devices: cpu, cuda"
    from tensorcomp.runtime import cuda
    if not cuda.available():
        with pytest.raises(tc.errors.DeviceError) as info:
            op(np.zeros(3), target="cuda")
        assert str(info.value).startswith("target 'cuda' needs pycuda, which is not importable")
        assert "pip install 'tensorcomp[cuda]'" in str(info.value)


def test_shared_memory_tiles_golden():
    op, arrays, _ = CORPUS[16]
    code = op.code(*arrays, target="cuda")
    # 9 x 20 (i_o, j) in boxes of 4 x 16 threads: 3 x 2 blocks; threads past i_o = 9 or j = 20 idle
    assert "// launch kernel_stage1<<<6, 64>>>: 180 parallel iterations in boxes of 64 threads" in code
    assert "for (idx tc_blk = blockIdx.x; tc_blk < 6; tc_blk += gridDim.x) {  // uniform in the block" in code
    assert "const bool tc_active = j < 20 && i_o < 9;" in code
    # the boxes: 4 threads x 4 rows of i_i by 4 steps of k_i of A, 4 steps by 16 threads of B
    assert "__shared__ __align__(16) float tc_s_A[64];  // 16 x 4 box of A per iteration of k_o" in code
    assert "__shared__ __align__(16) float tc_s_B[64];  // 4 x 16 box of B per iteration of k_o" in code
    staged = code[code.index("for (idx k_o = 0; k_o < 3; k_o += 1) {"):]
    assert staged.count("__syncthreads();") == 2  # one before the copies, one after
    assert "const idx tc_sb_A_0 = 4 * tc_b_i_o;\n" in staged and "const idx tc_sb_A_1 = 4 * k_o;\n" in staged
    # A's rows of 4 k-steps are contiguous: each thread copies one 16-byte chunk (16 threads), when it lies
    # inside A on a 16-byte boundary, else element by element
    assert "for (idx tc_e = threadIdx.x * 4; tc_e < 64; tc_e += 256) {  // chunks of 4" in staged
    assert ("if (tc_c0 >= 0 && tc_c0 < 36 && tc_c1 >= 0 && tc_c1 < 12 && tc_c1 + 3 < 12 && (unsigned long long)tc_src "
            "% 16 == 0) tc_copy16(&tc_s_A[tc_e], tc_src);") in staged
    # copies are bounds-checked (the last box overhangs A); the statement reads the copy
    assert "tc_s_A[tc_e] = (tc_c0 >= 0 && tc_c0 < 36 && tc_c1 >= 0 && tc_c1 < 12) ? (*(const float *)((const " \
           "char *)b_A + (tc_c0 * 48 + tc_c1 * 4))) : ((float)0.0);" in staged
    assert "const idx tc_sb_B_0 = 4 * k_o;\n" in staged and "const idx tc_sb_B_1 = tc_b_j;\n" in staged
    assert "(tc_s_A[((ix_i) - tc_sb_A_0) * 4 + ((ix_k) - tc_sb_A_1) * 1] * tc_s_B[((ix_k) - tc_sb_B_0) * 16 + " \
           "((ix_j) - tc_sb_B_1) * 1])" in staged
    # the strided capsule read: per ky, for 2 x 2 x 8 threads over (y, x, co), I[n, 2*y + ky, 2*x + kx, ci, p, q]
    # spans 1 x (2*1 + 1) x (2*1 + 2 + 1) x 3 x 4 x 4 (y; x and kx vary), W per (ky, kx) 3 x 8 x 4 x 4
    caps = CORPUS[17][0].code(*CORPUS[17][1], target="cuda")
    assert "__shared__ __align__(16) float tc_s_I[720];  // 1 x 3 x 5 x 3 x 4 x 4 box of I per iteration of ky" in caps
    assert "__shared__ __align__(16) float tc_s_W[384];  // 1 x 1 x 3 x 8 x 4 x 4 box of W per iteration of kx" in caps


def test_double_buffered_tiles_golden():
    code = CORPUS[18][0].code(*CORPUS[18][1], target="cuda")
    assert "__shared__ __align__(16) float tc_s_A[128];  // 16 x 4 box of A per iteration of k_o" in code  # two 64-element tiles
    before = code[code.index("int tc_buf_k_o = 0;"):code.index("for (idx k_o = 0; k_o < 4; k_o += 1) {")]
    assert "const idx k_o = 0;" in before and before.count("__syncthreads();") == 1  # the first tiles, then a barrier
    loop = code[code.index("for (idx k_o = 0; k_o < 4; k_o += 1) {"):]
    assert loop.count("__syncthreads();") == 1  # one barrier per iteration, after the compute
    assert "const bool tc_more_k_o = k_o + 1 < 4;" in loop
    assert "const float *tc_sp_A = tc_s_A + tc_buf_k_o * 64;" in loop  # this iteration's tile
    # the next iteration's tile copied into the other buffer (cp.async on sm_80+), the loop variable rebound
    assert "const idx tc_next = k_o + 1;\n          {\n            const idx k_o = tc_next;" in loop
    assert ("if (tc_c0 >= 0 && tc_c0 < 36 && tc_c1 >= 0 && tc_c1 < 16 && tc_c1 + 3 < 16 && (unsigned long long)tc_src "
            "% 16 == 0) tc_copy_async16(&tc_s_A[(tc_buf_k_o ^ 1) * 64 + tc_e], tc_src);") in loop
    assert ("tc_s_A[(tc_buf_k_o ^ 1) * 64 + tc_e] = (tc_c0 >= 0 && tc_c0 < 36 && tc_c1 >= 0 && tc_c1 < 16) ? ") in loop
    # the statement reads this iteration's tile; the copies are waited for after it, then the barrier
    compute, wait = loop.index("tc_sp_A[((ix_i) - tc_sb_A_0) * 4"), loop.index("tc_copies_done();")
    assert compute < wait < loop.index("__syncthreads();") < loop.index("tc_buf_k_o ^= 1;")
    assert "cp.async.cg.shared.global [%0], [%1], 16;" in code and "cp.async.wait_all;" in code
    # a box whose innermost axis is not whole chunks copies elements, asynchronously too
    odd = tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=(
        S.Split(0, "i", 4), S.Split(0, "k", 3), S.Reorder(0, ("i_o", "j", "k_o", "k_i", "i_i")), S.Threads(0, (4, 16)),
        S.Stage(0, "A", "k_o", 2), S.Stage(0, "B", "k_o", 2))).code(z32(36, 18), z32(18, 20), target="cuda")
    assert "tc_copy_async4(&tc_s_A[(tc_buf_k_o ^ 1) * 48 + tc_e], (const char *)b_A + (tc_c0 * 72 + tc_c1 * 4));" in odd


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_double_buffered_copies_are_asynchronous_in_ptx(tmp_path):
    src = tmp_path / "db.cu"
    src.write_text(CORPUS[18][0].code(*CORPUS[18][1], target="cuda"))
    for arch, want in (("sm_80", True), ("sm_75", False)):
        proc = subprocess.run([NVCC, f"-arch={arch}", "-ptx", str(src), "-o", str(tmp_path / f"{arch}.ptx")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ptx = (tmp_path / f"{arch}.ptx").read_text()
        assert ("cp.async.cg.shared.global" in ptx and "cp.async.wait_all" in ptx) == want


@pytest.mark.parametrize("schedule,message", [
    ((S.Split(0, "k", 4), S.Reorder(0, ("i", "j", "k_o", "k_i")), S.Threads(0, (4, 8)), S.Stage(0, "A", "k_o", 2),
      S.Stage(0, "B", "k_o")),
     "Stage: A and B are staged at loop 'k_o' of statement 0 with 2 and 1 buffers; tiles staged at one loop share "
     "their barriers, so give them the same buffers"),
    ((S.Split(0, "k", 250), S.Reorder(0, ("i", "j", "k_o", "k_i")), S.Threads(0, (8, 32)), S.Stage(0, "A", "k_o", 2),
      S.Stage(0, "B", "k_o", 2)),
     "Stage: the shared tiles of statement 0 (A 8 x 250, B 250 x 32) need 80000 bytes per block; at most 49152 "
     "fit (stage at an inner loop, split the staged loop by a smaller factor, or use fewer threads)"),
    ((S.Reorder(0, ("i", "j", "k")), S.Stage(0, "A", "j")),
     "Stage: statement 0 has no reduction loop 'j' around its register tile; its reduction loops are: k"),
    ((S.Reorder(0, ("i", "j", "k")), S.Stage(0, "C", "k")), "Stage: statement 0 does not read C; it reads A, B"),
    ((S.Split(0, "k", 3), S.Reorder(0, ("i", "j", "k_o", "k_i")), S.Stage(0, "A", "k_o")),
     "Stage: loop 'k_i' inside 'k_o' of statement 0 has bounds 0..min(2, (-3 * k_o) + 999) + 1; the shared tile of "
     "A needs constant bounds inside the staged loop (split by a factor that divides the extent)"),
    ((S.Split(0, "k", 500), S.Reorder(0, ("i", "j", "k_o", "k_i")), S.Threads(0, (8, 32)), S.Stage(0, "A", "k_o"),
      S.Stage(0, "B", "k_o")),
     "Stage: the shared tiles of statement 0 (A 8 x 500, B 500 x 32) need 80000 bytes per block; at most 49152 "
     "fit (stage at an inner loop, split the staged loop by a smaller factor, or use fewer threads)"),
    ((S.Threads(0, (2, 2, 2)),), "Threads: statement 0 has 2 parallel loops (i, j); shape (2, 2, 2) names 3"),
])
def test_malformed_gpu_records_are_refused(schedule, message):
    op = tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=schedule)
    with pytest.raises(tc.ScheduleError) as info:
        op.code(z32(200, 1000), z32(1000, 50), target="cuda")
    assert str(info.value) == f"op 'C[i, j] += A[i, k] * B[k, j]': {message}"
    with pytest.raises(tc.ScheduleError) as info:
        tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=(S.Threads(0, (0, 4)),))
    assert str(info.value) == ("op 'C[i, j] += A[i, k] * B[k, j]': Threads shape must be positive thread counts with "
                               "a product of at most 1024, got (0, 4)")
    with pytest.raises(tc.ScheduleError) as info:
        tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=(S.Stage(0, "Q", "k"),))
    assert str(info.value) == ("op 'C[i, j] += A[i, k] * B[k, j]': Stage names tensor 'Q', which the op does not "
                               "use; its tensors are: A, B, C")
    with pytest.raises(tc.ScheduleError) as info:
        tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=(S.Stage(0, "A", "k", 3),))
    assert str(info.value) == ("op 'C[i, j] += A[i, k] * B[k, j]': Stage buffers must be 1 (one shared tile per "
                               "iteration) or 2 (double-buffered), got 3")
