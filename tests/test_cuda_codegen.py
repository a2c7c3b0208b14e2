"""Generated CUDA C assembles for sm_80 and sm_90 without a GPU (skipped where nvcc is missing)."""

import re
import shutil
import subprocess

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import ops

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
    op, arrays, _ = CORPUS[0]
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
    assert "{  // register tile: 16 elements of O\n      float acc[16];" in code
    # the innermost reduction loops, up to 16 steps (ci*q = 12), are unrolled
    assert "#pragma unroll\n          for (idx ci = 0; ci < 3; ci += 1) {\n            #pragma unroll\n" in code
    assert "acc[(p - 0) * 4 + (r - 0)] = (acc[(p - 0) * 4 + (r - 0)] + (" in code
    # W[.., q, r] is contiguous along the innermost tile loop r: read four at a time
    assert "const float4 v0 = *(const float4 *)((const char *)b_W + (" in code
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
    op = tc.op("O[n, y, x, f] += I[n, y + ky, x + kx, c] * W[ky, kx, c, f]")
    code = op.code(z32(8, 10, 10, 16), z32(3, 3, 16, 32), target="cuda")
    launches = re.findall(r"// launch (.*)", code)
    # the fill and the convolution: one thread per output element (8*8*8*32), reductions in each thread
    assert launches == ["kernel_stage0<<<64, 256>>>: 16384 parallel iterations",
                        "kernel_stage1<<<64, 256>>>: 16384 parallel iterations"]
    # a reduction whose outermost loop is not a written index runs on one thread
    colsum = tc.op("O[j] += A[i, j]", schedule=(tc.schedule.Reorder(0, ("i", "j")),))
    assert "<<<1, 1>>>: sequential" in colsum.code(z32(5, 3), target="cuda")


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
