"""precision="tf32": contractions on tensor cores (mma.sync.m16n8k8), checked without a GPU -- the
generated code assembled with nvcc, and run on the CPU emulator against float64 references computed
from TF32-rounded inputs."""

import shutil
import subprocess

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp import schedule as S

from cuda_emulator import emulated

NVCC = shutil.which("nvcc")
CAPSULE = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"
CONV = "O[n, y, x, f] += I[n, y + ky, x + kx, c] * W[ky, kx, c, f]"

CASES = [
    # the default schedule: M = i, N = j, K = k (48 x 24: 3 x 3 warps, the last block's warps partly idle)
    (tc.op("C[i, j] += A[i, k] * B[k, j]", precision="tf32"), [(48, 40), (40, 24)]),
    # the capsule convolution by default: M = n, N = co, K = ci, the other reductions around the K group
    (tc.op(CAPSULE, precision="tf32"), [(16, 5, 5, 8, 2, 4), (3, 3, 8, 8, 4, 4)]),
    # M of two loops (x, p), N of two (co_i, r), a K group of two (ci_i, q): rows, columns and steps
    # decoded mixed radix; ky, kx and ci_o run around the K group
    (tc.op(CAPSULE, precision="tf32", schedule=(
        S.Split(0, "co", 2), S.Split(0, "ci", 2),
        S.Reorder(0, ("n", "y", "co_o", "ky", "kx", "ci_o", "ci_i", "q", "x", "p", "co_i", "r")))),
     [(2, 9, 9, 4, 4, 4), (3, 3, 4, 4, 4, 4)]),
    # a padded input: fragment elements in the halo read the pad value
    (tc.op(CONV, pad={"I": ((0, 0), (1, 1), (1, 1), (0, 0))}, precision="tf32"), [(2, 16, 16, 8), (3, 3, 8, 8)]),
    # the gradient of a tf32 op is tf32 too: dW's M = ci, N = co, K = n
    (tc.grad(tc.op(CAPSULE, precision="tf32"), "W"), [(8, 5, 5, 16, 2, 4), (3, 3, 16, 8, 4, 4), (8, 2, 2, 8, 2, 4)]),
]


def tf32(x: np.ndarray) -> np.ndarray:
    """float32 rounded to TF32 as cvt.rna does: 10 mantissa bits, to nearest, ties away from zero."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)


def _inputs(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _reference(op, arrays):
    """The op in float64 on TF32-rounded inputs, on the CPU (which ignores precision)."""
    return op(*[tf32(a).astype(np.float64) for a in arrays])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_tensor_core_tiles_match_tf32_references(case):
    op, shapes = CASES[case]
    arrays = _inputs(shapes, case)
    code = op.code(*arrays, target="cuda")
    assert "tc_mma_tf32(&tc_c[" in code and "one per warp (tensor cores)" in code
    with emulated():
        got = op(*arrays, target="cuda")
    want = _reference(op, arrays)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale)  # float32 sums of exact TF32 products
    exact = op(*[a.astype(np.float64) for a in arrays])
    assert np.abs(got - exact).max() > 1e-4 * scale  # the inputs were rounded: not the float32 result


def test_tensor_core_tile_golden():
    op, shapes = CASES[0]
    code = op.code(*_inputs(shapes, 0), target="cuda")
    assert "// launch kernel_stage1<<<2, 256>>>: 9 tiles, one per warp (tensor cores)" in code
    assert "{  // warp tile: 16 x 8 elements of C on tensor cores (1 x 1 mma.m16n8k8 fragments, TF32 inputs, " \
           "float32 sums)" in code
    # blocks of 8 warps stay in step: the ninth tile's block has 7 idle warps, which repeat it and do not store
    assert "const bool tc_store = tc_w0 + threadIdx.x / 32 < 9;" in code
    assert "idx tc_rest = tc_store ? tc_w0 + threadIdx.x / 32 : 8;" in code
    # lane l holds A at rows g, g + 8 and steps t, t + 4 (g = l / 4, t = l % 4), B at step t, t + 4 and column g
    assert "const idx i_i = 0 + (tc_mt * 16 + tc_g + 8 * (tc_j & 1)) % 16;" in code
    assert "const idx k_i = 0 + (tc_kc * 8 + tc_t + 4 * (tc_j >> 1)) % 8;" in code
    assert "tc_a[tc_mt][tc_j] = tc_to_tf32((*(const float *)((const char *)b_A + (" in code
    assert "const idx j_i = 0 + (tc_nt * 8 + tc_g) % 8;" in code
    # and C at rows g, g + 8 and columns 2t, 2t + 1
    assert "const idx j_i = 0 + (tc_nt * 8 + 2 * tc_t + (tc_j & 1)) % 8;" in code
    assert "if (tc_store) (*(float *)((char *)b_C + (tc_off))) = tc_c[(tc_mt * 1 + tc_nt) * 4 + tc_j];" in code
    # the capsule convolution at batch 64: 2 x 2 fragments per warp (M = n split by 32, N = co by 16)
    caps = tc.op(CAPSULE, precision="tf32").code(np.zeros((64, 30, 30, 32, 4, 4), np.float32),
                                                 np.zeros((3, 3, 32, 32, 4, 4), np.float32), target="cuda")
    assert "{  // warp tile: 32 x 16 elements of O on tensor cores (2 x 2 mma.m16n8k8 fragments" in caps


def test_what_tensor_cores_do_not_take_runs_in_float32():
    cases = [
        (tc.op("B[i, j] = A[i, j] * 2", precision="tf32"), [np.ones((16, 8), np.float32)]),  # no reduction
        (tc.op("C[i, j] += A[i, k] * B[k, j]", precision="tf32"),  # float64
         [np.ones((16, 8)), np.ones((8, 8))]),
        (tc.op("C[i, j] += A[i, k] * B[k, j]", precision="tf32"),  # 12 rows: no whole 16-row fragment
         _inputs([(12, 8), (8, 8)], 1)),
        (tc.op("C[i, j] += exp(A[i, k]) * B[k, j]", precision="tf32"), _inputs([(16, 8), (8, 8)], 2)),  # not two reads
    ]
    for op, arrays in cases:
        assert "tc_mma_tf32" not in op.code(*arrays, target="cuda")
        with emulated():
            got = op(*arrays, target="cuda")
        np.testing.assert_allclose(got, op(*arrays), rtol=1e-5, atol=1e-5)


def test_the_cpu_computes_in_the_tensors_precision():
    arrays = _inputs([(32, 16), (16, 8)], 3)
    got = tc.op("C[i, j] += A[i, k] * B[k, j]", precision="tf32")(*arrays)
    np.testing.assert_array_equal(got, tc.op("C[i, j] += A[i, k] * B[k, j]")(*arrays))


def test_unknown_precisions_are_refused():
    with pytest.raises(tc.ArgumentError) as info:
        tc.op("C[i, j] += A[i, k] * B[k, j]", precision="fp16")
    assert str(info.value) == ("op 'C[i, j] += A[i, k] * B[k, j]': precision must be one of 'fp32', 'tf32' (tf32: "
                               "contractions on the GPU's tensor cores, inputs rounded to 10 mantissa bits), got 'fp16'")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_tensor_core_code_assembles_for_sm80_and_sm90_only(tmp_path):
    parts = []
    for k, (op, shapes) in enumerate(CASES):
        code = op.code(*[np.zeros(s, np.float32) for s in shapes], target="cuda")
        parts.append(f"namespace op{k} {{\n{code.replace('kernel_stage', f'op{k}_stage')}}}\n")
    src = tmp_path / "tf32.cu"
    src.write_text("\n".join(parts))
    for arch in ("sm_80", "sm_90"):
        ptx = tmp_path / f"{arch}.ptx"
        proc = subprocess.run([NVCC, f"-arch={arch}", "-ptx", "-Werror", "all-warnings", str(src), "-o", str(ptx)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        text = ptx.read_text()
        assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in text and "cvt.rna.tf32.f32" in text
    proc = subprocess.run([NVCC, "-arch=sm_75", "-ptx", str(src), "-o", str(tmp_path / "old.ptx")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "precision='tf32' runs on tensor cores: compute capability 8.0 or newer" \
        in proc.stderr
