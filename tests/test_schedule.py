"""Schedule records: every schedule computes what the default one does, and replays identically."""

import json
import re

import numpy as np
import pytest

import tensorcomp as tc
from tensorcomp.schedule import Fuse, Layout, Reorder, Split, from_json, to_json


@pytest.fixture(autouse=True)
def _avx2_facts(avx2):
    """Tile shapes below are the AVX2 facts' (see conftest.avx2)."""


def _chosen(op, specs):
    """The records the compiler's choose_schedule pass picks (own, tuned or the default's)."""
    from tensorcomp import compiler
    return compiler.plan(op, specs, op.check_call(tuple(specs), {}), {}, upto="choose_schedule").schedule

rng = np.random.default_rng(11)
CAPS = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"


def caps_inputs():
    return rng.standard_normal((2, 9, 9, 3, 2, 4)), rng.standard_normal((3, 3, 3, 5, 4, 3))


SCHEDULES = [
    (Layout("W", (0, 1, 2, 4, 3, 5)), Layout("O", (0, 1, 2, 4, 3, 5))),
    (Reorder(0, ("n", "y", "x", "p", "ky", "kx", "ci", "q", "co", "r")), Fuse(0, "co", "r")),
    (Split(0, "ci", 2), Split(0, "y", 3)),
    (Split(0, "co", 2), Reorder(0, ("co_o", "n", "y", "x", "p", "ky", "kx", "ci", "q", "co_i", "r"))),
    (Layout("I", (5, 4, 3, 2, 1, 0)), Reorder(0, ("r", "q", "p", "ci", "kx", "ky", "co", "x", "y", "n"))),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=[str(i) for i in range(len(SCHEDULES))])
def test_scheduled_capsule_matches_default(schedule):
    I, W = caps_inputs()
    ref = tc.op(CAPS)(I, W)
    got = tc.op(CAPS, schedule=schedule)(I, W)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_layout_changes_strides_not_values():
    I, W = caps_inputs()
    op = tc.op(CAPS, schedule=(Layout("O", (0, 1, 2, 4, 3, 5)),))
    out = op(I, W)
    assert out.shape == (2, 4, 4, 5, 2, 3)
    assert out.strides[-1] == 8 and out.strides[3] == 3 * 8  # co and r adjacent in memory
    np.testing.assert_allclose(out, tc.op(CAPS)(I, W), rtol=1e-10, atol=1e-10)


def test_default_schedule_fuses_contiguous_inner_loops():
    I, _ = caps_inputs()
    W = rng.standard_normal((1, 1, 3, 5, 4, 3))  # a 1x1 window: 12 reduction steps, too few for a tile
    op = tc.op(CAPS, schedule=(Layout("W", (0, 1, 2, 4, 3, 5)), Layout("O", (0, 1, 2, 4, 3, 5))))
    text = str(op.loopnest(I, W))
    assert "for co_r in range(0, 15):" in text
    assert "O[n, y, x, co_r // 3, p, co_r % 3] += I[n, 2*y, 2*x, ci, p, q] * W[0, 0, ci, co_r // 3, q, co_r % 3]" \
        in text


def test_schedule_replays_to_the_same_loop_nest():
    I, W = caps_inputs()
    sched = SCHEDULES[3]
    first = tc.op(CAPS, schedule=sched).loopnest(I, W)
    again = tc.op(CAPS, schedule=from_json(to_json(sched))).loopnest(I, W)
    assert first == again and str(first) == str(again)
    assert json.loads(to_json(sched))[0] == {"kind": "Split", "stmt": 0, "index": "co", "factor": 2}


def test_split_shows_its_algebra_in_the_loop_nest_and_peels_its_tail():
    op = tc.op("O[i] = A[i] * 2", schedule=(Split(0, "i", 4),))
    a = np.arange(10.0)
    np.testing.assert_allclose(op(a), a * 2)
    text = str(op.loopnest(a))
    # 4 does not divide 10: the last, partial iteration of i_o runs as a nest of its own, so both
    # inner loops have constant bounds
    assert text == ("for i_o in range(0, 2):  # parallel\n"
                    "  for i_i in range(0, 4):  # parallel\n"
                    "    O[i_i + 4*i_o] = A[i_i + 4*i_o] * 2\n"
                    "for i_i in range(0, 2):  # parallel\n"
                    "  O[i_i + 8] = A[i_i + 8] * 2")


def test_multi_statement_schedule():
    src = "M[n] = max(X[n, c])\nE[n, c] = exp(X[n, c] - M[n])\nS[n] += E[n, c]\nY[n, c] = E[n, c] / S[n]"
    x = rng.standard_normal((6, 10))
    sched = (Reorder(2, ("c", "n")), Split(1, "c", 3), Layout("E", (1, 0)))
    np.testing.assert_allclose(tc.op(src, schedule=sched)(x), tc.op(src)(x), rtol=1e-12)


@pytest.mark.parametrize("schedule,message", [
    ((Reorder(0, ("i",)),), "op 'C[i, j] += A[i, k] * B[k, j]': Reorder: statement 0 has loops i, j, k; the order "
                            "must list each exactly once, got i"),
    ((Fuse(0, "i", "j"),), "op 'C[i, j] += A[i, k] * B[k, j]': Fuse: loops 'i' and 'j' of statement 0 must be adjacent (outer first); its loops are: "
                            "i, k, j"),
    ((Split(0, "z", 2),), "op 'C[i, j] += A[i, k] * B[k, j]': Split: statement 0 has no loop 'z'; its loops are: "
                          "i, j, k"),
])
def test_malformed_records_are_refused_when_bound(schedule, message):
    op = tc.op("C[i, j] += A[i, k] * B[k, j]", schedule=schedule)
    with pytest.raises(tc.ScheduleError) as info:
        op(np.ones((2, 3)), np.ones((3, 4)))
    assert str(info.value) == message


def test_malformed_records_are_refused_at_construction():
    with pytest.raises(tc.ScheduleError) as info:
        tc.op("O[i] = A[i]", schedule=(Layout("A", (1, 0)),))
    assert str(info.value) == "op 'O[i] = A[i]': Layout of A must be a permutation of (0,), got (1, 0)"
    with pytest.raises(tc.ScheduleError) as info:
        tc.op("O[i] = A[i]", schedule=(Reorder(3, ("i",)),))
    assert str(info.value) == "op 'O[i] = A[i]': Reorder names statement 3; the op has 1 (numbered from 0)"
    with pytest.raises(tc.ScheduleError, match="is not a schedule record"):
        tc.op("O[i] = A[i]", schedule=("tile",))


def test_cpu_register_tile_accumulates_in_registers_and_matches_numpy():
    rng = np.random.default_rng(7)
    I = rng.standard_normal((2, 9, 9, 3, 4, 4)).astype(np.float32)
    W = rng.standard_normal((3, 3, 3, 5, 4, 4)).astype(np.float32)
    src = "O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]"
    order = ("n", "y", "x", "co", "ky", "kx", "ci", "q", "p", "r")  # the 4x4 (p, r) tile inside the reduction
    for schedule in [(Reorder(0, order),), (Split(0, "r", 2), Reorder(0, order[:-1] + ("r_o", "r_i")))]:
        op = tc.op(src, schedule=schedule)
        ir = op.code(I, W)
        assert "alloca float, i32 16" in ir or "alloca float, i32 8" in ir  # the tile, promoted to registers
        windows = np.lib.stride_tricks.sliding_window_view(I, (3, 3), axis=(1, 2))[:, ::2, ::2]
        want = np.einsum("nyxcpqab,abcdqr->nyxdpr", windows, W)
        np.testing.assert_allclose(op(I, W), want, rtol=1e-4, atol=1e-4)


def test_cpu_vector_tile_keeps_accumulators_in_vector_registers():
    rng = np.random.default_rng(8)
    I = rng.standard_normal((2, 9, 9, 5)).astype(np.float32)
    W = rng.standard_normal((3, 3, 5, 16)).astype(np.float32)
    src = "O[n, y, x, f] += I[n, 2*y + ky, 2*x + kx, c] * W[ky, kx, c, f]"
    want = np.einsum("nyxcab,abcf->nyxf",
                     np.lib.stride_tricks.sliding_window_view(I, (3, 3), axis=(1, 2))[:, ::2, ::2], W)
    for schedule in [(), (Split(0, "x", 2), Reorder(0, ("n", "y", "x_o", "ky", "kx", "c", "x_i", "f")))]:
        op = tc.op(src, schedule=schedule)
        assert 'alloca <8 x float>' in op.code(I, W)  # f (16) in two 8-wide vectors per tile row
        np.testing.assert_allclose(op(I, W), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_contiguous_inner_reductions_sum_in_a_vector_with_invariant_factors_broadcast(dtype):
    # dZ-like statement of the routing gradient: reduction over j, d; E / Z**2 does not depend on d
    op = tc.op("Y[n, i] += -(S[n, j, d] * (E[n, i, j] / Z[n, i] ** 2 * U[n, i, j, d]))")
    rs = np.random.default_rng(3)
    s, e, u = rs.standard_normal((3, 5, 16)), rs.standard_normal((3, 7, 5)), rs.standard_normal((3, 7, 5, 16))
    z = rs.uniform(1, 2, (3, 7))
    args = [a.astype(dtype) for a in (s, e, z, u)]
    assert "vsum" in op.code(*args)
    want = -np.einsum("njd,nij,nijd->ni", s, e / z[:, :, None] ** 2, u)
    np.testing.assert_allclose(op(*args), want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_vector_sum_reads_padded_invariant_operands_through_the_pad():
    # the padded X does not depend on the vectorized d loop: read once per vector, pad checked
    op = tc.op("Y[i] += X[i + k] * W[i, k, d]", ranges={"k": 3}, pad={"X": (1, 1)})
    x = np.arange(1, 6, dtype=np.float32)
    w = np.random.default_rng(4).standard_normal((5, 3, 16)).astype(np.float32)
    xp = np.pad(x, 1)
    want = np.array([(xp[i:i + 3, None] * w[i]).sum() for i in range(5)])
    assert "vsum" in op.code(x, w)
    np.testing.assert_allclose(op(x, w), want, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_sum_along_a_padded_axis_masks_the_lanes_in_the_pad(dtype):
    # X padded by 3 before and 5 after along j: 16 + 8 = 24 steps of j, whole vectors of 8 (float32)
    # or 4 (float64); lanes inside the pad read the pad value (2.5) without touching memory
    op = tc.op("Y[i] += X[i, j] * W[i, j]", pad={"X": ((0, 0), (3, 5)), "W": ((0, 0), (0, 0))},
               pad_value={"X": 2.5})
    rs = np.random.default_rng(9)
    x, w = rs.standard_normal((6, 16)).astype(dtype), rs.standard_normal((6, 24)).astype(dtype)
    want = (np.pad(x.astype(np.float64), ((0, 0), (3, 5)), constant_values=2.5) * w).sum(axis=1)
    code = op.code(x, w)
    assert "vsum" in code and "llvm.masked.load" in code
    np.testing.assert_allclose(op(x, w), want, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [5, 13, 21, 1003])
def test_vector_sum_of_a_reduction_not_whole_vectors_ends_in_a_masked_vector(dtype, k):
    # 13 float32: one vector of 8, then 5 lanes of a masked one (the other 3 touch no memory, add 0)
    rs = np.random.default_rng(k)
    x, v = rs.standard_normal((7, k)).astype(dtype), rs.standard_normal(k).astype(dtype)
    op = tc.op("y[a] += X[a, k] * v[k]")
    code = op.code(x, v)
    width = 8 if dtype == np.float32 else 4
    if k >= width:
        assert "vsum" in code and "llvm.masked.load" in code
    want = x.astype(np.float64) @ v
    np.testing.assert_allclose(op(x, v), want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_padded_batch_innermost_weight_gradient_vectorizes_with_masked_reads():
    # LeNet's first convolution, weight gradient, with the batch innermost: the padded spatial axes
    # do not vary along the vector (one condition per vector), the batch axis does
    from tensorcomp.schedule.records import Layout
    rs = np.random.default_rng(10)
    I = rs.standard_normal((16, 1, 12, 12)).astype(np.float32)
    dO = rs.standard_normal((16, 3, 12, 12)).astype(np.float32)
    src = "dW[f, c, k0, k1] += dO[n, f, y0, y1] * I[n, c, k0 + y0, k1 + y1]"
    op = tc.op(src, ranges={"k0": 5, "k1": 5}, pad={"I": ((0, 0), (0, 0), (2, 2), (2, 2))},
               schedule=(Layout("I", (1, 2, 3, 0)), Layout("dO", (1, 2, 3, 0))))
    Ip = np.pad(I.astype(np.float64), ((0, 0), (0, 0), (2, 2), (2, 2)))
    windows = np.lib.stride_tricks.sliding_window_view(Ip, (12, 12), axis=(2, 3))
    want = np.einsum("nfyx,ncabyx->fcab", dO, windows)
    assert op.inputs == ("dO", "I") and "llvm.masked.load" in op.code(dO, I)
    np.testing.assert_allclose(op(dO, I), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-6), (np.float64, 1e-13)])
def test_vectorized_math_functions_match_numpy_and_call_the_vector_library(dtype, rtol):
    from tensorcomp.runtime import jit
    op = tc.op("O[i] = exp(A[i]) + log(B[i]) + sin(A[i]) * cos(A[i])")
    a = np.random.default_rng(6).uniform(-20, 20, 1000).astype(dtype)
    b = np.random.default_rng(7).uniform(1e-3, 1e3, 1000).astype(dtype)
    want = np.exp(a.astype(np.float64)) + np.log(b) + np.sin(a) * np.cos(a)
    np.testing.assert_allclose(op(a, b), want, rtol=rtol, atol=rtol)
    if jit._veclib():  # glibc's libmvec loaded: the vectorized loop calls it, no scalar call per lane
        assert "@_ZGV" in op.code(a, b, optimized=True)


def test_padded_convolution_weight_gradient_vector_tile_matches_numpy():
    import ops
    conv = ops.conv(2, padding=1, channels_last=True)
    rs = np.random.default_rng(8)
    x, w = rs.standard_normal((2, 9, 9, 8)).astype(np.float32), rs.standard_normal((3, 3, 8, 16)).astype(np.float32)
    d_out = rs.standard_normal((2, 9, 9, 16)).astype(np.float32)
    g = tc.grad(conv, "W")
    assert "vtile" in g.code(x, w, d_out)  # rows broadcast from the padded input, read through the pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.stack([np.stack([np.einsum("nyxc,nyxf->cf", xp[:, a:a + 9, b:b + 9], d_out) for b in range(3)])
                     for a in range(3)])
    np.testing.assert_allclose(g(x, w, d_out), want, rtol=1e-4, atol=1e-4)


def test_layout_pad_keeps_the_values_and_rejects_bad_pads():
    a = np.random.default_rng(9).standard_normal((6, 32)).astype(np.float32)
    b = np.random.default_rng(10).standard_normal((32, 5)).astype(np.float32)
    src = "C[i, j] += A[i, k] * B[k, j]"
    padded = tc.op(src, schedule=(Layout("A", (1, 0), pad=3), Layout("B", (0, 1), pad=16)))
    np.testing.assert_allclose(padded(a, b), a @ b, rtol=1e-5, atol=1e-5)
    assert from_json(to_json(padded.schedule)) == padded.schedule
    assert from_json('[{"kind": "Layout", "perm": [1, 0], "tensor": "A"}]') == (Layout("A", (1, 0)),)
    with pytest.raises(tc.ScheduleError) as e:
        tc.op(src, schedule=(Layout("C", (0, 1), pad=16),))
    assert str(e.value) == ("op 'C[i, j] += A[i, k] * B[k, j]': Layout pad of C must be a count of elements >= 0, "
                            "and only inputs (copied per call) are padded; got 16")
    with pytest.raises(tc.ScheduleError, match="got -1"):
        tc.op(src, schedule=(Layout("A", (0, 1), pad=-1),))


def test_relaid_inputs_reuse_their_buffers_across_calls_and_threads():
    src = "C[i, j] += A[i, k] * B[k, j]"
    op = tc.op(src, schedule=(Layout("A", (1, 0), pad=3), Layout("B", (1, 0))))
    gen = np.random.default_rng(12)
    pairs = [(gen.standard_normal((40, 24)), gen.standard_normal((24, 8))) for _ in range(6)]
    for a, b in pairs[:3]:  # new values each call: nothing stale from the kept buffers
        np.testing.assert_allclose(op(a, b), a @ b, rtol=1e-12)
    (kernel,) = op._cache.values()
    assert len(kernel.spare_relaid) == 1  # one set of buffers, taken and put back by each call
    kept = [buf.ctypes.data for buf in kernel.spare_relaid[0]]
    assert [buf.shape for buf in kernel.spare_relaid[0]] == [(24, 43), (8, 24)]
    op(*pairs[0])
    assert [buf.ctypes.data for buf in kernel.spare_relaid[0]] == kept
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(3) as pool:  # calls at once each take a set of their own
        outs = list(pool.map(lambda ab: op(*ab), pairs * 20))
    for (a, b), out in zip(pairs * 20, outs):
        np.testing.assert_allclose(out, a @ b, rtol=1e-12)


def test_default_pads_rows_that_alias_in_the_cache_and_only_those():
    from tensorcomp.compiler import ArraySpec
    mm = tc.op("C[i, j] += A[i, k] * B[k, j]")
    rs = np.random.default_rng(11)
    a, b = rs.standard_normal((256, 1024)).astype(np.float32), rs.standard_normal((1024, 256)).astype(np.float32)
    # A's rows are 4 KB apart (one cache set for a whole column panel); B's 1 KB: padded by a line
    assert _chosen(mm, [ArraySpec.of(a), ArraySpec.of(b)]) == (
        Layout("A", (0, 1), pad=16), Layout("B", (0, 1), pad=16))
    np.testing.assert_allclose(mm(a, b), a.astype(np.float64) @ b, rtol=1e-3, atol=1e-3)
    c = rs.standard_normal((1000, 200)).astype(np.float32)  # 800-byte rows: no padding
    assert not any(r.pad for r in _chosen(mm, [ArraySpec.of(c[:, :200].T.copy()), ArraySpec.of(c)])
                   if isinstance(r, Layout))


def test_an_untiled_scatter_does_not_write_strided_in_its_innermost_loop():
    # LeNet's first convolution's gradients: the weight gradient relays dC and I out batch-innermost;
    # the input gradient (a scatter with one input channel) then must not run the batch innermost,
    # which only its reads walk contiguously: a load and a store 4 KB apart per element (120 ms)
    from tensorcomp.nn import _conv_op
    conv = _conv_op(2, (1, 1), (2, 2), (1, 1), 1, False, 1, 6)
    g = tc.grad(conv, ["I", "W", "B"])
    rng = np.random.default_rng(3)
    args = [rng.standard_normal(s).astype(np.float32) for s in ((64, 1, 28, 28), (6, 1, 5, 5), (6,), (64, 6, 28, 28))]
    lines = str(g.loopnest(*args)).splitlines()
    at = next(j for j, line in enumerate(lines) if line.strip().startswith("dI_part[") and "+=" in line)
    assert not lines[at - 1].strip().startswith("for n in")
    x, w, _, d = (a.astype(np.float64) for a in args)
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (5, 5), axis=(2, 3))  # n, c, y, x, k0, k1
    dip = np.zeros_like(xp)
    for k0 in range(5):
        for k1 in range(5):
            dip[:, :, k0:k0 + 28, k1:k1 + 28] += np.einsum("nfyx,fc->ncyx", d, w[:, :, k0, k1])
    refs = (dip[:, :, 2:-2, 2:-2], np.einsum("nfyx,ncyxab->fcab", d, win), d.sum(axis=(0, 2, 3)))
    for got, ref in zip(g(*args), refs):
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_fill_loops_stay_loops_in_the_optimized_code():
    # LLVM turns a fill's innermost runs into memsets and, left alone, unrolls the loops around them
    # whole: the capsule input gradient's zero fill became 3,584 memset calls (~8 s of code generation)
    caps = tc.op("O[n, y, x, co, p, r] += I[n, 2*y + ky, 2*x + kx, ci, p, q] * W[ky, kx, ci, co, q, r]")
    g = tc.grad(caps, "I")
    shapes = ((2, 14, 14, 32, 4, 4), (3, 3, 32, 32, 4, 4), (2, 6, 6, 32, 4, 4))
    text = g.code(*shapes)
    assert re.search(r"^(![0-9]+) = distinct !\{ \1, ![0-9]+ \}$", text, flags=re.M)
    assert '!{ !"llvm.loop.unroll.disable" }' in text
    assert g.code(*shapes, optimized=True).count("@llvm.memset") <= 8


def test_large_kept_buffers_are_aligned_to_huge_pages_and_small_ones_are_plain():
    from tensorcomp.runtime.kernel import HUGE_MIN_BYTES, kept_buffer
    from tensorcomp.target import HUGE_PAGE_BYTES as HUGE_PAGE
    big = kept_buffer((HUGE_MIN_BYTES // 4 + 3,), np.float32)
    assert big.shape == (HUGE_MIN_BYTES // 4 + 3,) and big.dtype == np.float32 and big.flags.writeable
    assert big.__array_interface__["data"][0] % HUGE_PAGE == 0 or big.base is None  # (np.empty fallback)
    big[:] = 1.5
    assert float(big.sum()) == 1.5 * big.size
    small = kept_buffer((3, 5), np.float64)
    assert small.shape == (3, 5) and small.base is None
    # matmul 1024² relays both inputs into such buffers, kept with the kernel: the result is right
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    np.testing.assert_allclose(tc.op("C[i, j] += A[i, k] * B[k, j]")(a, a), a @ a, rtol=2e-3, atol=2e-3)


def test_an_element_read_several_times_counts_once_in_the_loop_order():
    """The innermost loop walks the most tensors contiguously; ``P[n, j]`` read three times is one
    load, so the reduction over ``d`` (two contiguous reads) goes innermost, in a vector of partial
    sums, instead of ``j`` (a routing gradient's squash derivative)."""
    op = tc.op("Q[n, j] += V[n, j, d] * S[n, j, d] * P[n, j] / (1 + P[n, j]) * sqrt(P[n, j])")
    v, s = (rng.standard_normal((8, 10, 16)).astype(np.float32) for _ in range(2))
    p = rng.uniform(0.5, 2, (8, 10)).astype(np.float32)
    text = str(op.loopnest(v, s, p))
    assert "vector_sum tile" in text and text.rstrip().splitlines()[-2].strip() == "for d in range(0, 16):"
    want = np.einsum("njd,njd->nj", v.astype(np.float64), s) * p / (1 + p) * np.sqrt(p)
    np.testing.assert_allclose(op(v, s, p), want, rtol=1e-5, atol=1e-5)


def test_a_large_read_stays_in_cache_across_the_innermost_written_loop():
    """Capsule votes with a short reduction (no default tile of their own): ``W`` does not depend on
    ``n``, so ``n`` goes inside ``i`` and each capsule's slice of ``W`` is read once for the whole batch
    (``W``, 1.5 MB, would not stay in cache across a sample); with a small ``W`` the written tensor's
    order stays."""
    op = tc.op("U[n, i, j, d] += X[n, i, k] * W[i, j, d, k]")
    for caps, moved in ((288, True), (8, False)):
        x = rng.standard_normal((64, caps, 8)).astype(np.float32)
        w = rng.standard_normal((caps, 8, 10, 16)).astype(np.float32).transpose(0, 2, 3, 1)  # (stored [i, k, j, d])
        lines = str(op.loopnest(x, w)).splitlines()
        assert [line.split(" in ")[0].strip() for line in lines[:2]] == (["for i", "for n"] if moved else
                                                                         ["for n", "for i"])
        np.testing.assert_allclose(op(x, w), np.einsum("nik,ijdk->nijd", x.astype(np.float64), w), rtol=1e-4,
                                   atol=1e-4)


def test_statements_reading_one_large_tensor_along_a_written_index_share_that_loop():
    """A capsule-vote gradient: ``dX`` and ``dW`` both read the 4.7 MB ``dU`` along ``i``, which both
    write on: they run in one parallel nest over ``i`` (each slice of ``dU`` read from memory once);
    with small ``dU`` and ``W`` each keeps its own order."""
    op = tc.op("dX[n, i, k] += dU[n, i, j, d] * W[i, j, d, k]\ndW[i, j, d, k] += dU[n, i, j, d] * X[n, i, k]")
    for n, j, shared in ((64, 16, True), (2, 4, False)):
        du = rng.standard_normal((n, 72, j, 16)).astype(np.float32)
        w = rng.standard_normal((72, j, 16, 8)).astype(np.float32)
        x = rng.standard_normal((n, 72, 8)).astype(np.float32)
        text = str(op.loopnest(du, w, x))
        assert (text.count("# parallel") == 1 and text.startswith("for i in range(0, 72):  # parallel")) == shared
        dx, dw = op(du, w, x)
        np.testing.assert_allclose(dx, np.einsum("nijd,ijdk->nik", du.astype(np.float64), w), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dw, np.einsum("nijd,nik->ijdk", du.astype(np.float64), x), rtol=1e-4, atol=1e-4)
    du = rng.standard_normal((64, 72, 16, 16)).astype(np.float32)
    w = rng.standard_normal((72, 16, 16, 8)).astype(np.float32)
    x = rng.standard_normal((64, 72, 8)).astype(np.float32)
    fused = op.schedule_for(du, w, x)  # replays to the fused nest; an order of the op's own is kept as given
    assert str(tc.op(op.source, schedule=fused).loopnest(du, w, x)).count("# parallel") == 1
    own = tuple(Reorder(0, r.order[1:2] + r.order[:1] + r.order[2:]) if isinstance(r, Reorder) and r.stmt == 0 else r
                for r in fused)
    assert str(tc.op(op.source, schedule=own).loopnest(du, w, x)).startswith("for n in range(0, 64):  # parallel")
